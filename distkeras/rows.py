"""A partition's training rows, and the order in which each epoch visits them.

The batch loop asks one thing of its data: the rows at positions ``[start, stop)`` of epoch
``e``'s order (:meth:`RowSource.take`). Two sources answer it, and :func:`collect` picks one
as the rows arrive:

* :class:`InMemoryRows`: a partition that fits the worker's budget, held as float32 arrays;
  each epoch is a full permutation of its rows (:meth:`Order.rows`).
* :class:`SpilledRows`: a larger one, written once, as it arrived, to a local Arrow IPC file
  in blocks of ``block_rows`` rows. An epoch visits the blocks in a random order, a window
  of whole blocks (half the budget) at a time: a window's blocks are read, their rows
  permuted and handed out, then the next window replaces them. Blocks are read with plain
  reads into buffers that are reused or freed, never memory-mapped (pages of a mapping stay
  resident while it is mapped, which would let the file's size count in the worker's RSS).

Both orders are pure functions of (seed, partition, epoch) and the partition's size, so a
retried task that skips the batches its predecessor committed trains exactly the others.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .data import ColumnPlan
from .errors import WorkerError
from .memory import format_size
from .spill import SpillDir

MIN_BLOCK, MAX_BLOCK = 32 * 2**10, 4 * 2**20  # bytes of one block of the spill file


@dataclass(frozen=True)
class Order:
    """The visiting orders of one partition, each a pure function of (seed, partition,
    epoch); ``shuffle=False``: the rows in the order they arrived, every epoch."""

    seed: int
    partition: int
    shuffle: bool = True

    def _permutation(self, n: int, *key: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.partition, *key]).permutation(n)

    def rows(self, epoch: int, n: int) -> np.ndarray:
        """A full permutation of ``n`` rows (a partition held in memory)."""
        return self._permutation(n, epoch)

    def blocks(self, epoch: int, n: int) -> np.ndarray:
        """The order of the ``n`` blocks of a spilled partition."""
        return self._permutation(n, epoch, 1)

    def window(self, epoch: int, window: int, n: int) -> np.ndarray:
        """The order of the ``n`` rows of window ``window`` of a spilled partition."""
        return self._permutation(n, epoch, 2, window)


def block_rows(budget: int, row_bytes: int) -> int:
    """Rows per block of the spill file: about 1/256 of the budget, kept between 32 KiB and
    4 MiB (small blocks mix better, large ones read faster) but never over 1/64 of it, so
    that a window holds at least 32 blocks; at least one row."""
    size = min(max(budget // 256, MIN_BLOCK), MAX_BLOCK, budget // 64)
    return max(1, size // row_bytes)


def window_rows(budget: int, row_bytes: int, block: int) -> int:
    """Rows of one window: as many whole blocks as half the budget holds, at least one."""
    return block * max(1, (budget // 2) // (block * row_bytes))


class RowSource:
    """The rows of one partition, as the batch loop reads them."""

    rows: int = 0  # rows in the partition
    spilled: int = 0  # bytes of the spill file (0: held in memory)

    def take(self, epoch: int, positions: range) -> tuple[Any, Any]:
        """``(x, y)`` for ``train_on_batch``: the rows at ``positions`` of ``epoch``'s order."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of the rows (and of the spill file)."""

    def __enter__(self) -> RowSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InMemoryRows(RowSource):
    """A partition held as one float32 ``(rows, width)`` array a column."""

    def __init__(self, plan: ColumnPlan, columns: list[np.ndarray], order: Order):
        self.plan, self._columns, self._order = plan, columns, order
        self.rows = len(columns[0]) if columns else 0
        self._epoch: int | None = None
        self._permutation = np.arange(0)

    def take(self, epoch: int, positions: range) -> tuple[Any, Any]:
        if epoch != self._epoch:
            self._epoch, self._permutation = epoch, self._order.rows(epoch, self.rows)
        index = self._permutation[positions.start:positions.stop]
        return self.plan.finish([column[index] for column in self._columns])

    def close(self) -> None:
        self._columns = []


class SpilledRows(RowSource):
    """A partition in an Arrow IPC file of blocks, read a window at a time."""

    def __init__(self, plan: ColumnPlan, path: str, rows: int, block: int, window: int,
                 order: Order):
        import pyarrow as pa

        self.plan, self.path, self.rows, self._order = plan, path, rows, order
        self.block_rows, self.window_rows = block, window
        self.spilled = os.path.getsize(path)
        # plain reads into buffers of the system allocator, freed as soon as copied
        self._file = pa.OSFile(path, "rb", memory_pool=pa.system_memory_pool())
        self._reader = pa.ipc.open_file(self._file)
        self.blocks = self._reader.num_record_batches
        self._window = [np.empty((window, c.width), dtype=np.float32) for c in plan.columns]
        self._epoch: int | None = None
        self._loaded: int | None = None
        self._groups: list[np.ndarray] = []
        self._starts = np.zeros(1, dtype=np.int64)
        self._permutation = np.arange(0)

    def _layout(self, epoch: int) -> None:
        """The epoch's windows: groups of whole blocks in the epoch's block order, and the
        position in the epoch at which each starts."""
        if epoch == self._epoch:
            return
        per = self.window_rows // self.block_rows
        order = self._order.blocks(epoch, self.blocks)
        # within a window, read blocks in file order: its rows are permuted anyway
        self._groups = [np.sort(order[i:i + per]) for i in range(0, self.blocks, per)]
        sizes = [sum(self._block_size(b) for b in group) for group in self._groups]
        self._starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._epoch, self._loaded = epoch, None

    def _block_size(self, block: int) -> int:
        return min(self.block_rows, self.rows - int(block) * self.block_rows)

    def _load(self, window: int) -> None:
        if window == self._loaded:
            return
        filled = 0
        for block in self._groups[window]:
            batch = self._reader.get_batch(int(block))
            size = batch.num_rows
            for buffer, column in zip(self._window, batch.columns):
                buffer[filled:filled + size] = _floats(column).reshape(size, -1)
            filled += size
            del batch  # its buffers go back before the next block is read
        self._permutation = self._order.window(self._epoch, window, filled)
        self._loaded = window

    def take(self, epoch: int, positions: range) -> tuple[Any, Any]:
        self._layout(epoch)
        start, stop, pieces = positions.start, positions.stop, []
        while start < stop:  # a batch may end in the next window
            window = int(np.searchsorted(self._starts, start, side="right")) - 1
            self._load(window)
            base, end = int(self._starts[window]), min(stop, int(self._starts[window + 1]))
            index = self._permutation[start - base:end - base]
            pieces.append([buffer[index] for buffer in self._window])
            start = end
        flats = pieces[0] if len(pieces) == 1 else [np.concatenate(p) for p in zip(*pieces)]
        return self.plan.finish(flats)

    def close(self) -> None:
        self._window = []
        self._reader = None
        self._file.close()


def _floats(column) -> np.ndarray:
    """The float32 values of a fixed-size-list column, without a copy (and without
    ``to_numpy``, which would import pandas: tens of MB in every worker)."""
    values = column.flatten()
    return np.frombuffer(values.buffers()[1], dtype=np.float32, count=len(values),
                         offset=values.offset * 4)


class _SpillWriter:
    """Writes rows to an Arrow IPC file in blocks of exactly ``block`` rows (the last one
    shorter), whatever the sizes of the chunks they arrive in."""

    def __init__(self, plan: ColumnPlan, path: str, block: int):
        import pyarrow as pa

        self.path, self.block = path, block
        self._widths = [c.width for c in plan.columns]
        self._schema = pa.schema([(f"c{i}", pa.list_(pa.float32(), width))
                                  for i, width in enumerate(self._widths)])
        self._sink = pa.OSFile(path, "wb")
        self._writer = pa.ipc.new_file(self._sink, self._schema)
        self._staged = [np.empty((block, width), dtype=np.float32) for width in self._widths]
        self._filled = 0
        self.rows = 0

    def write(self, columns: list[np.ndarray]) -> None:
        size, done = len(columns[0]), 0
        while done < size:
            if self._filled == 0 and size - done >= self.block:  # a whole block: no copy
                self._emit([c[done:done + self.block] for c in columns])
                done += self.block
                continue
            take = min(self.block - self._filled, size - done)
            for staged, column in zip(self._staged, columns):
                staged[self._filled:self._filled + take] = column[done:done + take]
            self._filled += take
            done += take
            if self._filled == self.block:
                self._emit(self._staged)
                self._filled = 0
        self.rows += size

    def _emit(self, arrays: list[np.ndarray]) -> None:
        import pyarrow as pa

        lists = []
        for array, width in zip(arrays, self._widths):
            flat = np.ascontiguousarray(array).ravel()  # a view: rows are contiguous
            values = pa.Array.from_buffers(pa.float32(), len(flat), [None, pa.py_buffer(flat)])
            lists.append(pa.FixedSizeListArray.from_arrays(values, width))
        self._writer.write_batch(pa.record_batch(lists, schema=self._schema))

    def close(self) -> None:
        if self._filled:
            self._emit([staged[:self._filled] for staged in self._staged])
            self._filled = 0
        self._writer.close()
        self._sink.close()
        self._staged = []

    def abort(self) -> None:
        """Close the file after a failure (the spill directory is removed with it)."""
        self._sink.close()
        self._staged = []


def _reserve(plan: ColumnPlan, rows: int) -> list[np.ndarray]:
    """Room for ``rows`` rows, one array a column. Its pages only become resident as rows
    are written (a large allocation is an anonymous mapping); where the system will not
    reserve that much address space (``worker_memory`` over RAM and swap), half as much."""
    while True:
        try:
            return [np.empty((rows, c.width), dtype=np.float32) for c in plan.columns]
        except MemoryError:
            if rows <= 1:
                raise
            rows //= 2


@contextlib.contextmanager
def _spilling(spill: SpillDir, order: Order, held: int):
    """Errors of the spill file (a full disk) as a WorkerError that says what to do."""
    try:
        yield
    except OSError as error:
        raise WorkerError(
            f"worker {order.partition}: could not spill its partition to {spill.path} "
            f"({format_size(held)} of rows so far): {error}. Give spark.local.dir more space "
            f"or raise worker_memory") from error


def collect(plan: ColumnPlan, chunks: Iterable[list[np.ndarray]], budget: int,
            spill: SpillDir, order: Order) -> RowSource:
    """A partition's rows as they arrive (``chunks``: per chunk, one float32 ``(rows, width)``
    array a column): held in memory while they fit ``budget`` bytes; once they do not, what
    is held is written to ``spill`` and freed, and every later chunk is written as it comes.
    """
    row_bytes = plan.row_bytes
    capacity = max(1, budget // row_bytes)
    held: list[np.ndarray] | None = None
    writer: _SpillWriter | None = None
    rows = 0
    try:
        for chunk in chunks:
            size = len(chunk[0])
            if held is None and writer is None:
                held = _reserve(plan, capacity)
                capacity = len(held[0])
            if writer is None and rows + size <= capacity:
                for i in range(len(chunk)):  # (no loop variable keeps an array alive)
                    held[i][rows:rows + size] = chunk[i]
            else:
                with _spilling(spill, order, rows * row_bytes):
                    if writer is None:
                        writer = _SpillWriter(plan, spill.file("rows.arrow"),
                                              block_rows(budget, row_bytes))
                        if rows:
                            writer.write([array[:rows] for array in held])
                        held = None  # the budget's memory goes back before the rest arrives
                    writer.write(chunk)
            rows += size
            del chunk  # the record batch it views goes back before the next one is read
        if writer is not None:
            with _spilling(spill, order, rows * row_bytes):
                writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is None:
        columns = [array[:rows] for array in held] if held is not None else [
            np.empty((0, c.width), dtype=np.float32) for c in plan.columns]
        return InMemoryRows(plan, columns, order)
    block = writer.block
    return SpilledRows(plan, writer.path, rows, block, window_rows(budget, row_bytes, block),
                       order)
