"""Checkpoints of a training run: the centre variable, the server clock, every partition's
cursor and the run's seed, written atomically (write a temporary file, then rename) in
numpy's ``.npz`` format and read back with ``allow_pickle=False``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .protocol import DTYPE, Layout


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`load` returns.

    Attributes:
        center: The centre variable, flat float32.
        clock: The server clock (commits applied) when it was written.
        cursors: Partition -> the last batch index committed from it.
        seed: The run's seed (the batch order depends on it).
        digest: The layout digest of the model it belongs to.
        samples: Samples trained when it was written.
    """

    center: np.ndarray
    clock: int
    cursors: dict[int, int]
    seed: int
    digest: bytes
    samples: int = 0  # samples trained when it was written (epochs of a resumed run line up)


def save(path: str, center: np.ndarray, clock: int, cursors: dict[int, int], seed: int,
         digest: bytes, samples: int = 0) -> None:
    """Write a checkpoint atomically: a reader sees the previous one or this one, never a torn
    file (a temporary file is written, synced, then renamed over ``path``).

    Args:
        path: The file to write; its directory is created if needed.
        center: The centre variable (flat; stored as float32).
        clock: The server clock.
        cursors: Partition -> the last batch index committed from it.
        seed: The run's seed.
        digest: The model's layout digest (`Layout.digest()`).
        samples: Samples trained so far. Defaults to `0`.

    Raises:
        OSError: The file cannot be written.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    workers = np.array(sorted(cursors), dtype=np.int64)
    with open(temporary, "wb") as handle:
        np.savez(handle, center=np.asarray(center, dtype=DTYPE), clock=np.int64(clock),
                 workers=workers, cursors=np.array([cursors[w] for w in workers], np.int64),
                 seed=np.int64(seed), digest=np.frombuffer(digest, dtype=np.uint8),
                 samples=np.int64(samples))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def load(path: str, layout: Layout) -> Checkpoint:
    """Read a checkpoint and check that it belongs to a model of this layout.

    Args:
        path: A file :func:`save` wrote.
        layout: The layout of the model to resume (`Layout.of(model.get_weights())`).

    Returns:
        A :class:`Checkpoint`.

    Raises:
        ValueError: The checkpoint was written for another model layout.
        OSError: The file cannot be read (`FileNotFoundError` when it does not exist).
    """
    with np.load(path, allow_pickle=False) as data:
        digest = data["digest"].tobytes()
        if digest != layout.digest():
            raise ValueError(f"checkpoint {path} was written for another model layout")
        center = data["center"].astype(DTYPE)
        if center.size != layout.num_params:
            raise ValueError(f"checkpoint {path} holds {center.size} parameters, the model "
                             f"has {layout.num_params}")
        cursors = {int(w): int(c) for w, c in zip(data["workers"], data["cursors"])}
        samples = int(data["samples"]) if "samples" in data.files else 0
        return Checkpoint(center, int(data["clock"]), cursors, int(data["seed"]), digest,
                          samples)
