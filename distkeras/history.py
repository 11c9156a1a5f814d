"""What happened during training: one record per commit, kept by the parameter server."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Commit:
    time: float  # seconds since the server started
    worker: int  # Spark partition index
    clock: int  # server clock after this commit was applied
    staleness: int  # commits applied by others since this worker's last pull
    loss: float  # mean training loss of the worker's window
    samples: int  # samples the window trained on


class History:
    """Commits in arrival order plus per-worker bookkeeping; cheap to append to."""

    def __init__(self) -> None:
        self.records: list[Commit] = []
        self.finished: dict[int, float] = {}
        self._t0 = time.monotonic()

    def start(self) -> None:
        self._t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def add_commit(self, worker: int, clock: int, staleness: int, loss: float,
                   samples: int) -> None:
        self.records.append(Commit(self.elapsed(), worker, clock, staleness, loss, samples))

    def add_metrics(self, worker: int, loss: float, samples: int) -> None:
        """Loss of samples trained but not committed (header-only message)."""
        self.records.append(Commit(self.elapsed(), worker, -1, 0, loss, samples))

    def add_finished(self, worker: int) -> None:
        self.finished[worker] = self.elapsed()

    @property
    def commits(self) -> list[Commit]:
        return [r for r in self.records if r.clock >= 0]

    @property
    def samples_applied(self) -> int:
        """Samples whose updates reached the centre variable."""
        return sum(r.samples for r in self.commits)

    def summary(self) -> dict[int, dict[str, Any]]:
        """Per worker: samples, commits, mean and max staleness, mean loss, finish time."""
        out: dict[int, dict[str, Any]] = {}
        for r in self.commits:
            s = out.setdefault(r.worker, {"samples": 0, "commits": 0, "staleness_sum": 0,
                                          "max_staleness": 0, "loss_sum": 0.0})
            s["samples"] += r.samples
            s["commits"] += 1
            s["staleness_sum"] += r.staleness
            s["max_staleness"] = max(s["max_staleness"], r.staleness)
            s["loss_sum"] += r.loss
        for worker, s in out.items():
            n = max(s["commits"], 1)
            s["mean_staleness"] = s.pop("staleness_sum") / n
            s["mean_loss"] = s.pop("loss_sum") / n
            s["finished_at"] = self.finished.get(worker)
        return out

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame([r.__dict__ for r in self.records],
                            columns=["time", "worker", "clock", "staleness", "loss", "samples"])

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"History({len(self.commits)} commits, {self.samples_applied} samples applied)"
