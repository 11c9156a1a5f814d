"""What the driver shows and does while the workers train: a progress display and the
per-epoch work (validation of the centre variable, early stopping, checkpoints).

A thread polls the parameter server's history (append-only, so reading it is cheap) and
never talks to the workers. In a terminal or a notebook the display is a tqdm bar; in a
spark-submit log (no TTY) it is a line every ``log_every`` seconds.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)


def _interactive() -> bool:
    return sys.stderr.isatty() or "ipykernel" in sys.modules


class Monitor(threading.Thread):
    """Progress of one run; calls ``on_epoch(epoch)`` once the centre variable has received
    the samples of each epoch (the last ones from :meth:`finish`)."""

    def __init__(self, server, rows: int | None, epochs: int, verbose: int,
                 on_epoch: Callable[[int], None] | None = None, interval: float = 0.5,
                 log_every: float = 10.0, name: str = "training"):
        super().__init__(name="distkeras-monitor", daemon=True)
        self.server = server
        self.rows = rows
        self.epochs = epochs
        self.verbose = verbose
        self.on_epoch = on_epoch
        self.interval = interval
        self.log_every = log_every
        self.label = name
        self.epochs_done = 0
        self._halt = threading.Event()
        self._bar = None
        self._logged = time.monotonic()
        self._lock = threading.Lock()

    # ---- what is shown --------------------------------------------------------------
    def status(self) -> dict[str, float]:
        records = self.server.history.records[:]  # a snapshot: the server appends
        commits = [r for r in records if r.clock >= 0]
        elapsed = max(self.server.history.elapsed(), 1e-9)
        recent = commits[-50:]
        return {
            "samples": sum(r.samples for r in commits),
            "commits": len(commits),
            "commits_per_s": len(commits) / elapsed,
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

    def _show(self, final: bool = False) -> None:
        if not self.verbose:
            return
        s = self.status()
        total = self.rows * self.epochs if self.rows else None
        if _interactive():
            if self._bar is None:
                from tqdm.auto import tqdm

                try:  # tqdm.auto in a notebook without ipywidgets warns; use the text bar
                    import ipywidgets  # noqa: F401
                except ImportError:
                    from tqdm.std import tqdm

                self._bar = tqdm(total=total, unit="samples", desc=self.label,
                                 dynamic_ncols=True, leave=True)
            self._bar.n = s["samples"]
            if s["commits"]:
                self._bar.set_postfix(loss=f"{s['loss']:.4f}",
                                      commits_s=f"{s['commits_per_s']:.1f}",
                                      staleness=f"{s['staleness']:.1f}", refresh=False)
            self._bar.refresh()
        elif final or time.monotonic() - self._logged >= self.log_every:
            self._logged = time.monotonic()
            done = f"{s['samples']:,}" + (f"/{total:,}" if total else "")
            print(f"distkeras: {self.label}: {done} samples, {s['commits']:,} commits "
                  f"({s['commits_per_s']:.1f}/s), loss {s['loss']:.4f}, mean staleness "
                  f"{s['staleness']:.1f}, {s['elapsed']:.0f}s", file=sys.stderr, flush=True)

    # ---- the loop -------------------------------------------------------------------
    def _epochs_reached(self) -> int:
        if not self.rows:
            return 0
        return min(self.epochs, self.server.history.samples_applied // self.rows)

    def _run_epochs(self, upto: int) -> None:
        with self._lock:
            while self.epochs_done < upto:
                epoch = self.epochs_done
                self.epochs_done += 1
                if self.on_epoch is not None:
                    try:
                        self.on_epoch(epoch)
                    except Exception as error:  # noqa: BLE001 - never kill the run from here
                        log.warning("distkeras: end-of-epoch work failed: %s", error)

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self._show()
            self._run_epochs(self._epochs_reached())

    def finish(self, completed: bool) -> None:
        """Stop polling; when the run completed, the remaining epochs' work runs now."""
        self._halt.set()
        if self.is_alive():
            self.join(timeout=30)
        if completed:
            self._run_epochs(self.epochs)
        if self._bar is not None:
            self._show()
            self._bar.close()
            self._bar = None
        else:
            self._show(final=True)


def collect_numpy(dataframe, plan) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A (small) DataFrame on the driver as model-ready numpy arrays, through Arrow."""
    table = plan.arrow_frame(dataframe).toArrow()
    return plan.arrow_to_numpy(iter(table.to_batches()))


class EpochEnd:
    """Driver-side work after each epoch: validate the centre variable, record Keras-style
    ``history.history``, checkpoint, and stop early when validation stops improving."""

    def __init__(self, server, bp, layout, held_out, batch_size: int,
                 patience: int | None, min_delta: float, say):
        self.server, self.layout, self.held_out = server, layout, held_out
        self.batch_size, self.patience, self.min_delta, self.say = (
            batch_size, patience, float(min_delta), say)
        self.model = bp.build() if held_out is not None else None
        self.best: np.ndarray | None = None
        self.best_value = math.inf
        self.waited = 0
        self.seen = 0  # history records already accounted to an epoch

    def __call__(self, epoch: int) -> None:
        server = self.server
        if server.stopped_early:
            return
        center = server.snapshot()
        records = server.history.records[:]
        window = [r.loss for r in records[self.seen:] if r.clock >= 0]
        self.seen = len(records)
        logs = {"loss": float(np.mean(window)) if window else math.nan}
        if self.model is not None:
            self.model.set_weights(self.layout.unflatten(center))
            xs, ys = self.held_out
            result = self.model.evaluate(xs if len(xs) > 1 else xs[0],
                                         ys if len(ys) > 1 else ys[0],
                                         batch_size=max(self.batch_size, 256), verbose=0,
                                         return_dict=True)
            logs.update({f"val_{k}": float(v) for k, v in result.items()})
        for key, value in logs.items():
            server.history.history.setdefault(key, []).append(value)
        if server.config.checkpoint_path:
            server.checkpoint_or_abort()
        self.say(f"distkeras: epoch {epoch + 1}: " +
                 ", ".join(f"{k} {v:.4f}" for k, v in logs.items()))
        watched = logs.get("val_loss", logs["loss"])
        if watched < self.best_value - self.min_delta:
            self.best_value, self.best, self.waited = watched, center, 0
        else:
            self.waited += 1
            if self.patience is not None and self.waited >= self.patience:
                watched_name = "val_loss" if "val_loss" in logs else "loss"
                server.stop_early(f"no improvement of {watched_name} for {self.waited} "
                                  f"epoch(s) after epoch {epoch + 1}")
                self.say(f"distkeras: early stopping: {server.stopped_early}")
