"""Simulated clusters: the real update rules with n workers on a virtual clock, in one process.

Why: claims about how an algorithm behaves on 64 or 256 machines need those machines, or a
model of them that is faithful where it matters. What decides accuracy at scale is *which
centre variable each worker's update is applied to*, i.e. the order of the commits and their
staleness. This module reproduces exactly that, and nothing else is approximated:

* the algorithm objects of :mod:`distkeras.algorithms` are used unchanged: the worker half
  ``exchange(link, w, w0, steps)`` is called with a link whose ``pull`` / ``commit`` /
  ``commit_and_pull`` run the server half (``on_pull``, ``apply``, ``round_*``) on a simulated
  centre variable, with the clock, ``Session.pulled_clock`` and the staleness
  (``clock - pulled_clock``) kept as :mod:`distkeras.parameter_server` keeps them;
* every worker trains the same Keras model (built from the same :func:`~distkeras.models.
  blueprint`, with the algorithm's worker optimizer) with its own weights *and its own
  optimizer state* (Adam's moments and step count are saved and restored per worker), on its
  own shard, in the batch order of :func:`distkeras.workers.batch_order`, with the worker
  loop's rules: an exchange every ``window`` local steps, at the end of every epoch for model
  averaging, the last partial window committed, then goodbye (which leaves the synchronous
  round set);
* time is virtual: each worker has a time per local step drawn from a distribution
  (:class:`Speeds`: spread between machines, per-step jitter, a fraction of stragglers k times
  slower, exchange latency, staggered starts), and every exchange happens at the worker's
  virtual completion time, in time order. Synchronous rounds wait for their slowest member.

What is not modelled: wall-clock cost (network bandwidth, the server's own speed, Spark
scheduling) and Hogwild's unlocked, interleaved writes (every commit is applied atomically).
The shards are equal-sized random splits of the rows (:func:`shards`) unless
:func:`spark_partitions` gives the very rows Spark's ``repartition`` deals to each real
worker. Given a seed, a simulation is deterministic.

Two ways to tie a simulation to a real run: :meth:`Speeds.from_history` configures the
workers' speeds and start times as a real run measured them, and :class:`Trace` replays a
real run's exact commit order (on the same shards this reproduces the real centre variable
bit for bit: see tests/test_simulation.py).

Typical use::

    from distkeras import ADAG
    from distkeras.simulation import Speeds, simulate_trainer

    trainer = ADAG(model, worker_optimizer="adam", loss="categorical_crossentropy",
                   num_workers=256, batch_size=32, num_epoch=10, communication_window=5, seed=1)
    result = simulate_trainer(trainer, x_train, y_train, speeds=Speeds(stragglers=0.1))
    result.accuracy(x_test, y_test), result.mean_staleness, result.history.summary()
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from . import protocol
from .algorithms import Algorithm, Session
from .data import is_sparse_loss
from .history import History
from .rendezvous import TRAIN, Rendezvous, batch_schedule
from .replica import replica_trainer
from .workers import WorkerError, batch_order

__all__ = ["SimulationResult", "Speeds", "Trace", "shards", "simulate", "simulate_trainer",
           "spark_partitions"]


@dataclass(frozen=True)
class Speeds:
    """How long the simulated workers take, in virtual seconds.

    A worker's mean time per local step is ``step_time`` times a lognormal factor of sigma
    ``spread`` (machines differ), times ``slowdown`` for a ``stragglers`` fraction of the
    workers (``round(stragglers * n)`` of them, chosen at random). Each step's time is the
    worker's mean times a lognormal factor of sigma ``jitter`` (noise from step to step).
    Every exchange with the server costs ``latency`` (a round trip; the commit reaches the
    server when the window's last step ends). Workers start at a uniform random time in
    ``[0, start_spread]``.

    ``measured_steps`` and ``measured_starts`` (one value per worker) replace the drawn mean
    step times and start times: :meth:`from_history` fills them from a real run, so that a
    simulation can be configured like the machines that run measured.
    """

    step_time: float = 1.0
    spread: float = 0.1
    jitter: float = 0.1
    stragglers: float = 0.0
    slowdown: float = 4.0
    latency: float = 0.0
    start_spread: float = 0.0
    measured_steps: tuple[float, ...] | None = None
    measured_starts: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not self.step_time > 0:
            raise ValueError(f"step_time must be > 0, got {self.step_time}")
        for name in ("spread", "jitter", "latency", "start_spread"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.stragglers <= 1.0:
            raise ValueError(f"stragglers must be a fraction in [0, 1], got {self.stragglers}")
        if not self.slowdown >= 1.0:
            raise ValueError(f"slowdown must be >= 1, got {self.slowdown}")

    @classmethod
    def from_history(cls, history: History, batch_size: int, jitter: float = 0.1) -> Speeds:
        """The speeds a real run's workers had, read from its parameter server's history.

        A worker's step time is the time between its first and last commit over the steps
        trained in between (samples / ``batch_size``: exchanges included); it started one
        first window's worth of steps before its first commit.
        """
        steps: dict[int, float] = {}
        starts: dict[int, float] = {}
        for worker in history.workers:
            mine = sorted((r for r in history.commits if r.worker == worker),
                          key=lambda r: r.time)
            if not mine:
                continue
            between = sum(r.samples for r in mine[1:]) / batch_size
            span = mine[-1].time - mine[0].time
            steps[worker] = span / between if between > 0 and span > 0 else math.nan
            starts[worker] = mine[0].time
        known = [v for v in steps.values() if math.isfinite(v)]
        typical = float(np.median(known)) if known else 1.0
        workers = range(max(steps, default=-1) + 1)
        step = [steps.get(k, typical) if math.isfinite(steps.get(k, math.nan)) else typical
                for k in workers]
        first = [starts.get(k, 0.0) - step[k] * _first_steps(history, k, batch_size)
                 for k in workers]
        origin = min(first, default=0.0)
        return cls(step_time=typical, spread=0.0, jitter=jitter,
                   measured_steps=tuple(step), measured_starts=tuple(f - origin for f in first))

    def draw(self, num_workers: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(mean step time per worker, start time per worker)."""
        if self.measured_steps is not None:
            if len(self.measured_steps) != num_workers:
                raise ValueError(f"measured speeds of {len(self.measured_steps)} workers for "
                                 f"a simulation of {num_workers}")
            starts = self.measured_starts or (0.0,) * num_workers
            return np.array(self.measured_steps, dtype=float), np.array(starts, dtype=float)
        mean = self.step_time * np.exp(rng.normal(0.0, self.spread, num_workers)) \
            if self.spread else np.full(num_workers, self.step_time)
        slow = int(round(self.stragglers * num_workers))
        if slow:
            mean[rng.choice(num_workers, size=slow, replace=False)] *= self.slowdown
        start = rng.uniform(0.0, self.start_spread, num_workers) if self.start_spread \
            else np.zeros(num_workers)
        return mean, start


def _first_steps(history: History, worker: int, batch_size: int) -> float:
    first = min((r for r in history.commits if r.worker == worker), key=lambda r: r.time,
                default=None)
    return first.samples / batch_size if first is not None else 0.0


@dataclass(frozen=True)
class Trace:
    """The order of events of a real run, to replay it instead of drawing speeds.

    Virtual time is the server clock: a worker's j-th commit happens at the clock value the
    real server gave it, and its first pull just before the first commit it did not see
    (``clock - staleness`` of its first commit). For algorithms whose worker commits and
    pulls in one request (DOWNPOUR, AGN, ADAG, DynSGD, model averaging, EASGD) this fixes
    every centre variable each worker saw, so a replay on the same shards and seed must end
    with the real run's centre variable: a check of everything but the timing model.
    """

    first_pull: dict[int, float]
    commits: dict[int, tuple[float, ...]]

    @classmethod
    def from_history(cls, history: History) -> Trace:
        first_pull: dict[int, float] = {}
        commits: dict[int, list[float]] = {}
        for record in sorted(history.commits, key=lambda r: r.clock):
            at = float(record.clock - 1)  # the clock before this commit was applied
            if record.worker not in first_pull:
                first_pull[record.worker] = at - record.staleness - 0.5
            commits.setdefault(record.worker, []).append(at)
        return cls(first_pull, {k: tuple(v) for k, v in commits.items()})


@dataclass
class SimulationResult:
    """What a simulated run produced: the centre variable and the server's history."""

    weights: np.ndarray  # the final centre variable, flat float32
    history: History  # one record per commit; times are virtual seconds
    num_workers: int
    algorithm: Algorithm
    step_times: np.ndarray  # each worker's mean virtual seconds per local step
    virtual_time: float  # when the last worker said goodbye
    wall_s: float  # real seconds the simulation took
    rows_per_worker: list[int]
    _build: Callable[[], Any] = field(repr=False, default=None)
    _layout: protocol.Layout | None = field(repr=False, default=None)
    _model: Any = field(repr=False, default=None)

    def model(self) -> Any:
        """A compiled keras.Model holding the final centre variable (built once, cached)."""
        if self._model is None:
            self._model = self._build()
        self._model.set_weights(self._layout.unflatten(self.weights))
        return self._model

    def accuracy(self, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
        """Share of ``x`` whose argmax prediction equals ``y`` (class indices or one-hot)."""
        labels = np.asarray(y)
        if labels.ndim > 1:
            labels = labels.argmax(axis=1)
        predicted = self.model().predict(x, batch_size=batch_size, verbose=0)
        return float(np.mean(np.argmax(predicted, axis=1) == labels))

    @property
    def staleness(self) -> np.ndarray:
        """Staleness of every commit, in the order the server applied them."""
        return np.array([r.staleness for r in self.history.commits], dtype=np.int64)

    @property
    def mean_staleness(self) -> float:
        stale = self.staleness
        return float(stale.mean()) if stale.size else 0.0

    @property
    def max_staleness(self) -> int:
        stale = self.staleness
        return int(stale.max()) if stale.size else 0


class _Exchange:
    """One call of a worker half, run in its own thread so that a synchronous one can wait for
    its round the way a real worker waits on its socket. Only one thread runs at a time: the
    event loop hands over with :meth:`step` and gets control back when the call ends or waits,
    so the simulation stays deterministic."""

    def __init__(self, target: Callable[[], None]):
        self._target = target
        self._go = threading.Semaphore(0)
        self._back = threading.Semaphore(0)
        self._thread = threading.Thread(target=self._main, daemon=True,
                                        name="distkeras-sim-exchange")
        self.done = False
        self.aborted = False
        self.error: BaseException | None = None

    def _main(self) -> None:
        self._go.acquire()
        try:
            if self.aborted:
                raise _Aborted()
            self._target()
        except BaseException as error:  # noqa: BLE001 - handed to the event loop
            self.error = error
        finally:
            self.done = True
            self._back.release()

    def step(self) -> None:
        """Event loop: run the call until it ends or waits for its round."""
        if not self._thread.is_alive() and not self.done:
            self._thread.start()
        self._go.release()
        self._back.acquire()

    def wait(self) -> None:
        """Exchange thread: give control back to the event loop until resumed."""
        self._back.release()
        self._go.acquire()
        if self.aborted:
            raise _Aborted()

    def abort(self) -> None:
        """Event loop, on failure: wake the waiting thread so that it ends."""
        if not self.done:
            self.aborted = True
            self.step()


class _Aborted(Exception):
    pass


class _Link:
    """A simulated worker's connection: what ``Algorithm.exchange`` talks to."""

    def __init__(self, server: _Server, worker: int, num_params: int):
        self._server = server
        self.worker = worker
        self.session = Session(worker=worker)
        self.inbox = np.empty(num_params, dtype=protocol.DTYPE)
        self.call: _Exchange | None = None
        # metadata of the next commit, set by the worker loop before each exchange
        self.samples, self.last_batch, self.loss = 0, -1, 0.0

    def pull(self) -> np.ndarray:
        return self._server.pull(self)

    def commit(self, update: np.ndarray) -> None:
        self._server.commit(self, update, reply=False)

    def commit_and_pull(self, update: np.ndarray) -> np.ndarray:
        return self._server.commit(self, update, reply=True)

    def metrics(self, loss: float, samples: int) -> None:
        self.loss, self.samples = loss, samples
        self._server.history.add_metrics(self.worker, loss, samples, at=self._server.now)


class _Server:
    """The parameter server's bookkeeping of :mod:`distkeras.parameter_server`, on a virtual
    clock: the same calls into the algorithm, the same clock and staleness."""

    def __init__(self, center: np.ndarray, algorithm: Algorithm, num_workers: int):
        self.center = center
        self.algorithm = algorithm
        self.history = History()
        self.history.synchronous = algorithm.synchronous
        self.clock = 0
        self.now = 0.0
        self.rendezvous: Rendezvous[tuple] = Rendezvous(range(num_workers))
        self.waiting: list[int] = []  # workers blocked in the current round, in arrival order
        self.wake: Callable[[int], None] = lambda worker: None  # set by the event loop
        self.round_acc = algorithm.round_begin(center) if algorithm.synchronous else None

    def pull(self, link: _Link) -> np.ndarray:
        np.copyto(link.inbox, self.center)
        link.session.pulled_clock = self.clock
        self.algorithm.on_pull(self.center, link.session)
        return link.inbox

    def commit(self, link: _Link, update: np.ndarray, reply: bool) -> np.ndarray | None:
        update = np.ascontiguousarray(update, dtype=protocol.DTYPE)
        if not protocol.all_finite(update):
            raise WorkerError(f"worker {link.worker} sent a non-finite update")
        session = link.session
        if self.algorithm.synchronous:
            self.algorithm.round_add(self.round_acc, update, link.samples)
            my_round = self.rendezvous.round_no
            # the round's clock and history move when it is applied, as on the server
            self._end_round(self.rendezvous.arrive(
                link.worker, (link.worker, link.loss, link.samples, self.now)))
            if self.rendezvous.round_no == my_round:
                self.waiting.append(link.worker)
                link.call.wait()  # the event loop resumes us when the round has ended
        else:
            clock = self.clock
            self.clock += 1
            self.algorithm.apply(self.center, update, session, clock)
            self.history.add_commit(link.worker, clock + 1, clock - session.pulled_clock,
                                    link.loss, link.samples, at=self.now)
        return self.pull(link) if reply else None

    def _end_round(self, members: list[tuple] | None) -> None:
        if members is None:
            return
        self.algorithm.round_end(self.center, self.round_acc)
        self.round_acc = self.algorithm.round_begin(self.center)
        for worker, loss, samples, at in members:
            self.clock += 1
            # every member computed its update from the previous round's centre: no staleness
            self.history.add_commit(worker, self.clock, 0, loss, samples, at=at)
        waiting, self.waiting = self.waiting, []
        for worker in waiting:
            self.wake(worker)

    def leave(self, worker: int) -> None:
        self.history.add_finished(worker, at=self.now)
        self._end_round(self.rendezvous.leave(worker))


@dataclass
class _Replica:
    """One simulated worker's private state: data shard, weights, optimizer state, clock."""

    index: int
    x: np.ndarray
    y: np.ndarray
    step_time: float
    rng: np.random.Generator
    link: _Link
    optimizer_state: list[np.ndarray]
    jitter: float
    w: np.ndarray = None
    w0: np.ndarray = None
    t: float = 0.0
    exchanges: int = 0
    replay: tuple[float, ...] | None = None  # exchange times from a Trace

    def next_step(self) -> float:
        if not self.jitter:
            return self.step_time
        return self.step_time * float(np.exp(self.rng.normal(0.0, self.jitter)))


class _Trainer:
    """One Keras model whose weights and optimizer state are swapped in per worker."""

    def __init__(self, bp: Any, algorithm: Algorithm, layout: protocol.Layout):
        self.model = bp.build(algorithm.worker_optimizer(bp.optimizer))
        self.trainer = replica_trainer(self.model)  # batch by batch, as a real worker trains
        self.layout = layout
        optimizer = self.model.optimizer
        optimizer.build(self.model.trainable_variables)
        self.variables = list(optimizer.variables)
        self.fresh = [np.array(v.numpy()) for v in self.variables]
        self._holder: _Replica | None = None  # worker whose optimizer state the model holds

    def train(self, replica: _Replica, batches: list[np.ndarray]) -> tuple[float, int]:
        """Train ``replica.w`` in place on ``batches``; returns (loss sum, samples)."""
        if self._holder is not replica:
            if self._holder is not None:
                self._save(self._holder)
            for variable, value in zip(self.variables, replica.optimizer_state):
                variable.assign(value)
            self._holder = replica
        self.model.set_weights(self.layout.unflatten(replica.w))
        loss_sum, samples = 0.0, 0
        for index in batches:
            loss = self.trainer.train(replica.x[index], replica.y[index])
            if not math.isfinite(loss):
                raise WorkerError(f"worker {replica.index}: training loss is {loss}; lower the "
                                  f"learning rate or check the data for NaN/inf")
            loss_sum += loss
            samples += len(index)
        self.trainer.sync()
        self.layout.flatten(self.model.get_weights(), out=replica.w)
        if not protocol.all_finite(replica.w):
            raise WorkerError(f"worker {replica.index}: the model's weights became NaN/inf")
        return loss_sum, samples

    def _save(self, replica: _Replica) -> None:
        for i, variable in enumerate(self.variables):
            replica.optimizer_state[i] = np.array(variable.numpy())


def _one_hot(y: np.ndarray, model: Any, loss: Any) -> np.ndarray:
    """Integer class labels become one-hot rows, as the real workers do, unless the loss
    is a sparse one or the model has a single output unit."""
    y = np.asarray(y)
    outputs = int(model.outputs[0].shape[-1]) if getattr(model, "outputs", None) else 1
    sparse = is_sparse_loss(loss)
    if y.ndim == 1 and outputs > 1 and not sparse and np.issubdtype(y.dtype, np.integer):
        return np.eye(outputs, dtype=np.float32)[y]
    return y.astype(np.float32) if y.dtype != np.float32 else y


def shards(rows: int, num_workers: int, seed: int) -> list[np.ndarray]:
    """Row indices of each worker: a seeded random split into ``num_workers`` equal parts
    (sizes differ by at most one, as after Spark's ``repartition``)."""
    order = np.random.default_rng([seed, 2]).permutation(rows)
    return [np.sort(part) for part in np.array_split(order, num_workers)]


def spark_partitions(dataframe: Any, x: np.ndarray, num_workers: int,
                     features_col: str = "features", label_col: str = "label",
                     single_worker: bool = False) -> list[np.ndarray]:
    """Row indices into ``x`` of the partition each real worker of ``trainer.train(dataframe)``
    gets, in the order it sees them, so that a simulation can train on exactly the same
    shards: the trainer's two columns converted for the workers (Vectors to float arrays),
    then ``repartition(n)`` (``coalesce(1)`` for a single worker), matched back to ``x`` by
    content. ``x`` must hold the rows of ``dataframe[features_col]`` as float32 (rows that
    are equal are interchangeable).
    Give a cached DataFrame or one read from storage: if its last step is an uncached
    ``repartition()``, Spark merges that step into this function's own repartition, but not
    into the trainer's, whose row checks stand between the two (see
    :func:`distkeras.data.checked`), and the rows are dealt differently.
    """
    from pyspark.sql import functions as F

    from .data import worker_frame

    # the columns as the trainer's shuffle sees them, converted for the workers
    frame = worker_frame(dataframe, [features_col, label_col])
    frame = frame.coalesce(1) if single_worker else frame.repartition(int(num_workers))
    # keep the label column: pruning it would change what repartition sorts and deals out
    rows = frame.select(F.spark_partition_id().alias("part"), F.col(features_col).alias("f"),
                        label_col).collect()
    where: dict[bytes, list[int]] = {}
    for i, row in enumerate(np.ascontiguousarray(x, dtype=np.float32)):
        where.setdefault(row.tobytes(), []).append(i)
    parts: list[list[int]] = [[] for _ in range(1 if single_worker else int(num_workers))]
    for row in rows:
        key = np.asarray(row["f"], dtype=np.float32).tobytes()
        if key not in where:
            raise ValueError("a row of the DataFrame is not in x")
        candidates = where[key]
        parts[row["part"]].append(candidates.pop() if len(candidates) > 1 else candidates[0])
    return [np.asarray(p, dtype=np.int64) for p in parts]


def simulate(algorithm: Algorithm, model: Any, x: np.ndarray, y: np.ndarray,
             num_workers: int, *, batch_size: int = 32, num_epoch: int = 1,
             window: float = 5, exchange_each_epoch: bool = False, optimizer: Any = "adam",
             loss: Any = None, seed: int = 0, shuffle: bool = True,
             speeds: Speeds | None = None, partitions: Sequence[np.ndarray] | None = None,
             trace: Trace | None = None) -> SimulationResult:
    """Train ``model`` with ``algorithm`` on ``num_workers`` simulated workers.

    ``model`` gives the architecture and the initial centre variable (it is not changed);
    ``optimizer`` and ``loss`` are what a trainer's ``worker_optimizer`` and ``loss`` would
    be (the compiled model's when omitted). ``x``/``y`` are numpy arrays; integer labels are
    one-hot encoded for a categorical loss, as the real workers do. ``partitions`` (row
    indices per worker) replaces the default random equal split. ``window`` is
    ``communication_window`` (``math.inf``: exchange only at the end, or at each epoch's end
    with ``exchange_each_epoch``). ``trace`` replays a real run's event order (see
    :class:`Trace`) instead of drawing times from ``speeds``. Raises
    :class:`~distkeras.workers.WorkerError` when training diverges (NaN/inf), as a real
    worker would.
    """
    from .models import blueprint

    started = time.time()
    num_workers = int(num_workers)
    if num_workers < 1 or batch_size < 1 or num_epoch < 1:
        raise ValueError("num_workers, batch_size and num_epoch must be >= 1")
    if not (window == math.inf or window >= 1):
        raise ValueError(f"window must be >= 1 or math.inf, got {window}")
    speeds = speeds or Speeds()
    x = np.asarray(x)
    bp = blueprint(model, optimizer, loss, [])
    y = _one_hot(y, model, bp.loss)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    parts = list(partitions) if partitions is not None else shards(len(x), num_workers, seed)
    if len(parts) != num_workers:
        raise ValueError(f"{len(parts)} partitions for {num_workers} workers")

    weights = model.get_weights()
    layout = protocol.Layout.of(weights)
    center = layout.flatten(weights)
    server = _Server(center, algorithm, num_workers)
    trainer = _Trainer(bp, algorithm, layout)
    step_times, starts = speeds.draw(num_workers, np.random.default_rng([seed, 1]))
    latency = 0.0 if trace is not None else speeds.latency
    if trace is not None:
        starts = np.array([trace.first_pull.get(k, 0.0) for k in range(num_workers)])
    replicas = [
        _Replica(k, x[part], y[part], float(step_times[k]), np.random.default_rng([seed, 3, k]),
                 _Link(server, k, layout.num_params), [v.copy() for v in trainer.fresh],
                 speeds.jitter, t=float(starts[k]),
                 replay=None if trace is None else trace.commits.get(k, ()))
        for k, part in enumerate(parts)]
    order_spec = SimpleNamespace(seed=int(seed), shuffle=bool(shuffle))

    def exchange(replica: _Replica, batches: list[np.ndarray],
                 last_batch: int) -> Generator[float | None, None, None]:
        if replica.replay is not None:
            if replica.exchanges >= len(replica.replay):
                raise ValueError(f"the trace has {len(replica.replay)} commits for worker "
                                 f"{replica.index}; the configuration makes more")
            replica.t = replica.replay[replica.exchanges]
        replica.exchanges += 1
        yield replica.t  # the window's steps end at this virtual time
        loss_sum, samples = trainer.train(replica, batches)
        link = replica.link
        link.samples, link.last_batch, link.loss = samples, last_batch, loss_sum / len(batches)
        call = link.call = _Exchange(
            lambda: algorithm.exchange(link, replica.w, replica.w0, len(batches)))
        calls[replica.index] = call
        call.step()
        while not call.done:
            yield None  # waiting for the round: the server wakes us when it ends
            call.step()
        calls.pop(replica.index, None)
        if call.error is not None:
            raise call.error
        replica.t = server.now + latency
        batches.clear()

    def worker(replica: _Replica) -> Generator[float | None, None, None]:
        """The loop of :func:`distkeras.workers.train_partition`, on virtual time."""
        k, rows = replica.index, len(replica.x)
        yield replica.t
        replica.w0 = replica.link.pull().copy()
        replica.w = replica.w0.copy()
        replica.t = server.now + latency
        window_batches: list[np.ndarray] = []
        for step in batch_schedule(rows, batch_size, num_epoch, window, exchange_each_epoch,
                                   lambda epoch: batch_order(order_spec, k, epoch, rows)):
            if step.kind == TRAIN:
                window_batches.append(step.rows)
                replica.t += replica.next_step()
            else:
                yield from exchange(replica, window_batches, step.index)
        # goodbye right after the last exchange (in a replay: before the next commit)
        yield replica.t + (0.25 if replica.replay is not None else 0.0)
        server.leave(k)

    queue: list[tuple[float, int, int]] = []
    sequence = 0

    def schedule(worker_index: int, when: float) -> None:
        nonlocal sequence
        heapq.heappush(queue, (when, sequence, worker_index))
        sequence += 1

    server.wake = lambda worker_index: schedule(worker_index, server.now)
    programs = [worker(replica) for replica in replicas]
    calls: dict[int, _Exchange] = {}
    for replica in replicas:
        schedule(replica.index, replica.t)
    try:
        while queue:
            when, _, k = heapq.heappop(queue)
            server.now = max(server.now, when)
            try:
                following = next(programs[k])
            except StopIteration:
                continue
            if following is not None:
                schedule(k, max(following, server.now))
        if server.rendezvous.active or server.waiting:
            raise RuntimeError(f"simulation ended with workers "
                               f"{sorted(server.rendezvous.active)} still in a synchronous "
                               f"round")
    finally:
        for call in list(calls.values()):
            call.abort()
    rows = [len(part) for part in parts]
    return SimulationResult(center, server.history, num_workers, algorithm, step_times,
                            server.now, time.time() - started, rows, bp.build, layout)


def simulate_trainer(trainer: Any, x: np.ndarray, y: np.ndarray, *,
                     speeds: Speeds | None = None,
                     partitions: Sequence[np.ndarray] | None = None,
                     trace: Trace | None = None) -> SimulationResult:
    """Simulate what ``trainer.train(df)`` would do on ``trainer.num_workers`` machines.

    Reads the trainer's algorithm, model, optimizer, loss, batch size, epochs, window, seed
    and shuffle, so the configuration of a real run and of its simulation cannot drift
    apart. ``x``/``y`` are the rows of the DataFrame the real run would train on.
    """
    if getattr(trainer, "returns_replicas", False):
        raise ValueError(f"{type(trainer).__name__} returns independent replicas; there is no "
                         f"centre variable to simulate")
    return simulate(trainer.algorithm, trainer.keras_model, x, y, trainer.num_workers,
                    batch_size=trainer.batch_size, num_epoch=trainer.num_epoch,
                    window=trainer.communication_window,
                    exchange_each_epoch=trainer.exchange_each_epoch,
                    optimizer=trainer.worker_optimizer, loss=trainer.loss, seed=trainer.seed,
                    shuffle=trainer.shuffle, speeds=speeds, partitions=partitions,
                    trace=trace)
