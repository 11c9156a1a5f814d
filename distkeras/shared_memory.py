"""A same-host fast path: the payload of a frame goes through a shared-memory segment.

When a worker runs on the driver's host (``local[N]``, or an executor beside the driver), the
server offers it a segment in ``/dev/shm`` (mode 0600, random name) in the handshake. The
worker maps it and from then on writes its update there and reads the centre variable from
there; only the fixed headers cross the socket, which still orders every exchange. The file
is unlinked as soon as the worker's first frame arrives, so nothing is left behind even if
either side dies. A worker on another host cannot open the path and keeps using the socket;
the server offers no segment at all to a peer whose address is not one of its own host's.

The server reserves the segment's memory when it creates it (``posix_fallocate``): on tmpfs
``ftruncate`` alone makes a sparse file even when there is no room, and the first write to a
page that cannot be backed kills the writer with SIGBUS. Where the space cannot be reserved
(a small /dev/shm: Docker gives 64 MiB) no segment is offered and the payload goes over the
socket. The worker maps only a path of the server's own naming under /dev/shm, and only a
regular file (not a link) of exactly the expected size; anything else, it uses the socket.
"""

from __future__ import annotations

import mmap
import os
import re
import secrets
import socket
import stat

import numpy as np

from .protocol import DTYPE

SHM_DIR = "/dev/shm"
PREFIX = "distkeras-"
NAME_BYTES = 16  # random bytes in a name: 32 lowercase hex characters


def is_local_address(address: str) -> bool:
    """True when ``address`` (a peer as the server saw it) is one of this host's own: only
    such a worker can map the server's segments, so only it is offered one (space reserved
    for a worker on another host would be wasted)."""
    if address.startswith("::ffff:"):  # IPv4 peer on a dual-stack socket
        address = address[len("::ffff:"):]
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
        return True
    except OSError:
        return False


def _size(num_params: int) -> int:
    """Bytes in a segment: an update and the centre variable, two float32 vectors."""
    return 2 * num_params * DTYPE.itemsize


def new_path() -> str:
    """A fresh segment path: ``SHM_DIR/distkeras-`` and 32 lowercase hex characters."""
    return f"{SHM_DIR}/{PREFIX}{secrets.token_hex(NAME_BYTES)}"


def is_segment_path(path: object) -> bool:
    """Whether ``path`` is exactly of the form :func:`new_path` makes (nothing else maps)."""
    pattern = re.escape(f"{SHM_DIR}/{PREFIX}") + f"[0-9a-f]{{{2 * NAME_BYTES}}}"
    return isinstance(path, str) and re.fullmatch(pattern, path) is not None


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Segment:
    """Two float32 vectors of ``num_params`` each: ``to_server`` and ``to_worker``."""

    def __init__(self, path: str, mapping: mmap.mmap, num_params: int):
        self.path = path
        self._map = mapping
        nbytes = num_params * DTYPE.itemsize
        self.to_server = np.frombuffer(mapping, DTYPE, num_params, 0)
        self.to_worker = np.frombuffer(mapping, DTYPE, num_params, nbytes)

    @classmethod
    def create(cls, num_params: int) -> Segment | None:
        """A new segment with its memory reserved, or None where the host has no /dev/shm,
        it is full, or space cannot be reserved there; no file is left behind then."""
        fallocate = getattr(os, "posix_fallocate", None)
        if num_params <= 0 or fallocate is None or not os.path.isdir(SHM_DIR):
            return None
        path, size = new_path(), _size(num_params)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        try:
            try:
                # allocate every page now: ENOSPC here, rather than SIGBUS on first write
                fallocate(fd, 0, size)
                segment = cls(path, mmap.mmap(fd, size), num_params)
            finally:
                os.close(fd)
        except (OSError, ValueError, OverflowError):  # ENOSPC, EOPNOTSUPP, ENOMEM, ...
            _remove(path)
            return None
        except BaseException:
            _remove(path)
            raise
        return segment

    @classmethod
    def attach(cls, path: str, num_params: int) -> Segment | None:
        """Map a segment the server offered, or None when it is not reachable from here or
        is not one of the server's segments of this model's size."""
        if num_params <= 0 or not is_segment_path(path):
            return None
        size = _size(num_params)
        try:
            # not a link; O_NONBLOCK, O_NOCTTY: opening a FIFO or a device never blocks or
            # grabs a terminal before the checks below refuse it
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
                         | os.O_NOCTTY)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size != size:
                return None
            return cls(path, mmap.mmap(fd, size), num_params)
        except (OSError, ValueError, OverflowError):
            return None
        finally:
            os.close(fd)

    def unlink(self) -> None:
        _remove(self.path)

    def close(self) -> None:
        self.unlink()
        self.to_server = self.to_worker = None  # drop the views before closing the map
        try:
            self._map.close()
        except BufferError:
            pass  # a caller still holds a view: the map closes when it is collected
