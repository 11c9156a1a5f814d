"""Wire format between the parameter server and its workers.

Every message is a fixed little-endian header followed, for some op codes, by the model's
weights as ONE contiguous float32 buffer. Nothing executable ever crosses the socket: the
only things parsed are ``struct`` headers and raw float32 bytes whose size is checked against
the model layout before a single byte of payload is read.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ProtocolError  # noqa: F401 - also importable from here

MAGIC = b"DKPS"
VERSION = 2  # 2: 64-bit sample counts, epoch in requests, heartbeat, fencing, FAIL
TOKEN_BYTES = 32
DIGEST_BYTES = 32
DTYPE = np.dtype("<f4")

# Handshake, client -> server: magic, version, flags (Flag.SHARED: the worker can map shared
# memory), token, layout digest, worker id (the Spark partition), task attempt, process id of
# the worker (for diagnostics), number of float32 parameters.
HELLO = struct.Struct("<4sHH32s32sIIIQ")
# Handshake, server -> client: magic, status, server clock, resume cursor of this partition
# (index of the last batch whose update reached the centre variable, -1 for none), the
# longest a training worker may stay silent before it sends a heartbeat (seconds, 0: never),
# and the path of a shared-memory segment offered to a worker on the same host (empty: none).
# Unless the status is OK, every field after the status is zero: a peer that failed the
# handshake learns nothing about the run.
WELCOME = struct.Struct("<4sB3xqqd64s")
# Request: op, flags (Flag.SHARED: the payload and the reply's payload are in shared memory),
# the worker's epoch, samples in this commit, cursor (last batch covered), clock of the
# worker's last pull, mean training loss over the window, payload size in bytes.
REQUEST = struct.Struct("<BBxxIQqqdQ")
# Reply: status, flags, server clock after the operation, payload size in bytes.
REPLY = struct.Struct("<BB6xqQ")


class Flag:
    SHARED = 1  # payload is in the connection's shared-memory segment, not on the socket


class Op:
    PULL = 1  # reply carries the centre variable
    COMMIT = 2  # request carries an update
    COMMIT_PULL = 3  # both
    METRICS = 4  # header only: loss and samples for the history
    BYE = 5  # the worker is done with this partition
    HEARTBEAT = 6  # header only: the worker is training (sent when it has been quiet a while)
    FAIL = 7  # the worker cannot go on and a retry would fail the same way (a non-finite
    #           loss): the payload is a UTF-8 reason (at most MAX_REASON bytes), shown only

    WITH_PAYLOAD = frozenset({COMMIT, COMMIT_PULL})
    WITH_REPLY_PAYLOAD = frozenset({PULL, COMMIT_PULL})
    ALL = frozenset({PULL, COMMIT, COMMIT_PULL, METRICS, BYE, HEARTBEAT, FAIL})


MAX_REASON = 4096  # bytes of a FAIL frame's reason text


class Status:
    OK = 0
    BAD_VERSION = 1
    BAD_TOKEN = 2
    BAD_LAYOUT = 3
    BUSY = 4
    ABORTED = 5  # the training run failed or stopped; the worker must stop too
    STOP = 6  # the driver ended training early (early stopping): finish cleanly
    FENCED = 7  # a newer attempt of this partition took it over: this one must stop

    MESSAGES = {
        BAD_VERSION: "protocol version mismatch between worker and parameter server",
        BAD_TOKEN: "authentication failed: wrong training token",
        BAD_LAYOUT: "model layout (shapes/dtypes) differs from the parameter server's",
        BUSY: "parameter server refused the connection: too many connections",
        ABORTED: "training was aborted on the driver",
        STOP: "training was stopped early by the driver",
        FENCED: "a newer attempt of this Spark task took over its partition (speculation or a "
                "retry beside a still-running attempt); this attempt stops without applying "
                "anything more",
    }


@dataclass(frozen=True)
class Layout:
    """Shapes and dtypes of a model's weights, flattened in order into one float32 vector."""

    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @classmethod
    def of(cls, arrays: Sequence[np.ndarray]) -> Layout:
        return cls(tuple(tuple(int(d) for d in a.shape) for a in arrays),
                   tuple(str(np.dtype(a.dtype)) for a in arrays))

    @property
    def sizes(self) -> list[int]:
        return [int(np.prod(s, dtype=np.int64)) for s in self.shapes]

    @property
    def num_params(self) -> int:
        return sum(self.sizes)

    @property
    def nbytes(self) -> int:
        return self.num_params * DTYPE.itemsize

    def digest(self) -> bytes:
        text = ";".join(f"{s}:{d}" for s, d in zip(self.shapes, self.dtypes))
        return hashlib.sha256(text.encode()).digest()

    def flatten(self, arrays: Sequence[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
        """Copy ``arrays`` into one flat float32 vector (``out`` when given: no allocation)."""
        if out is None:
            out = np.empty(self.num_params, dtype=DTYPE)
        offset = 0
        for array, size in zip(arrays, self.sizes):
            out[offset:offset + size] = np.asarray(array).reshape(-1)
            offset += size
        return out

    def unflatten(self, flat: np.ndarray) -> list[np.ndarray]:
        """Split a flat vector back into arrays of the layout's shapes and dtypes."""
        arrays, offset = [], 0
        for shape, dtype, size in zip(self.shapes, self.dtypes, self.sizes):
            arrays.append(flat[offset:offset + size].reshape(shape).astype(dtype, copy=True))
            offset += size
        return arrays


def request(op: int, *, flags: int = 0, epoch: int = 0, samples: int = 0, cursor: int = -1,
            clock: int = 0, loss: float = 0.0, nbytes: int = 0) -> bytes:
    """One request header (keywords name the fields of :data:`REQUEST`)."""
    return REQUEST.pack(op, flags, epoch, samples, cursor, clock, loss, nbytes)


def all_finite(array: np.ndarray) -> bool:
    """True when no element is NaN or inf. One BLAS pass (a dot product is NaN/inf as soon as
    one element is); only when it is not finite, which may also be an overflow of huge finite
    values, does the exact element-wise check run."""
    return bool(np.isfinite(np.dot(array, array)) or np.isfinite(array).all())


def new_token() -> bytes:
    return secrets.token_bytes(TOKEN_BYTES)


def tokens_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def recv_exact(sock: socket.socket, buffer: memoryview, deadline: float | None = None) -> None:
    """Fill ``buffer`` completely from ``sock`` (``recv_into``: no intermediate copies).

    With a ``deadline`` (``time.monotonic()`` value) the whole buffer must arrive by then: a
    peer that trickles bytes slowly cannot hold the connection open (slowloris).
    """
    view, received = buffer.cast("B"), 0
    total = len(view)
    while received < total:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProtocolError(f"frame not complete in time ({received} of {total} bytes)")
            sock.settimeout(remaining)
        n = sock.recv_into(view[received:], total - received)
        if n == 0:
            raise ProtocolError(f"connection closed after {received} of {total} bytes")
        received += n


def recv_struct(sock: socket.socket, fmt: struct.Struct, deadline: float | None = None) -> tuple:
    buffer = bytearray(fmt.size)
    recv_exact(sock, memoryview(buffer), deadline)
    return fmt.unpack(buffer)


def send_frame(sock: socket.socket, header: bytes, payload: np.ndarray | None = None) -> None:
    """Send a header and, optionally, a float32 payload without copying the payload."""
    if payload is None:
        sock.sendall(header)
        return
    sock.sendall(header)
    sock.sendall(memoryview(payload).cast("B"))


def connect(address: tuple[str, int], timeout: float = 60.0, attempts: int = 6,
            backoff: float = 0.25, deadline: float = 15.0) -> socket.socket:
    """Connect with retries and exponential backoff; TCP_NODELAY for small headers.

    ``timeout`` is the socket's timeout once connected; connecting itself, retries
    included, gives up after ``deadline`` seconds, so that an address the caller cannot
    reach (no route, a firewall dropping packets) fails in seconds, not after a hang."""
    last_error: Exception | None = None
    began = time.monotonic()
    give_up = began + deadline
    for attempt in range(attempts):
        left = give_up - time.monotonic()
        if left <= 0:
            break
        try:
            sock = socket.create_connection(address, timeout=min(timeout, left))
            sock.settimeout(timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as error:
            last_error = error
            if attempt + 1 < attempts:
                time.sleep(min(backoff * (2 ** attempt), max(give_up - time.monotonic(), 0)))
    raise ConnectionError(f"cannot reach the distkeras parameter server at "
                          f"{address[0]}:{address[1]} (gave up after "
                          f"{time.monotonic() - began:.1f}s): {last_error}")
