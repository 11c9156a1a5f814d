"""What the driver shows and does while the workers train: a progress display, and the end
of every epoch as Keras' ``model.fit`` has it (logs, validation, callbacks).

Both run on the caller's thread, in :meth:`distkeras.trainers.Trainer.train`'s loop, and never
talk to the workers: the display reads the parameter server's history (append-only), and the
epoch ends come from the server's :class:`~distkeras.parameter_server.EpochMark`: a copy of
the centre variable taken at the commit that completed the epoch. The driver evaluates and
reports that copy however late it gets to it, so every epoch's values are its own.
"""

from __future__ import annotations

import collections
import logging
import math
import sys
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _interactive() -> bool:
    """A terminal, or a Jupyter kernel (whose stderr is not a TTY but shows a bar); not
    merely a process that imported ipykernel (a library may)."""
    if sys.stderr.isatty():
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


class Progress:
    """A tqdm bar in a terminal or notebook; a log line every ``log_every`` seconds in a
    spark-submit log (no TTY); nothing with ``verbose=0``."""

    def __init__(self, history, rows: int | None, epochs: int, verbose: int,
                 name: str = "training", log_every: float = 10.0):
        self.history = history
        self.total = rows * epochs if rows else None
        self.verbose = verbose
        self.label = name
        self.log_every = log_every
        self._bar = None
        self._logged = time.monotonic()
        # running totals over the history read so far: each look reads only the new records
        self._read = self._samples = self._commits = 0
        self._recent: collections.deque = collections.deque(maxlen=50)

    def status(self) -> dict[str, float]:
        records = self.history.records
        for record in records[self._read:len(records)]:  # the server only appends
            if record.committed:
                self._samples += record.samples
                self._commits += 1
                self._recent.append(record)
        self._read = len(records)
        elapsed = max(self.history.elapsed(), 1e-9)
        recent = list(self._recent)
        return {
            "samples": self._samples,
            "commits": self._commits,
            "commits_per_s": self._commits / elapsed,
            "loss": sum(r.loss for r in recent) / len(recent) if recent else float("nan"),
            "staleness": (sum(r.staleness for r in recent) / len(recent)) if recent else 0.0,
            "elapsed": elapsed,
        }

    def say(self, message: str) -> None:
        """A line for the user that does not break the progress bar."""
        if not self.verbose:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def show(self, final: bool = False) -> None:
        if not self.verbose:
            return
        interactive = _interactive()
        if not (interactive or final or time.monotonic() - self._logged >= self.log_every):
            return  # a log line is not due: nothing to compute
        s = self.status()
        if interactive:
            if self._bar is None:
                from tqdm.auto import tqdm

                try:  # tqdm.auto in a notebook without ipywidgets warns; use the text bar
                    import ipywidgets  # noqa: F401
                except ImportError:
                    from tqdm.std import tqdm

                self._bar = tqdm(total=self.total, unit="samples", desc=self.label,
                                 dynamic_ncols=True, leave=True)
            self._bar.n = s["samples"]
            if s["commits"]:
                self._bar.set_postfix(loss=f"{s['loss']:.4f}",
                                      commits_s=f"{s['commits_per_s']:.1f}",
                                      staleness=f"{s['staleness']:.1f}", refresh=False)
            self._bar.refresh()
        else:
            self._logged = time.monotonic()
            done = f"{s['samples']:,}" + (f"/{self.total:,}" if self.total else "")
            print(f"distkeras: {self.label}: {done} samples, {s['commits']:,} commits "
                  f"({s['commits_per_s']:.1f}/s), loss {s['loss']:.4f}, mean staleness "
                  f"{s['staleness']:.1f}, {s['elapsed']:.0f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self.show()
            self._bar.close()
            self._bar = None
        else:
            self.show(final=True)


def where_workers_ran(reports: list[dict]) -> str:
    """One phrase for the run's summary line: the devices the workers' replicas lived on,
    with how many workers each (and the host, when there are several), e.g. ``"workers ran
    on GPU:0 (2), mixed_bfloat16"``."""
    hosts = len({r.get("host") for r in reports}) > 1
    counts: dict[str, int] = collections.Counter()
    for report in sorted(reports, key=lambda r: r.get("worker") or 0):
        where = ",".join(report.get("devices") or ["?"])
        counts[f"{report.get('host')} {where}" if hosts else where] += 1
    text = "workers ran on " + ", ".join(f"{k} ({n})" for k, n in counts.items())
    policies = sorted({r.get("dtype_policy") for r in reports} - {None, "float32"})
    text += "".join(f", {p}" for p in policies)
    # the executors' interpreter, when it is not the driver's (a packed environment shipped
    # with --archives, or the cluster's own Python): the first thing to check when a worker
    # cannot import what the driver can
    pythons = sorted({r.get("python") for r in reports} - {None, sys.executable})
    if pythons:
        more = f" and {len(pythons) - 1} more" if len(pythons) > 1 else ""
        text += f"; their Python: {pythons[0]}{more}"
    return text


def phases_of(reports: list[dict], started: float) -> dict[str, float]:
    """The workers' phases of a run, in seconds from ``started`` (the call to ``train()``):
    the first task's start, the first model built and rows read (each: the first worker's
    to get there), the first batch trained anywhere, the last worker's end."""
    out = {}
    for key, field, pick in (("first_task_started", "started", min),
                             ("first_model_built", "model_built", min),
                             ("first_rows_read", "rows_read", min),
                             ("first_batch", "first_batch", min),
                             ("last_worker_finished", "finished", max)):
        times = [r[field] for r in reports if r.get(field)]
        if times:
            out[key] = pick(times) - started
    return out


def describe_phases(timings: dict[str, float]) -> str:
    """``timings`` as the durations a user waits through, for the summary line: e.g.
    ``"validation 0.9s, to first task 0.4s, model built 0.3s, rows read 0.6s, to first
    batch 0.4s, training 1.5s, after 0.2s"``."""
    steps = (("validation", "validated"), ("to first task", "first_task_started"),
             ("model built", "first_model_built"), ("rows read", "first_rows_read"),
             ("to first batch", "first_batch"), ("training", "last_worker_finished"),
             ("after", "returned"))
    parts, previous = [], 0.0
    for label, key in steps:
        if key in timings:
            parts.append(f"{label} {max(0.0, timings[key] - previous):.1f}s")
            previous = timings[key]
    return ", ".join(parts)


def collect_numpy(dataframe, plan) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A (small) DataFrame on the driver as model-ready numpy arrays, through Arrow."""
    table = plan.arrow_frame(dataframe).toArrow()
    return plan.arrow_to_numpy(iter(table.to_batches()))


class EpochEnds:
    """Turns the server's epoch marks into Keras epoch ends, in order.

    For each mark: ``model`` gets the epoch's centre variable; ``logs`` hold ``loss`` (mean
    training loss of the epoch's windows), ``val_loss`` and ``val_<metric>`` (the held-out
    data evaluated on that centre), ``staleness`` (mean over the epoch's commits) and
    ``commits_per_s``; they go to ``history.history`` and to the callbacks'
    ``on_epoch_end``. A callback that sets ``model.stop_training`` ends the run: the server
    answers every worker's next request with STOP and later marks are dropped.
    """

    def __init__(self, server, model, callbacks, held_out, batch_size: int, epochs: int,
                 say, checkpoint_each_epoch: bool = False):
        self.server, self.model, self.callbacks = server, model, callbacks
        callbacks.set_model(model)
        self.held_out, self.batch_size, self.epochs, self.say = held_out, batch_size, epochs, say
        self.checkpoint_each_epoch = checkpoint_each_epoch
        self.first = server.samples // server.rows if server.rows else 0  # a resumed run
        self.done = self.first
        self.stopped = False
        self.logs: dict[str, float] = {}
        self._records, self._time = 0, 0.0

    def begin(self) -> None:
        self.model.stop_training = False
        self.callbacks.on_train_begin()
        if self.done < self.epochs:
            self.callbacks.on_epoch_begin(self.done)

    def process(self) -> None:
        """Every epoch the server has marked since the last call."""
        for mark in self.server.take_epoch_marks():
            if self.stopped:
                continue
            self._end(mark)

    def _end(self, mark) -> None:
        self.model.set_weights(self.server.layout.unflatten(mark.center))
        logs = self._training_logs(mark)
        if self.held_out is not None:
            xs, ys = self.held_out
            result = self.model.evaluate(xs if len(xs) > 1 else xs[0],
                                         ys if len(ys) > 1 else ys[0],
                                         batch_size=max(self.batch_size, 256), verbose=0,
                                         return_dict=True)
            logs.update({f"val_{k}": float(v) for k, v in result.items()})
        history = self.server.history.history
        for key, value in logs.items():
            history.setdefault(key, []).append(value)
        if self.checkpoint_each_epoch:
            self.server.checkpoint_or_abort()
        self.say(f"distkeras: epoch {mark.epoch + 1}/{self.epochs}: " +
                 ", ".join(f"{k} {v:.4g}" for k, v in logs.items()))
        self.logs = logs
        self.done = mark.epoch + 1
        self.callbacks.on_epoch_end(mark.epoch, logs)
        if getattr(self.model, "stop_training", False):
            self.stopped = True
            self.server.stop_early(f"a callback stopped training after epoch "
                                   f"{mark.epoch + 1}")
            self.say(f"distkeras: {self.server.stopped_early}")
        elif self.done < self.epochs:
            self.callbacks.on_epoch_begin(self.done)

    def _training_logs(self, mark) -> dict[str, Any]:
        records = self.server.history.records[self._records:mark.records]
        commits = [r for r in records if r.committed] or records  # ensembles: loss reports
        losses = [r.loss for r in commits if math.isfinite(r.loss)]
        span = max(mark.time - self._time, 1e-9)
        self._records, self._time = mark.records, mark.time
        return {"loss": float(np.mean(losses)) if losses else math.nan,
                "staleness": float(np.mean([r.staleness for r in commits])) if commits else 0.0,
                "commits_per_s": sum(r.committed for r in records) / span}

    def end(self, final_center: np.ndarray | None) -> None:
        """``final_center``: the run completed and nothing stopped it, so the model holds the
        final centre variable (the last epoch's, exactly); a stopped run keeps what the
        callbacks left (the stopping epoch's centre, or EarlyStopping's best)."""
        if final_center is not None and not self.stopped:
            self.model.set_weights(self.server.layout.unflatten(final_center))
        self.callbacks.on_train_end(self.logs)
