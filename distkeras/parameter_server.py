"""The parameter server: a socket server thread on the Spark driver that owns the centre variable.

One thread accepts connections; one thread serves each worker connection. The server applies
commits through the algorithm's server half and never looks at which algorithm it runs.
Synchronous algorithms meet at a rendezvous here: a round completes when every partition
still training has committed (a partition that finished its data leaves the round set).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass

import numpy as np

from . import checkpoint
from . import protocol as wire
from .algorithms import Algorithm, Session
from .history import History
from .shared_memory import Segment

log = logging.getLogger(__name__)


class TrainingAborted(RuntimeError):
    """The run was stopped: a worker died mid-round, a round timed out, or the driver aborted."""


@dataclass
class ServerConfig:
    handshake_timeout: float = 10.0  # a new connection must complete its handshake by then
    frame_timeout: float = 120.0  # a started frame must be complete by then
    idle_timeout: float = 3600.0  # longest silence between two frames of a worker
    round_timeout: float = 600.0  # longest wait for the other workers of a synchronous round
    max_connections: int | None = None  # default: 4 per worker + 8
    shared_memory: bool = True  # offer same-host workers a shared-memory payload path
    checkpoint_path: str | None = None  # where to save the centre, clock and cursors
    checkpoint_every: int = 0  # save every this many commits (0: off)
    checkpoint_seconds: float = 0.0  # and/or every this many seconds (0: off)
    stall_timeout: float = 1800.0  # a connected worker silent this long stops the run


class ParameterServer:
    """Serve ``center`` (flat float32, updated in place) to ``num_workers`` Spark partitions."""

    def __init__(self, center: np.ndarray, layout: wire.Layout, algorithm: Algorithm,
                 num_workers: int, token: bytes, bind_host: str = "127.0.0.1", port: int = 0,
                 config: ServerConfig | None = None, cursors: dict[int, int] | None = None,
                 clock: int = 0, seed: int = 0, on_abort=None):
        if center.dtype != wire.DTYPE or center.ndim != 1 or center.size != layout.num_params:
            raise ValueError("center must be a flat float32 vector of the layout's size")
        self.center = center
        self.layout = layout
        self.algorithm = algorithm
        self.num_workers = int(num_workers)
        self.config = config or ServerConfig()
        self.history = History()
        self.history.synchronous = algorithm.synchronous
        self.clock = int(clock)
        self.cursors: dict[int, int] = dict(cursors or {})
        self.seed = int(seed)  # saved with checkpoints: batch order depends on it
        self._on_abort = on_abort  # called once, from a server thread, when the run fails
        self._checkpointed = (self.clock, time.monotonic())
        self._checkpoint_lock = threading.Lock()
        self._token = token
        self._digest = layout.digest()
        self._bind = (bind_host, int(port))
        self._lock = threading.Lock()  # centre variable and bookkeeping
        self._round = threading.Condition(self._lock)
        self._apply_lock = self._lock if algorithm.locked else contextlib.nullcontext()
        self._connections: set[socket.socket] = set()
        self.sessions: dict[socket.socket, Session] = {}  # live, handshaken workers
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self.error: str | None = None
        self.stopped_early: str | None = None  # why the driver ended training early
        self.rejected_connections = 0
        # synchronous rendezvous: who still trains, who committed this round
        self._active = set(range(self.num_workers))
        self._arrived: set[int] = set()
        self._round_no = 0
        self._round_acc = algorithm.round_begin(center) if algorithm.synchronous else None
        self._round_started = time.monotonic()
        limit = self.config.max_connections
        self._max_connections = limit if limit is not None else 4 * self.num_workers + 8

    # ---- lifecycle -----------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        if self._listener is None:
            raise RuntimeError("server not started")
        return self._listener.getsockname()[:2]

    def start(self) -> ParameterServer:
        family = socket.AF_INET6 if ":" in self._bind[0] else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(self._bind)
        listener.listen(128)
        listener.settimeout(0.2)
        self._listener = listener
        self.history.start()
        self._acceptor = threading.Thread(target=self._accept_loop, name="distkeras-ps-accept",
                                          daemon=True)
        self._acceptor.start()
        return self

    def checkpoint(self, path: str | None = None) -> str | None:
        """Save the centre variable, clock, cursors and seed atomically; returns the path."""
        path = path or self.config.checkpoint_path
        if not path:
            return None
        with self._checkpoint_lock:
            with self._lock:
                center, clock, cursors = self.center.copy(), self.clock, dict(self.cursors)
            checkpoint.save(path, center, clock, cursors, self.seed, self._digest)
            self._checkpointed = (clock, time.monotonic())
        return path

    def _maybe_checkpoint(self) -> None:
        config = self.config
        if not config.checkpoint_path or self._checkpoint_lock.locked():
            return
        clock, at = self._checkpointed
        due = (config.checkpoint_every and self.clock - clock >= config.checkpoint_every) or \
            (config.checkpoint_seconds and time.monotonic() - at >= config.checkpoint_seconds)
        if due:
            self.checkpoint()

    def stop(self, reason: str | None = None) -> None:
        """Stop serving, close every connection and free the port. Safe to call twice.

        With a checkpoint path configured, a last checkpoint holds everything applied."""
        with self._lock:
            if reason and self.error is None:
                self.error = reason
            self._stopping.set()
            self._round.notify_all()
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        for thread in list(self._threads):
            thread.join(timeout=5)
        if self.config.checkpoint_path and self._listener is not None:
            self.checkpoint()

    def __enter__(self) -> ParameterServer:
        return self.start() if self._listener is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def abort(self, reason: str) -> None:
        """Fail the run: waiting workers are told, later frames are refused, and the owner
        (the trainer, which cancels the Spark job) is called back once."""
        with self._lock:
            first = self.error is None
            if first:
                self.error = reason
            self._round.notify_all()
        if first:
            log.error("distkeras parameter server aborts training: %s", reason)
            if self._on_abort is not None:
                try:
                    self._on_abort(reason)
                except Exception as error:  # noqa: BLE001 - the abort itself must stand
                    log.warning("distkeras: abort callback failed: %s", error)

    def snapshot(self) -> np.ndarray:
        """A consistent copy of the centre variable."""
        with self._lock:
            return self.center.copy()

    def stop_early(self, reason: str) -> None:
        """End training gracefully: every worker's next request is answered STOP, after which
        it leaves without error (the Spark job completes)."""
        with self._lock:
            if self.stopped_early is None:
                self.stopped_early = reason
            self._round.notify_all()

    def _watch(self) -> None:
        """Stop the run when a connected worker has been silent for ``stall_timeout``."""
        limit = self.config.stall_timeout
        if not limit or self.error is not None:
            return
        now = time.monotonic()
        with self._lock:
            silent = [s for s in self.sessions.values() if not s.busy and
                      now - s.last_seen > limit]
        if silent:
            s = silent[0]
            self.abort(f"worker {s.worker} (attempt {s.attempt}, pid {s.pid}) sent nothing for "
                       f"{now - s.last_seen:.0f}s (stall_timeout={limit:g}s): it hangs; the "
                       f"run is stopped")

    # ---- connections ---------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            self._watch()
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            with self._lock:
                crowded = len(self._connections) >= self._max_connections
                if not crowded:
                    self._connections.add(conn)
            if crowded or self._stopping.is_set():
                self.rejected_connections += 1
                with contextlib.suppress(OSError):
                    conn.close()
                continue
            thread = threading.Thread(target=self._serve, args=(conn, peer), daemon=True,
                                      name=f"distkeras-ps-{peer[1]}")
            self._threads.add(thread)
            thread.start()

    def _serve(self, conn: socket.socket, peer) -> None:
        session = segment = None
        clean = False
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            session, segment = self._handshake(conn)
            clean = self._serve_frames(conn, session, segment)
        except (wire.ProtocolError, OSError, ValueError) as error:
            if not self._stopping.is_set():
                log.warning("distkeras parameter server closed connection from %s: %s",
                            peer, error)
            with self._lock:
                self.rejected_connections += session is None
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            if segment is not None:
                segment.close()
            with self._lock:
                self._connections.discard(conn)
                self.sessions.pop(conn, None)
            if session is not None and not clean:
                self._lost(session)
            self._threads.discard(threading.current_thread())

    def _handshake(self, conn: socket.socket) -> tuple[Session, Segment | None]:
        deadline = time.monotonic() + self.config.handshake_timeout
        magic, version, flags, token, digest, worker, attempt, pid, num_params = \
            wire.recv_struct(conn, wire.HELLO, deadline)
        if magic != wire.MAGIC:
            raise wire.ProtocolError("bad magic in handshake")
        status = wire.Status.OK
        if version != wire.VERSION:
            status = wire.Status.BAD_VERSION
        elif not wire.tokens_equal(token, self._token):
            status = wire.Status.BAD_TOKEN
        elif digest != self._digest or num_params != self.layout.num_params \
                or worker >= self.num_workers:
            status = wire.Status.BAD_LAYOUT
        elif self.error is not None:
            status = wire.Status.ABORTED
        with self._lock:
            cursor = self.cursors.get(worker, -1)
            clock = self.clock
        segment = None
        if status == wire.Status.OK and flags & wire.Flag.SHARED and self.config.shared_memory:
            segment = Segment.create(self.layout.num_params)
        path = segment.path.encode() if segment is not None else b""
        try:
            conn.sendall(wire.WELCOME.pack(wire.MAGIC, status, clock, cursor, path))
        except OSError:
            if segment is not None:
                segment.close()
            raise
        if status != wire.Status.OK:
            raise wire.ProtocolError(wire.Status.MESSAGES[status])
        session = Session(worker=int(worker), attempt=int(attempt), pulled_clock=clock,
                          pid=int(pid), last_seen=time.monotonic())
        with self._lock:
            self.sessions[conn] = session
        return session, segment

    def _serve_frames(self, conn: socket.socket, session: Session,
                      segment: Segment | None) -> bool:
        """Serve one worker until it says bye (True) or the connection ends (exception)."""
        inbox = outbox = None  # socket payload buffers, only for workers on another host
        header = bytearray(wire.REQUEST.size)
        expected = self.layout.nbytes
        while not self._stopping.is_set():
            conn.settimeout(self.config.idle_timeout)
            first = conn.recv_into(header, 1)
            if first == 0:
                raise wire.ProtocolError("connection closed without bye")
            if segment is not None:
                segment.unlink()  # the worker had its chance to map it; leave nothing behind
            session.busy, session.last_seen = True, time.monotonic()
            deadline = time.monotonic() + self.config.frame_timeout
            wire.recv_exact(conn, memoryview(header)[1:], deadline)
            op, flags, samples, cursor, _, loss, nbytes = wire.REQUEST.unpack(header)
            if op not in wire.Op.ALL:
                raise wire.ProtocolError(f"unknown op code {op}")
            if nbytes != (expected if op in wire.Op.WITH_PAYLOAD else 0):
                raise wire.ProtocolError(f"op {op}: payload of {nbytes} bytes, expected "
                                         f"{expected if op in wire.Op.WITH_PAYLOAD else 0}")
            shared = bool(flags & wire.Flag.SHARED)
            if shared and segment is None:
                raise wire.ProtocolError("shared-memory frame without a shared segment")
            if not shared and inbox is None:
                inbox = np.empty(self.layout.num_params, dtype=wire.DTYPE)
                outbox = np.empty(self.layout.num_params, dtype=wire.DTYPE)
            update = segment.to_server if shared else inbox
            reply = segment.to_worker if shared else outbox
            if op in wire.Op.WITH_PAYLOAD:
                if not shared:
                    wire.recv_exact(conn, memoryview(inbox), deadline)
                if not wire.all_finite(update):
                    raise wire.ProtocolError(f"worker {session.worker} sent a non-finite update")
            if op == wire.Op.BYE:
                self._leave(session)
                conn.sendall(wire.REPLY.pack(wire.Status.OK, 0, self.clock, 0))
                return True
            status, clock = self._handle(op, session, update, reply, samples, cursor, loss)
            session.busy, session.last_seen = False, time.monotonic()
            if op in wire.Op.WITH_PAYLOAD:
                self._maybe_checkpoint()
            if status != wire.Status.OK:
                conn.sendall(wire.REPLY.pack(status, 0, clock, 0))
                return True
            if op not in wire.Op.WITH_REPLY_PAYLOAD:
                conn.sendall(wire.REPLY.pack(status, 0, clock, 0))
            elif shared:
                conn.sendall(wire.REPLY.pack(status, wire.Flag.SHARED, clock, expected))
            else:
                wire.send_frame(conn, wire.REPLY.pack(status, 0, clock, expected), outbox)
        return True

    # ---- operations ----------------------------------------------------------------
    def _handle(self, op: int, session: Session, update: np.ndarray, outbox: np.ndarray,
                samples: int, cursor: int, loss: float) -> tuple[int, int]:
        if self.error is not None:
            return wire.Status.ABORTED, self.clock
        if self.stopped_early is not None:
            return wire.Status.STOP, self.clock
        if op == wire.Op.METRICS:
            self.history.add_metrics(session.worker, loss, samples)
            return wire.Status.OK, self.clock
        if op == wire.Op.PULL:
            with self._apply_lock:
                self._pull(session, outbox)
            return wire.Status.OK, self.clock
        if self.algorithm.synchronous:
            return self._commit_round(op, session, update, outbox, samples, cursor, loss)
        # Locked algorithms hold the lock for the whole commit; Hogwild applies without it
        # and takes the lock only for the clock and the bookkeeping.
        bookkeeping = contextlib.nullcontext() if self.algorithm.locked else self._lock
        with self._apply_lock:
            with bookkeeping:
                clock = self.clock
                self.clock += 1
            self.algorithm.apply(self.center, update, session, clock)
            with bookkeeping:
                self._bookkeep(session, clock, samples, cursor, loss)
            if op == wire.Op.COMMIT_PULL:
                self._pull(session, outbox)
        return wire.Status.OK, self.clock

    def _pull(self, session: Session, outbox: np.ndarray) -> None:
        np.copyto(outbox, self.center)
        session.pulled_clock = self.clock
        self.algorithm.on_pull(self.center, session)

    def _bookkeep(self, session: Session, clock: int, samples: int, cursor: int,
                  loss: float, staleness: int | None = None) -> None:
        if cursor > self.cursors.get(session.worker, -1):
            self.cursors[session.worker] = cursor
        if staleness is None:
            staleness = clock - session.pulled_clock
        self.history.add_commit(session.worker, clock + 1, staleness, loss, samples)

    def _commit_round(self, op, session, update, outbox, samples, cursor, loss):
        with self._round:
            if session.worker not in self._active:
                return wire.Status.ABORTED, self.clock
            clock = self.clock
            self.clock += 1
            self.algorithm.round_add(self._round_acc, update, samples)
            self._arrived.add(session.worker)
            # every member computed its update from the previous round's centre: no staleness
            self._bookkeep(session, clock, samples, cursor, loss, staleness=0)
            my_round = self._round_no
            self._maybe_end_round()
            while self._round_no == my_round and self.error is None \
                    and self.stopped_early is None and not self._stopping.is_set():
                waited = time.monotonic() - self._round_started
                if waited > self.config.round_timeout:
                    missing = sorted(self._active - self._arrived)
                    self.error = (f"synchronous round {my_round} waited {waited:.0f}s for "
                                  f"worker(s) {missing}; round_timeout="
                                  f"{self.config.round_timeout}s")
                    self._round.notify_all()
                    break
                self._round.wait(timeout=min(1.0, self.config.round_timeout))
            if self._round_no == my_round:
                status = wire.Status.STOP if self.stopped_early else wire.Status.ABORTED
                return status, self.clock
            if op == wire.Op.COMMIT_PULL:
                self._pull(session, outbox)
            return wire.Status.OK, self.clock

    def _maybe_end_round(self) -> None:
        """Apply the round once every partition still training has committed (lock held)."""
        if not self.algorithm.synchronous or not self._arrived:
            return
        if not self._active <= self._arrived:
            return
        self.algorithm.round_end(self.center, self._round_acc)
        self._round_acc = self.algorithm.round_begin(self.center)
        self._arrived.clear()
        self._round_no += 1
        self._round_started = time.monotonic()
        self._round.notify_all()

    def _leave(self, session: Session) -> None:
        with self._round:
            self._active.discard(session.worker)
            self.history.add_finished(session.worker)
            self._maybe_end_round()

    def _lost(self, session: Session) -> None:
        """A worker's connection ended without bye (killed task, crash, network).

        Asynchronous training goes on (a retried task resumes from the partition's cursor).
        A synchronous round cannot complete without the worker, so the run fails at once with
        an error that names it rather than waiting for it.
        """
        if self._stopping.is_set() or not self.algorithm.synchronous:
            return
        self.abort(f"worker {session.worker} (attempt {session.attempt}) lost its connection "
                   f"in the middle of synchronous training; the run stops rather than wait")
