"""Every exception distkeras raises, in one place, and how a Spark worker's exception is
brought back to the driver as the worker's own (not as a JVM stack trace).

Pure Python: the wire, the workers and the driver all import from here.
"""

from __future__ import annotations

import builtins
import importlib


class DataError(ValueError):
    """The data does not fit the model; raised before any training starts.

    Raised by `train()` (a missing column, a wrong width, a null, NaN/inf, a class index out
    of range, no rows), and by `ModelPredictor.predict`, the transformers' `transform` and
    `AccuracyEvaluator.evaluate` for a missing column or one of the wrong kind. The message
    names the column, what was expected and what was found. A `ValueError`.
    """


class TrainingAborted(RuntimeError):
    """The run was stopped: a worker died mid-round, a round timed out, a worker failed in a
    way a retry would repeat, a checkpoint could not be written, or the driver aborted.

    `train()` raises it with the parameter server's reason (e.g. a worker's loss became
    NaN/inf, `round_timeout` or `stall_timeout` passed, see `ServerConfig`), after the
    Spark job was cancelled and the server stopped. A `RuntimeError`.
    """


class CheckpointError(OSError):
    """The centre variable could not be written to the checkpoint path."""


class WorkerError(RuntimeError):
    """Training on a partition cannot go on (server refused, run aborted, loss diverged)."""


class BackendError(WorkerError):
    """A Spark task cannot run the driver's Keras backend (not installed there, or its Python
    worker already runs Keras on another backend)."""


class StopTraining(Exception):  # noqa: N818 - a signal, not an error
    """The driver ended training early: the worker leaves cleanly."""


class ProtocolError(ConnectionError):
    """A peer sent something that is not a valid frame; the connection must be closed."""


class JavaMissingError(RuntimeError):
    """Spark needs Java 17 or newer and there is none (or it does not run)."""


class WorkerFailed(RuntimeError):
    """A Spark worker raised an exception that is not a Python built-in or distkeras error."""


def worker_exception(error: BaseException) -> BaseException | None:
    """The worker's own exception, rebuilt from a Spark error, with the worker's Python
    traceback as a note instead of the JVM stack; None when ``error`` holds none."""
    text = str(error)
    start = text.rfind("Traceback (most recent call last):")
    if start < 0:
        return None
    lines = []
    for line in text[start:].splitlines():
        if line.startswith(("\t", "JVM stacktrace")):  # the JVM's part of the story
            break
        lines.append(line)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return None
    name, _, message = lines[-1].partition(": ")
    module, _, short = name.rpartition(".")
    candidate = getattr(builtins, name, None) if not module else None
    if module.startswith("distkeras") or module.startswith("pyspark"):
        try:
            candidate = getattr(importlib.import_module(module), short, None)
        except ImportError:
            candidate = None
    if not (isinstance(candidate, type) and issubclass(candidate, Exception)):
        candidate, message = WorkerFailed, lines[-1]
    try:
        own = candidate(message)
    except Exception:  # noqa: BLE001 - an exception class with another signature
        own = WorkerFailed(lines[-1])
    own.add_note("raised in a Spark worker; its traceback:\n" + "\n".join(lines))
    own.spark_error = error
    return own
