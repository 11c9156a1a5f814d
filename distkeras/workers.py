"""What runs inside a Spark task: a model replica trained on one partition, exchanging with
the parameter server every ``communication_window`` steps through the algorithm's worker half.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import protocol as wire
from .algorithms import Algorithm
from .backends import cpu_threads, current_backend, limit_threads, use_backend
from .data import ColumnPlan
from .devices import Placement, place
from .errors import StopTraining, WorkerError  # noqa: F401 - also importable from here
from .memory import WORKER_MEMORY, PeakRSS, parse_size, rss
from .precision import policy_of
from .rendezvous import EXCHANGE, batch_schedule
from .replica import BatchTrainer, replica_trainer
from .rows import Order, RowSource, collect
from .shared_memory import Segment
from .spill import SpillDir, run_id

if TYPE_CHECKING:  # the model code (Keras, TensorFlow) is imported only where it runs
    from .models import ModelBlueprint


class ServerLink:
    """A worker's connection to the parameter server: handshake, then framed requests."""

    def __init__(self, address: tuple[str, int], token: bytes, layout: wire.Layout,
                 worker: int, attempt: int = 0, timeout: float = 3600.0,
                 shared_memory: bool = True):
        self.layout = layout
        self.worker = worker
        try:
            self._sock = wire.connect(address, timeout=timeout)
        except ConnectionError as error:
            raise ConnectionError(
                f"worker {worker}: {error}. Executors connect to the address the driver "
                f"advertises: set spark.driver.host (or the trainer's server_host) to an "
                f"address of the driver that every executor can reach, and let them through "
                f"any firewall to that port (ServerConfig(port=...) fixes it)") from None
        self._io = threading.Lock()  # one request at a time (the keep-alive thread too)
        self._reply = bytearray(wire.REPLY.size)
        self._inbox = np.empty(layout.num_params, dtype=wire.DTYPE)
        flags = wire.Flag.SHARED if shared_memory else 0
        self._sock.sendall(wire.HELLO.pack(wire.MAGIC, wire.VERSION, flags, token,
                                           layout.digest(), worker, attempt, os.getpid(),
                                           layout.num_params))
        magic, status, self.clock, self.cursor, self.heartbeat, path = wire.recv_struct(
            self._sock, wire.WELCOME)
        if magic != wire.MAGIC:
            raise WorkerError(f"{address} is not a distkeras parameter server")
        if status != wire.Status.OK:
            self.close()
            raise WorkerError(f"worker {worker}: {wire.Status.MESSAGES.get(status, status)}")
        path = path.rstrip(b"\0").decode("ascii", "replace")
        # same host as the server: payloads go through shared memory, headers by socket
        self.segment = Segment.attach(path, layout.num_params) if path else None
        self._last_sent = time.monotonic()
        # metadata of the next request, set by the worker loop before each exchange
        self.samples, self.last_batch, self.loss, self.epoch = 0, -1, 0.0, 0

    @property
    def transport(self) -> str:
        """How payloads travel: "shm" (shared memory, same host) or "tcp" (the socket)."""
        return "shm" if self.segment is not None else "tcp"

    def _send(self, op: int, payload: np.ndarray | bytes | None, flags: int = 0,
              nbytes: int | None = None) -> None:
        """One request: the header of the next request's metadata, then ``payload`` when it
        travels on the socket (``nbytes``: its size when it is in shared memory instead)."""
        if nbytes is None:
            nbytes = 0 if payload is None else memoryview(payload).nbytes
        header = wire.request(op, flags=flags, epoch=self.epoch, samples=self.samples,
                              cursor=self.last_batch, clock=self.clock, loss=self.loss,
                              nbytes=nbytes)
        if isinstance(payload, bytes):
            self._sock.sendall(header + payload)
        else:
            wire.send_frame(self._sock, header, payload)
        self._last_sent = time.monotonic()

    def _request(self, op: int, payload: np.ndarray | None = None) -> np.ndarray | None:
        with self._io:
            return self._exchange_frame(op, payload)

    def _exchange_frame(self, op: int, payload: np.ndarray | None) -> np.ndarray | None:
        shared = self.segment is not None
        nbytes = self.layout.nbytes if payload is not None else 0
        if payload is not None and shared:
            np.copyto(self.segment.to_server, payload)
            payload = None
        elif payload is not None:
            payload = np.ascontiguousarray(payload, dtype=wire.DTYPE)
        self._send(op, payload, wire.Flag.SHARED if shared else 0, nbytes)
        wire.recv_exact(self._sock, memoryview(self._reply))
        status, flags, self.clock, size = wire.REPLY.unpack(self._reply)
        if status == wire.Status.STOP:
            raise StopTraining()
        if status != wire.Status.OK:
            raise WorkerError(f"worker {self.worker}: "
                              f"{wire.Status.MESSAGES.get(status, f'status {status}')}")
        if size:
            if size != self.layout.nbytes:
                raise wire.ProtocolError(f"server sent {size} bytes, expected "
                                         f"{self.layout.nbytes}")
            if flags & wire.Flag.SHARED and shared:
                return self.segment.to_worker
            wire.recv_exact(self._sock, memoryview(self._inbox))
            return self._inbox
        return None

    def pull(self) -> np.ndarray:
        return self._request(wire.Op.PULL)

    def commit(self, update: np.ndarray) -> None:
        self._request(wire.Op.COMMIT, update)

    def commit_and_pull(self, update: np.ndarray) -> np.ndarray:
        return self._request(wire.Op.COMMIT_PULL, update)

    def metrics(self, loss: float, samples: int) -> None:
        self.loss, self.samples = loss, samples
        self._request(wire.Op.METRICS)

    def heartbeat_if_due(self) -> None:
        """Tell the server this worker is training when it has been quiet for a while (the
        interval the server gave in its handshake), so that a long window, or a trainer that
        exchanges once per epoch, is never taken for a hung worker. Also learns early that
        the run was stopped or aborted."""
        if self.heartbeat and time.monotonic() - self._last_sent >= self.heartbeat:
            self._request(wire.Op.HEARTBEAT)

    def fail(self, reason: str) -> None:
        """Tell the server this worker cannot go on and a retry would fail the same way:
        the server stops the run at once (the Spark job is cancelled, not retried)."""
        try:
            with self._io:
                self._send(wire.Op.FAIL, reason.encode("utf-8")[:wire.MAX_REASON])
                wire.recv_exact(self._sock, memoryview(self._reply))
        except OSError:
            pass  # the task's own error still reaches the driver

    @contextlib.contextmanager
    def keepalive(self):
        """Heartbeats from a thread while the worker cannot send any from its batch loop
        (reading its partition, importing the backend, building and compiling the model):
        the server hears from it within seconds of the task's start. An answer that ends
        the run (aborted, stopped, fenced) is raised when the block ends."""
        stop, errors = threading.Event(), []

        def beat() -> None:
            while not stop.wait(min(self.heartbeat, 1.0)):
                try:
                    self.heartbeat_if_due()
                except (StopTraining, WorkerError, OSError) as error:
                    errors.append(error)
                    return

        thread = threading.Thread(target=beat, name="distkeras-keepalive", daemon=True)
        if self.heartbeat:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread.is_alive():
                thread.join()
        if errors:
            raise errors[0]

    def bye(self) -> None:
        self._request(wire.Op.BYE)
        self.close()

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass
        if self.__dict__.get("segment") is not None:
            self.segment.close()
            self.segment = None


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a Spark task needs; broadcast once per training run."""

    blueprint: ModelBlueprint
    algorithm: Algorithm
    plan: ColumnPlan
    layout: wire.Layout
    address: tuple[str, int]
    token: bytes
    batch_size: int
    num_epoch: int
    window: float  # local steps between exchanges (math.inf: only at the end)
    exchange_each_epoch: bool  # also exchange at the end of every epoch (model averaging)
    return_weights: bool  # send the replica's final weights back with the task result
    shuffle: bool
    seed: int
    backend: str = "tensorflow"  # the driver's Keras backend, applied before Keras loads
    dtype_policy: str | None = None  # e.g. "mixed_bfloat16": the replicas' compute precision
    # bytes of rows a worker holds; a larger partition is spilled to local disk (rows.py)
    worker_memory: int = parse_size(WORKER_MEMORY)
    cpu_threads: int | None = None  # the backend's CPU threads (None: its default)


def start_task(backend: str, partition: int | None = None,
               threads: int | None = None) -> Placement:
    """What every distkeras task (training or prediction) does first, before anything in it
    may import Keras or initialise CUDA: the driver's Keras backend and its CPU threads
    (see :func:`distkeras.spark.worker_threads`), then the task's GPU."""
    use_backend(backend)
    limit_threads(backend, threads)
    return place(partition)


def batch_order(spec: WorkerSpec, partition: int, epoch: int, rows: int) -> np.ndarray:
    """Deterministic per (seed, partition, epoch): a retried task sees the same batches
    (the order of a partition held in memory; see :class:`distkeras.rows.Order`)."""
    return Order(spec.seed, partition, spec.shuffle).rows(epoch, rows)


def partition_rows(spec: WorkerSpec, partition: int, chunks: Iterator[list[np.ndarray]],
                   spill: SpillDir) -> RowSource:
    """The partition's rows (``chunks`` as they arrive) in memory, or spilled to ``spill``
    when they exceed ``spec.worker_memory``."""
    return collect(spec.plan, chunks, spec.worker_memory, spill,
                   Order(spec.seed, partition, spec.shuffle))


def train_partition(spec: WorkerSpec, partition: int,
                    load: Callable[[], RowSource],
                    attempt: int = 0, started: float | None = None,
                    placement: Placement | None = None) -> dict[str, Any]:
    """Train a replica on one partition; return what this worker did.

    The worker says hello to the parameter server first, then builds the model and reads its
    partition (``load``: a :class:`~distkeras.rows.RowSource`, in memory or spilled) while a
    keep-alive thread speaks for it, so a task that cannot reach the server fails at once
    and a slow start is not taken for a hang. The model comes first so that the resident
    memory measured before the rows arrive (``base_rss``) holds the backend and the model,
    and ``peak_rss`` minus it is what the rows and training added. ``placement``:
    the task's device (see devices.py), made here when the caller did not make it before
    Keras could initialise."""
    started = time.time() if started is None else started
    memory = PeakRSS().start()  # this task's peak, not the reused Python worker's
    placement = placement if placement is not None else place(partition)
    device = contextlib.ExitStack()  # the device scope, open until the replica is done
    link = ServerLink(spec.address, spec.token, spec.layout, partition, attempt)
    resume_after, transport = link.cursor, link.transport
    window = {"steps": 0, "loss": 0.0, "samples": 0}
    done = {"commits": 0, "samples": 0}
    first_batch_at, model, trainer, num_rows = None, None, None, 0
    model_built_at = rows_read_at = None
    source: RowSource | None = None
    base_rss = peak_rss = None

    def commit(step) -> None:
        _exchange(spec, trainer, link, w, w0, window["steps"], window["loss"],
                  window["samples"], step.index, f"epoch {step.epoch}, batch {step.batch}")
        done["commits"] += 1
        done["samples"] += window["samples"]
        window.update(steps=0, loss=0.0, samples=0)

    try:
        with link.keepalive():
            device.enter_context(placement.scope())
            model = spec.blueprint.build(
                spec.algorithm.worker_optimizer(spec.blueprint.optimizer), spec.dtype_policy)
            trainer = replica_trainer(model)
            model_built_at, base_rss = time.time(), rss()
            source = load()
            rows_read_at = time.time()
        num_rows = source.rows
        w0 = link.pull().copy()
        w = w0.copy()
        model.set_weights(spec.layout.unflatten(w))
        steps = batch_schedule(num_rows, spec.batch_size, spec.num_epoch, spec.window,
                               spec.exchange_each_epoch,
                               # positions in the epoch's order: the source maps them to rows
                               lambda epoch: range(num_rows), resume_after)
        for step in steps:
            link.epoch = step.epoch
            if step.kind == EXCHANGE:
                commit(step)
                continue
            # the first step compiles, which may take long: the keep-alive speaks meanwhile
            with link.keepalive() if first_batch_at is None else contextlib.nullcontext():
                loss = trainer.train(*source.take(step.epoch, step.rows))
            first_batch_at = first_batch_at or time.time()
            if not math.isfinite(loss):
                _fail(link, f"worker {partition}: training loss is {loss} at epoch "
                            f"{step.epoch}, batch {step.batch}; lower the learning rate or "
                            f"check the data for NaN/inf")
            link.heartbeat_if_due()
            window["steps"] += 1
            window["loss"] += loss
            window["samples"] += len(step.rows)
        link.bye()
    except StopTraining:
        pass  # the driver ended training early (early stopping): leave cleanly
    finally:
        if source is not None:
            source.close()
        device.close()
        link.close()
        peak_rss = memory.stop()
    if trainer is not None:
        trainer.sync()  # the model holds what it trained (the JAX state; see replica.py)
    commits, trained = done["commits"], done["samples"]
    return {"worker": partition, "attempt": attempt, "rows": num_rows, "commits": commits,
            "weights": spec.layout.flatten(model.get_weights())
            if spec.return_weights and model is not None else None,
            "samples": trained, "resumed_after": resume_after, "started": started,
            "model_built": model_built_at, "rows_read": rows_read_at,
            "first_batch": first_batch_at, "finished": time.time(), "host": socket.gethostname(),
            "pid": os.getpid(), "python": sys.executable, "transport": transport,
            "backend": current_backend(), "cpu_threads": cpu_threads(spec.backend),
            "gpu_addresses": list(placement.gpu_addresses),
            "devices": placement.devices(model) if model is not None else [],
            "dtype_policy": policy_of(model) if model is not None else None,
            "peak_rss": peak_rss, "base_rss": base_rss,
            "spilled": source.spilled if source is not None else 0}


def _fail(link: ServerLink, message: str) -> None:
    """A failure that a retry would repeat: stop the whole run, then raise it here."""
    link.fail(message)
    raise WorkerError(message)


def _exchange(spec: WorkerSpec, trainer: BatchTrainer, link: ServerLink, w: np.ndarray,
              w0: np.ndarray, steps: int, loss_sum: float, samples: int, last_batch: int,
              where: str) -> None:
    trainer.sync()
    model = trainer.model
    spec.layout.flatten(model.get_weights(), out=w)
    if not wire.all_finite(w):
        _fail(link, f"worker {link.worker}: the model's weights became NaN/inf by {where} "
                    f"(mean training loss of the window {loss_sum / steps}); lower the learning "
                    f"rate or check the data for NaN/inf")
    link.samples, link.last_batch, link.loss = samples, last_batch, loss_sum / steps
    spec.algorithm.exchange(link, w, w0, steps)
    model.set_weights(spec.layout.unflatten(w))


def _attempt() -> tuple[int, int]:
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        return 0, 0
    return context.partitionId(), context.attemptNumber()


#: one row per worker, what a Spark task hands back to the driver: (name, Spark SQL type)
REPORT_FIELDS = (("worker", "int"), ("attempt", "int"), ("rows", "bigint"),
                 ("commits", "bigint"), ("samples", "bigint"), ("resumed_after", "bigint"),
                 ("started", "double"), ("model_built", "double"), ("rows_read", "double"),
                 ("first_batch", "double"), ("finished", "double"),
                 ("host", "string"), ("pid", "bigint"), ("python", "string"),
                 ("transport", "string"),
                 ("backend", "string"), ("cpu_threads", "int"),
                 ("gpu_addresses", "array<string>"),
                 ("devices", "array<string>"), ("dtype_policy", "string"),
                 # resident bytes: the task's peak, and before its rows arrived (model built)
                 ("peak_rss", "bigint"), ("base_rss", "bigint"),
                 ("spilled", "bigint"),  # bytes of its spill file (0: rows held in memory)
                 ("weights", "binary"))
REPORT_SCHEMA = ", ".join(f"{name} {kind}" for name, kind in REPORT_FIELDS)


def _arrow_report_schema():
    import pyarrow as pa

    kinds = {"int": pa.int32(), "bigint": pa.int64(), "double": pa.float64(),
             "string": pa.string(), "binary": pa.binary(),
             "array<string>": pa.list_(pa.string())}
    return pa.schema([(name, kinds[kind]) for name, kind in REPORT_FIELDS])


def run_arrow_task(spec: WorkerSpec, batches: Iterator,
                   placement: Placement | None = None) -> Iterator:
    """Entry point for ``DataFrame.mapInArrow``: record batches in, one report batch out.
    ``placement``: the task's device, made before anything could initialise Keras."""
    import pyarrow as pa

    started = time.time()
    partition, attempt = _attempt()
    with SpillDir(run_id(spec.token), partition) as spill:
        report = train_partition(
            spec, partition,
            lambda: partition_rows(spec, partition, spec.plan.arrow_chunks(batches), spill),
            attempt, started, placement)
    weights = report.pop("weights")
    report["weights"] = None if weights is None else weights.tobytes()
    yield pa.RecordBatch.from_pylist([report], schema=_arrow_report_schema())


def run_rdd_task(spec: WorkerSpec, partition: int, rows: Iterator,
                 placement: Placement | None = None) -> Iterator[dict]:
    """Entry point for ``RDD.mapPartitionsWithIndex`` over ``(features, label)`` pairs."""
    started = time.time()
    _, attempt = _attempt()
    with SpillDir(run_id(spec.token), partition) as spill:
        report = train_partition(
            spec, partition,
            lambda: partition_rows(spec, partition, spec.plan.row_chunks(rows), spill),
            attempt, started, placement)
    yield report
