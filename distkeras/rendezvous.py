"""The two schedules every part of distkeras must agree on, written once.

* :class:`Rendezvous`: who meets in a synchronous round. A round ends when every worker still
  training has arrived; a worker that has no more data leaves the round set, so partitions
  of unequal size finish every round. The parameter server, the simulator and the history's
  replay of a finished run all use it.
* :func:`batch_schedule`: the order in which a worker trains its batches and exchanges with
  the server (every ``window`` steps, at the end of each epoch for model averaging, and the
  last partial window), skipping what a previous attempt already committed. The worker loop
  and the simulator both follow it.

Pure Python and numpy: no sockets, no Spark, no Keras.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

Item = TypeVar("Item")


class Rendezvous(Generic[Item]):
    """Membership of the current synchronous round. ``arrive`` and ``leave`` return the
    round's items (one per arrival, in arrival order) when the call completes the round,
    else None; the caller applies the round then."""

    def __init__(self, workers: Iterable[int]):
        self.active: set[int] = set(workers)
        self.arrived: set[int] = set()
        self.round_no = 0
        self._items: list[Item] = []

    @property
    def missing(self) -> set[int]:
        """Workers still training that have not arrived in this round."""
        return self.active - self.arrived

    @property
    def open(self) -> bool:
        """True while someone has arrived and the round has not ended."""
        return bool(self.arrived)

    def arrive(self, worker: int, item: Item) -> list[Item] | None:
        self.arrived.add(worker)
        self._items.append(item)
        return self._end_if_complete()

    def leave(self, worker: int) -> list[Item] | None:
        self.active.discard(worker)
        return self._end_if_complete()

    def _end_if_complete(self) -> list[Item] | None:
        if not self.arrived or not self.active <= self.arrived:
            return None
        items, self._items = self._items, []
        self.arrived.clear()
        self.round_no += 1
        return items


TRAIN, EXCHANGE = "train", "exchange"


@dataclass(frozen=True)
class Step:
    """One thing a worker does: train a batch, or exchange after ``index``."""

    kind: str  # TRAIN or EXCHANGE
    epoch: int
    batch: int  # the batch within its epoch
    index: int  # epoch * batches_per_epoch + batch: the cursor a commit carries
    # the batch's slice of ``order(epoch)`` (TRAIN only): row indices, or positions (a range)
    # that the worker's row source maps to rows
    rows: np.ndarray | range | None = None


def batch_schedule(rows: int, batch_size: int, num_epoch: int, window: float,
                   exchange_each_epoch: bool, order: Callable[[int], np.ndarray],
                   resume_after: int = -1) -> Iterator[Step]:
    """The steps of one worker over a partition of ``rows`` rows; ``order(epoch)`` is the
    epoch's row permutation. Batches up to ``resume_after`` (the partition's cursor) were
    committed by an earlier attempt and are skipped; an exchange follows every ``window``
    trained batches, the end of each epoch when ``exchange_each_epoch``, and the last
    partial window, which is committed, not dropped."""
    per_epoch = -(-rows // batch_size) if rows else 0
    pending = 0  # batches trained since the last exchange
    for epoch in range(num_epoch):
        permutation: Any = None
        for b in range(per_epoch):
            index = epoch * per_epoch + b
            if index <= resume_after:
                continue
            if permutation is None:
                permutation = order(epoch)
            yield Step(TRAIN, epoch, b, index,
                       permutation[b * batch_size:(b + 1) * batch_size])
            pending += 1
            if pending >= window:
                pending = 0
                yield Step(EXCHANGE, epoch, b, index)
        if exchange_each_epoch and pending:
            pending = 0
            yield Step(EXCHANGE, epoch, per_epoch - 1, (epoch + 1) * per_epoch - 1)
    if pending:
        yield Step(EXCHANGE, num_epoch - 1, per_epoch - 1, num_epoch * per_epoch - 1)
