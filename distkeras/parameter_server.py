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
from .errors import CheckpointError, TrainingAborted  # noqa: F401 - also importable from here
from .history import History
from .rendezvous import Rendezvous
from .shared_memory import Segment, is_local_address

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    """Settings of the parameter server: timeouts, connection limits, checkpoints.

    Pass one to a trainer as `server_config=ServerConfig(...)`; the defaults suit most
    runs. Times are in seconds.

    Attributes:
        handshake_timeout: A new connection must complete its handshake within this.
            Defaults to `10.0`.
        frame_timeout: A frame, once started, must be complete within this. Defaults to
            `120.0`.
        idle_timeout: The longest silence between two frames of a worker; a longer one
            ends that connection. Defaults to `3600.0`.
        round_timeout: How long the workers that arrived at a synchronous round wait
            without a sign of life (a frame or a heartbeat) from the missing ones before
            the run is aborted. Defaults to `600.0`.
        max_connections: The most connections at once; more are refused. Defaults to
            `None`: 4 per worker + 8.
        shared_memory: Whether workers on the driver's host may pass weights through
            shared memory instead of the socket. Defaults to `True`.
        checkpoint_path: A file to checkpoint the centre variable, clock, cursors and
            seed to (after every epoch and when the server stops). Defaults to `None`
            (no checkpoints).
        checkpoint_every: With `checkpoint_path`, also checkpoint every this many
            commits (`0`: off). Defaults to `0`.
        checkpoint_seconds: With `checkpoint_path`, also checkpoint every this many
            seconds (`0`: off). Defaults to `0.0`.
        stall_timeout: A connected worker that sends nothing (heartbeats included) for
            this long while the server is not working on its request stops the run with
            `TrainingAborted`; `0` disables it. Defaults to `1800.0`.
        heartbeat_interval: A training worker sends a heartbeat after this long without
            sending anything. Defaults to `None`: a fifth of the shortest of
            `stall_timeout`, `idle_timeout` and `round_timeout` (those set).
        port: The TCP port the server listens on, for a firewall that lets executors
            reach only known ports of the driver. Defaults to `0`: a free port.
    """

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
    # a training worker sends a heartbeat when it has sent nothing for this long; None: a
    # fifth of the shortest of stall_timeout, idle_timeout and round_timeout
    heartbeat_interval: float | None = None
    port: int = 0  # the listening port (0: any free one)

    def heartbeat(self) -> float:
        """Seconds of silence after which a training worker sends a heartbeat (0: never)."""
        if self.heartbeat_interval is not None:
            return max(float(self.heartbeat_interval), 0.0)
        limits = [t for t in (self.stall_timeout, self.idle_timeout, self.round_timeout) if t]
        return min(limits) / 5.0 if limits else 0.0


@dataclass(frozen=True)
class EpochMark:
    """The end of one epoch, taken at the commit (or round) that brought the samples trained
    to (epoch + 1) x rows: a copy of the centre variable there, however late the driver
    reads it."""

    epoch: int  # 0-based
    center: np.ndarray
    clock: int
    samples: int  # samples trained when the mark was taken
    time: float  # seconds since the server started (the history's clock)
    records: int  # history records up to and including the commit that ended the epoch


class ParameterServer:
    """Serve ``center`` (flat float32, updated in place) to ``num_workers`` Spark partitions."""

    def __init__(self, center: np.ndarray, layout: wire.Layout, algorithm: Algorithm,
                 num_workers: int, token: bytes, bind_host: str = "127.0.0.1", port: int = 0,
                 config: ServerConfig | None = None, cursors: dict[int, int] | None = None,
                 clock: int = 0, seed: int = 0, on_abort=None, rows: int | None = None,
                 num_epochs: int = 0, samples: int = 0):
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
        # epochs: with ``rows`` known, every commit that brings the samples trained to a
        # multiple of rows leaves an EpochMark for the driver (``samples``: trained before a
        # resumed run started)
        self.rows = int(rows) if rows else 0
        self.num_epochs = int(num_epochs)
        self.samples = int(samples)
        self._marks: list[EpochMark] = []
        self._marked = self.samples // self.rows if self.rows else 0
        self._on_abort = on_abort  # called once, from a server thread, when the run fails
        self._checkpointed = (self.clock, time.monotonic())
        self._checkpoint_lock = threading.Lock()
        self._token = token
        self._digest = layout.digest()
        self._bind = (bind_host, int(port or self.config.port))
        self._lock = threading.Lock()  # centre variable and bookkeeping
        self._round = threading.Condition(self._lock)
        # Lock-free (Hogwild) applies are counted so that a checkpoint, a snapshot or a
        # partition's takeover can wait for the ones in flight and hold new ones back.
        self._quiet = threading.Condition(self._lock)
        self._applying = 0
        self._pauses = 0
        self._apply_lock = self._lock if algorithm.locked else contextlib.nullcontext()
        self._connections: set[socket.socket] = set()
        self.sessions: dict[socket.socket, Session] = {}  # live, handshaken workers
        self._owners: dict[int, Session] = {}  # partition -> the attempt that owns it
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self.error: str | None = None
        self.rejected_connections = 0
        # synchronous rounds: who meets, and what the round has summed so far
        self._rendezvous: Rendezvous[tuple] = Rendezvous(range(self.num_workers))
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

    @contextlib.contextmanager
    def _paused(self):
        """(Lock held.) Wait for the lock-free applies in flight and hold new ones back: the
        centre inside is one consistent state, for Hogwild as for the locked algorithms."""
        self._pauses += 1
        try:
            while self._applying:
                self._quiet.wait()
            yield
        finally:
            self._pauses -= 1
            self._quiet.notify_all()

    @contextlib.contextmanager
    def _quiesced(self):
        """Take the lock, then :meth:`_paused`."""
        with self._quiet, self._paused():
            yield

    def checkpoint(self, path: str | None = None) -> str | None:
        """Save the centre variable, clock, cursors and seed atomically; returns the path.

        Raises :class:`CheckpointError` (naming the path and the OS error) when it cannot be
        written."""
        path = path or self.config.checkpoint_path
        if not path:
            return None
        with self._checkpoint_lock:
            with self._quiesced():
                center, clock, cursors = self.center.copy(), self.clock, dict(self.cursors)
                samples = self.samples
            try:
                checkpoint.save(path, center, clock, cursors, self.seed, self._digest, samples)
            except OSError as error:
                raise CheckpointError(f"cannot write the checkpoint {path}: "
                                      f"{type(error).__name__}: {error}") from error
            self._checkpointed = (clock, time.monotonic())
        return path

    def checkpoint_or_abort(self) -> str | None:
        """:meth:`checkpoint` to the configured path; a failure aborts the run (once) with
        the error, instead of looking like a lost connection or being retried."""
        try:
            return self.checkpoint()
        except CheckpointError as error:
            self.abort(str(error))
            return None

    def _maybe_checkpoint(self) -> None:
        config = self.config
        if not config.checkpoint_path or self._checkpoint_lock.locked() or self.error:
            return
        clock, at = self._checkpointed
        due = (config.checkpoint_every and self.clock - clock >= config.checkpoint_every) or \
            (config.checkpoint_seconds and time.monotonic() - at >= config.checkpoint_seconds)
        if due:
            self.checkpoint_or_abort()

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
            self.checkpoint_or_abort()

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
        """A consistent copy of the centre variable (no apply half done, Hogwild included)."""
        with self._quiesced():
            return self.center.copy()

    def stop_early(self, reason: str) -> None:
        """End training gracefully: every worker's next request is answered STOP, after which
        it leaves without error (the Spark job completes)."""
        with self._lock:
            if self.history.stopped_early is None:
                self.history.stopped_early = {"reason": reason,
                                              "records": len(self.history.records),
                                              "time": self.history.elapsed()}
            self._round.notify_all()

    @property
    def stopped_early(self) -> str | None:
        """Why the driver ended training early (``history.stopped_early``), or None."""
        stopped = self.history.stopped_early
        return stopped["reason"] if stopped is not None else None

    def _watch(self) -> None:
        """Stop the run when a connected worker has been silent for ``stall_timeout``."""
        limit = self.config.stall_timeout
        if not limit or self.error is not None:
            return
        now = time.monotonic()
        with self._lock:
            silent = [s for s in self.sessions.values() if not s.busy and not s.fenced
                      and now - s.last_seen > limit]
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
            session, segment = self._handshake(conn, peer)
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
            if session is not None and not clean and not session.fenced:
                self._lost(session)
            self._threads.discard(threading.current_thread())

    def _handshake(self, conn: socket.socket, peer) -> tuple[Session, Segment | None]:
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
        session = cursor = None
        if status == wire.Status.OK:
            session = Session(worker=int(worker), attempt=int(attempt), pid=int(pid),
                              last_seen=time.monotonic())
            status, cursor = self._admit(conn, session)
        segment = None
        # a segment only for a worker on this host: another host could not map it
        if status == wire.Status.OK and flags & wire.Flag.SHARED and self.config.shared_memory \
                and is_local_address(peer[0]):
            segment = Segment.create(self.layout.num_params)
        if status == wire.Status.OK:
            path = segment.path.encode() if segment is not None else b""
            welcome = wire.WELCOME.pack(wire.MAGIC, status, session.pulled_clock, cursor,
                                        self.config.heartbeat(), path)
        else:  # a peer that failed the handshake learns nothing about the run
            welcome = wire.WELCOME.pack(wire.MAGIC, status, 0, 0, 0.0, b"")
        try:
            conn.sendall(welcome)
        except OSError:
            if segment is not None:
                segment.close()
            raise
        if status != wire.Status.OK:
            raise wire.ProtocolError(wire.Status.MESSAGES[status])
        self.history.add_connection(session.worker, session.attempt, str(peer[0]),
                                    "shm" if segment is not None else "tcp")
        return session, segment

    def _admit(self, conn: socket.socket, session: Session) -> tuple[int, int]:
        """Make ``session`` the owner of its partition; returns (status, resume cursor).

        The newest attempt of a partition owns it: an older connection still alive (a
        speculative copy, a zombie beside its retry) is fenced, and its later requests are
        refused. A handshake from an attempt older than the owner is refused. Lock-free
        applies in flight finish first, so the cursor handed over is final.
        """
        takeover = None
        with self._quiesced():
            if self.error is not None:
                return wire.Status.ABORTED, -1
            owner = self._owners.get(session.worker)
            if owner is not None and session.attempt < owner.attempt:
                return wire.Status.FENCED, -1
            if owner is not None and any(s is owner for s in self.sessions.values()):
                owner.fenced = True
                takeover = owner
            self._owners[session.worker] = session
            self.sessions[conn] = session
            session.pulled_clock = self.clock
            cursor = self.cursors.get(session.worker, -1)
        if takeover is not None:
            log.warning("distkeras: attempt %d of partition %d takes over from attempt %d, "
                        "which is fenced", session.attempt, session.worker, takeover.attempt)
            if self.algorithm.synchronous:
                self.abort(f"worker {session.worker}: attempt {session.attempt} connected "
                           f"while attempt {takeover.attempt} was still training; a "
                           f"synchronous run cannot hand a partition over mid-round")
                return wire.Status.ABORTED, -1
        return wire.Status.OK, cursor

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
            op, flags, epoch, samples, cursor, _, loss, nbytes = wire.REQUEST.unpack(header)
            if op not in wire.Op.ALL:
                raise wire.ProtocolError(f"unknown op code {op}")
            if op == wire.Op.FAIL:
                if not 0 < nbytes <= wire.MAX_REASON:
                    raise wire.ProtocolError(f"FAIL reason of {nbytes} bytes")
                reason = bytearray(nbytes)
                wire.recv_exact(conn, memoryview(reason), deadline)
                status = wire.Status.FENCED if session.fenced else wire.Status.ABORTED
                if not session.fenced:
                    self.abort(f"worker {session.worker} (attempt {session.attempt}) failed and "
                               f"a retry would fail the same way: "
                               f"{reason.decode('utf-8', 'replace')}")
                conn.sendall(wire.REPLY.pack(status, 0, 0, 0))
                return True
            if nbytes != (expected if op in wire.Op.WITH_PAYLOAD else 0):
                raise wire.ProtocolError(f"op {op}: payload of {nbytes} bytes, expected "
                                         f"{expected if op in wire.Op.WITH_PAYLOAD else 0}")
            if op in wire.Op.WITH_PAYLOAD and not session.pulled:
                raise wire.ProtocolError(f"worker {session.worker} committed before its first "
                                         f"pull")
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
                if not session.fenced:
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
    def _refusal(self, session: Session) -> int:
        """The status that ends this worker's requests, or OK (lock held or not)."""
        if self.error is not None:
            return wire.Status.ABORTED
        if session.fenced:
            return wire.Status.FENCED
        if self.stopped_early is not None:
            return wire.Status.STOP
        return wire.Status.OK

    def _handle(self, op: int, session: Session, update: np.ndarray, outbox: np.ndarray,
                samples: int, cursor: int, loss: float) -> tuple[int, int]:
        refused = self._refusal(session)
        if refused != wire.Status.OK:
            return refused, self.clock
        if op == wire.Op.HEARTBEAT:
            return wire.Status.OK, self.clock
        if op == wire.Op.METRICS:
            with self._lock:
                self.history.add_metrics(session.worker, loss, samples)
                self._count(samples)
            return wire.Status.OK, self.clock
        if op == wire.Op.PULL:
            with self._apply_lock:
                self._pull(session, outbox)
            return wire.Status.OK, self.clock
        if self.algorithm.synchronous:
            return self._commit_round(op, session, update, outbox, samples, cursor, loss)
        if self.algorithm.locked:
            with self._lock:
                refused = self._refusal(session)  # a takeover may have fenced it meanwhile
                if refused != wire.Status.OK:
                    return refused, self.clock
                clock = self.clock
                self.clock += 1
                self.algorithm.apply(self.center, update, session, clock)
                self._bookkeep(session, clock, samples, cursor, loss)
                if op == wire.Op.COMMIT_PULL:
                    self._pull(session, outbox)
            return wire.Status.OK, self.clock
        # Hogwild: the apply runs without the lock; the lock only orders the clock and the
        # bookkeeping, and counts applies in flight for _quiesced().
        with self._quiet:
            while self._pauses:
                self._quiet.wait()
            refused = self._refusal(session)
            if refused != wire.Status.OK:
                return refused, self.clock
            clock = self.clock
            self.clock += 1
            self._applying += 1
        applied = False
        try:
            self.algorithm.apply(self.center, update, session, clock)
            applied = True
        finally:
            with self._quiet:
                self._applying -= 1  # first: an epoch mark below waits for the others only
                if applied:
                    self._bookkeep(session, clock, samples, cursor, loss)
                if self._pauses:
                    self._quiet.notify_all()
        if op == wire.Op.COMMIT_PULL:
            self._pull(session, outbox)
        return wire.Status.OK, self.clock

    def _pull(self, session: Session, outbox: np.ndarray) -> None:
        np.copyto(outbox, self.center)
        session.pulled_clock = self.clock
        session.pulled = True
        self.algorithm.on_pull(self.center, session)

    def _bookkeep(self, session: Session, clock: int, samples: int, cursor: int,
                  loss: float, staleness: int | None = None, at: float | None = None) -> None:
        """Record a commit whose update is in the centre (lock held)."""
        if cursor > self.cursors.get(session.worker, -1):
            self.cursors[session.worker] = cursor
        if staleness is None:
            staleness = clock - session.pulled_clock
        self.history.add_commit(session.worker, clock + 1, staleness, loss, samples, at=at)
        self._count(samples)

    def _count(self, samples: int) -> None:
        """Count trained samples; mark every epoch they complete (lock held). Lock-free
        (Hogwild) applies in flight finish first and new ones wait, so the copy is never
        torn; the caller's own apply is no longer counted as in flight."""
        self.samples += int(samples)
        if not self._epoch_due():
            return
        with self._paused():
            # checked again after the wait: another thread may have marked it meanwhile
            while self._epoch_due():
                self._marks.append(EpochMark(self._marked, self.center.copy(), self.clock,
                                             self.samples, self.history.elapsed(),
                                             len(self.history.records)))
                self._marked += 1

    def _epoch_due(self) -> bool:
        return bool(self.rows) and self._marked < self.num_epochs and \
            self.samples >= (self._marked + 1) * self.rows

    def take_epoch_marks(self) -> list[EpochMark]:
        """The epoch marks not taken yet, oldest first (the driver frees them as it goes)."""
        with self._lock:
            marks, self._marks = self._marks, []
        return marks

    def _commit_round(self, op, session, update, outbox, samples, cursor, loss):
        timed_out = None
        with self._round:
            refused = self._refusal(session)
            if refused != wire.Status.OK:
                return refused, self.clock
            rendezvous = self._rendezvous
            if session.worker not in rendezvous.active:
                return wire.Status.ABORTED, self.clock
            if not rendezvous.open:
                self._round_started = time.monotonic()  # the wait starts with the first
            self.algorithm.round_add(self._round_acc, update, samples)
            my_round = rendezvous.round_no
            # clock, cursor and history move when the round is applied, never before
            self._end_round(rendezvous.arrive(
                session.worker, (session, samples, cursor, loss, self.history.elapsed())))
            while rendezvous.round_no == my_round and self.error is None \
                    and self.stopped_early is None and not self._stopping.is_set():
                waited = time.monotonic() - self._waiting_since()
                if waited > self.config.round_timeout:
                    missing = sorted(rendezvous.missing)
                    timed_out = (f"synchronous round {my_round}: the workers that arrived "
                                 f"waited {waited:.0f}s without a sign of life from "
                                 f"worker(s) {missing}; round_timeout="
                                 f"{self.config.round_timeout}s")
                    break
                self._round.wait(timeout=min(1.0, self.config.round_timeout))
            ended = rendezvous.round_no != my_round
            if ended and op == wire.Op.COMMIT_PULL:
                self._pull(session, outbox)
            clock = self.clock
        if timed_out is not None:
            self.abort(timed_out)
        if not ended:
            status = wire.Status.STOP if self.stopped_early and not self.error \
                else wire.Status.ABORTED
            return status, clock
        return wire.Status.OK, clock

    def _waiting_since(self) -> float:
        """Since when the arrived workers of this round have had no news of the missing ones:
        the round's first arrival, or a missing worker's latest frame (heartbeats count), so
        a worker that is still training its window is waited for (lock held)."""
        missing = self._rendezvous.missing
        latest = [s.last_seen for s in self.sessions.values()
                  if s.worker in missing and not s.fenced]
        return max([self._round_started, *latest])

    def _end_round(self, members: list[tuple] | None) -> None:
        """Apply a round that has just completed (lock held); ``members``: its commits, in
        arrival order (None: the round goes on)."""
        if members is None:
            return
        self.algorithm.round_end(self.center, self._round_acc)
        self._round_acc = self.algorithm.round_begin(self.center)
        for session, samples, cursor, loss, at in members:
            clock = self.clock
            self.clock += 1
            # every member computed its update from the previous round's centre
            self._bookkeep(session, clock, samples, cursor, loss, staleness=0, at=at)
        self._round.notify_all()

    def _leave(self, session: Session) -> None:
        with self._round:
            self.history.add_finished(session.worker)
            if self.algorithm.synchronous:
                self._end_round(self._rendezvous.leave(session.worker))

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
