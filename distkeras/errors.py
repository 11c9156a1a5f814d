"""Errors from Spark workers, brought back to the driver as the worker's own exception."""

from __future__ import annotations

import builtins
import importlib


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
