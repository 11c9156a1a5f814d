"""A same-host fast path: the payload of a frame goes through a shared-memory segment.

When a worker runs on the driver's host (``local[N]``, or an executor beside the driver), the
server offers it a segment in ``/dev/shm`` (mode 0600, random name) in the handshake. The
worker maps it and from then on writes its update there and reads the centre variable from
there; only the fixed headers cross the socket, which still orders every exchange. The file
is unlinked as soon as the worker's first frame arrives, so nothing is left behind even if
either side dies. A worker on another host cannot open the path and keeps using the socket.
"""

from __future__ import annotations

import mmap
import os
import secrets

import numpy as np

from .protocol import DTYPE

SHM_DIR = "/dev/shm"


class Segment:
    """Two float32 vectors of ``num_params`` each: ``to_server`` and ``to_worker``."""

    def __init__(self, path: str, num_params: int, create: bool):
        self.path = path
        nbytes = num_params * DTYPE.itemsize
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, 2 * nbytes)
            elif os.fstat(fd).st_size != 2 * nbytes:
                raise OSError(f"{path} has the wrong size for this model")
            self._map = mmap.mmap(fd, 2 * nbytes)
        finally:
            os.close(fd)
        self.to_server = np.frombuffer(self._map, DTYPE, num_params, 0)
        self.to_worker = np.frombuffer(self._map, DTYPE, num_params, nbytes)

    @classmethod
    def create(cls, num_params: int) -> Segment | None:
        """A new segment, or None where the host has no /dev/shm or it is full."""
        if not os.path.isdir(SHM_DIR) or num_params == 0:
            return None
        path = os.path.join(SHM_DIR, f"distkeras-{secrets.token_hex(16)}")
        try:
            return cls(path, num_params, create=True)
        except OSError:
            return None

    @classmethod
    def attach(cls, path: str, num_params: int) -> Segment | None:
        """Map a segment the server offered, or None when it is not reachable from here."""
        try:
            return cls(path, num_params, create=False)
        except (OSError, ValueError):
            return None

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        self.unlink()
        self.to_server = self.to_worker = None  # drop the views before closing the map
        try:
            self._map.close()
        except BufferError:
            pass  # a caller still holds a view: the map closes when it is collected
