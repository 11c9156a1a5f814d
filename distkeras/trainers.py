"""Driver side: check the data, start the parameter server, run the Spark job, return the model.

Each trainer is a thin class that names its algorithm (see algorithms.py) and its defaults;
everything else is shared by :class:`Trainer`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import uuid
import warnings
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from . import algorithms, protocol
from .checkpoint import load as load_checkpoint
from .data import plan_columns, plan_rdd_columns
from .data import validate as validate_data
from .errors import worker_exception
from .history import History
from .models import blueprint
from .monitor import EpochEnd, Monitor, collect_numpy
from .parameter_server import ParameterServer, ServerConfig, TrainingAborted
from .spark import driver_address, is_connect, task_slots
from .workers import REPORT_SCHEMA, WorkerSpec, run_arrow_task, run_rdd_task

log = logging.getLogger(__name__)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Trainer:
    """Shared driver logic: the subclasses only choose the algorithm and its defaults."""

    #: local steps between exchanges when ``communication_window`` is not given
    default_window: float = 5
    #: one partition, no matter what ``num_workers`` says (SingleTrainer)
    single_worker = False
    #: exchange at the end of every epoch as well as every window (model averaging)
    exchange_each_epoch = False
    #: workers send their final weights back with the task result (ensembles)
    returns_replicas = False

    def __init__(self, keras_model: keras.Model, worker_optimizer: Any = None,
                 loss: Any = None, metrics: Sequence | None = None, num_workers: int = 2,
                 batch_size: int = 32, num_epoch: int = 1,
                 features_col: str | Sequence[str] = "features",
                 label_col: str | Sequence[str] = "label",
                 communication_window: int | None = None, verbose: int = 1,
                 seed: int | None = None, shuffle: bool = True,
                 server_config: ServerConfig | None = None, server_host: str | None = None,
                 checkpoint_path: str | None = None, checkpoint_every: int = 0,
                 checkpoint_seconds: float = 0.0):
        self.keras_model = keras_model
        self.worker_optimizer = worker_optimizer
        self.loss = loss
        self.metrics = metrics
        self.num_workers = 1 if self.single_worker else _positive_int("num_workers", num_workers)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.num_epoch = _positive_int("num_epoch", num_epoch)
        self.features_col = features_col
        self.label_col = label_col
        window = self.default_window if communication_window is None else communication_window
        self.communication_window = (window if window == math.inf
                                     else _positive_int("communication_window", window))
        self.verbose = int(verbose)
        self.seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % 2**31)
        self.shuffle = bool(shuffle)
        self.server_config = dataclasses.replace(
            server_config or ServerConfig(),
            **({"checkpoint_path": checkpoint_path, "checkpoint_every": int(checkpoint_every),
                "checkpoint_seconds": float(checkpoint_seconds)} if checkpoint_path else {}))
        #: the running parameter server during ``train()`` (for monitoring), else None
        self.parameter_server: ParameterServer | None = None
        self.server_host = server_host  # where executors reach the driver, if not Spark's
        self.history = History()
        self.worker_reports: list[dict] = []
        self._training_time = 0.0
        self.algorithm = self._algorithm()  # validates the algorithm's arguments at once

    def _algorithm(self) -> algorithms.Algorithm:
        raise NotImplementedError

    def get_training_time(self) -> float:
        """Seconds the last ``train()`` spent from start to the returned model."""
        return self._training_time

    # ---- the run ----------------------------------------------------------------------
    def train(self, data, shuffle: bool | None = None, repartition: bool = True,
              validate: bool = True, resume_from: str | None = None,
              validation_data=None, early_stopping_patience: int | None = None,
              early_stopping_min_delta: float = 0.0, restore_best_weights: bool = True):
        """Train on ``data`` and return a keras.Model holding the final centre variable.

        ``data`` is a DataFrame (classic or Spark Connect; workers read it as Arrow record
        batches) or an RDD of ``(features, label)`` pairs. ``validate`` runs one Spark job
        first that checks every row (widths, NaN/inf, class indices) so that bad data fail
        before training. ``repartition=False`` keeps the data's own partitions (one worker
        each; their number must equal ``num_workers``) instead of spreading rows evenly.
        ``resume_from`` continues a run from its checkpoint (``checkpoint_path``): the centre
        variable, the clock and every partition's cursor, so that no batch is trained twice
        (give the same data, ``num_workers`` and batch size as the interrupted run).

        ``validation_data`` (a DataFrame with the same columns) is evaluated on the centre
        variable after every epoch, into ``history.history["val_loss"]`` and
        ``"val_<metric>"`` as Keras does; with ``early_stopping_patience`` the run stops when
        ``val_loss`` (``loss`` without validation data) has not improved by
        ``early_stopping_min_delta`` for that many epochs, and the best centre variable is
        returned (``restore_best_weights``). With ``checkpoint_path`` the centre variable is
        also saved after every epoch.
        """
        started = time.time()
        shuffle = self.shuffle if shuffle is None else shuffle
        loss = self.loss if self.loss is not None else self._compiled_loss()
        is_rdd = not hasattr(data, "sparkSession")
        if is_rdd:
            spark, sc = None, data.context
            plan = plan_rdd_columns(data, self.keras_model, loss)
            rows = data.count() if validate else None
        else:
            spark = data.sparkSession
            sc = None if is_connect(spark) else spark.sparkContext
            plan = plan_columns(data, self.features_col, self.label_col, self.keras_model, loss)
            rows = validate_data(data, plan) if validate else None
        bp = blueprint(self.keras_model, self.worker_optimizer, self.loss, self.metrics)
        weights = self.keras_model.get_weights()
        layout = protocol.Layout.of(weights)
        center = layout.flatten(weights)
        clock, cursors, seed = 0, {}, self.seed
        if resume_from:
            state = load_checkpoint(resume_from, layout)
            center[:] = state.center
            clock, cursors, seed = state.clock, state.cursors, state.seed
        self._check_slots(sc, spark)
        bind, host = self._server_address(sc)
        token = protocol.new_token()
        tag = f"distkeras-{uuid.uuid4().hex[:12]}"
        server = ParameterServer(center, layout, self.algorithm, self.num_workers, token,
                                 bind_host=bind, config=self.server_config, cursors=cursors,
                                 clock=clock, seed=seed,
                                 on_abort=lambda reason: self._interrupt(sc, spark, tag))
        server.start()
        self.parameter_server = server
        self.history = server.history
        self._say(f"distkeras: {type(self).__name__} on {self.num_workers} worker(s), "
                  f"{layout.num_params:,} parameters, server {host}:{server.address[1]}")
        spec = WorkerSpec(bp, self.algorithm, plan, layout, (host, server.address[1]), token,
                          self.batch_size, self.num_epoch, self.communication_window,
                          self.exchange_each_epoch, self.returns_replicas, shuffle, seed)
        shipped = sc.broadcast(spec) if sc is not None else None
        held_out = None
        if validation_data is not None:
            held_out = collect_numpy(validation_data, plan_columns(
                validation_data, self.features_col, self.label_col, self.keras_model, loss))
        epoch_end = EpochEnd(server, bp, layout, held_out, self.batch_size,
                             early_stopping_patience, early_stopping_min_delta,
                             lambda message: monitor.say(message))
        monitor = Monitor(server, rows, self.num_epoch, self.verbose, epoch_end,
                          name=type(self).__name__)
        completed = False
        try:
            monitor.start()
            self._tag(sc, spark, tag)
            if is_rdd:
                self.worker_reports = self._run_rdd(data, spec, shipped, repartition)
            else:
                self.worker_reports = self._run_arrow(data, plan, spec, shipped, repartition)
            completed = True
        except BaseException as error:
            self._interrupt(sc, spark, tag)
            if server.error:
                raise TrainingAborted(server.error) from error
            own = worker_exception(error)
            if own is not None:
                raise own from None
            raise
        finally:
            monitor.finish(completed and server.error is None)
            server.stop()
            self.parameter_server = None
            self._untag(sc, spark, tag)
            if shipped is not None:
                shipped.unpersist(blocking=False)
        if server.error:
            raise TrainingAborted(server.error)
        if restore_best_weights and epoch_end.best is not None and server.stopped_early:
            center[:] = epoch_end.best
        model = self._result(bp, layout, center)
        self._training_time = time.time() - started
        self._say(f"distkeras: trained in {self._training_time:.1f}s, "
                  f"{self.history.samples_applied:,} samples applied in "
                  f"{len(self.history.commits):,} commits")
        return model

    # ---- the Spark job ------------------------------------------------------------------
    def _run_arrow(self, dataframe, plan, spec, shipped, repartition) -> list[dict]:
        frame = plan.arrow_frame(self._partitioned(dataframe.select(*plan.names), repartition))

        if shipped is not None:
            def task(batches):
                return run_arrow_task(shipped.value, batches)
        else:  # Spark Connect: no broadcast; the spec travels with the function
            def task(batches):
                return run_arrow_task(spec, batches)

        rows = frame.mapInArrow(task, REPORT_SCHEMA,
                                barrier=self.algorithm.synchronous).collect()
        reports = []
        for row in rows:
            report = row.asDict()
            if report["weights"] is not None:
                report["weights"] = np.frombuffer(report["weights"], dtype=protocol.DTYPE)
            reports.append(report)
        return reports

    def _run_rdd(self, rdd, spec, shipped, repartition) -> list[dict]:
        if repartition:
            rdd = rdd.coalesce(1) if self.single_worker else rdd.repartition(self.num_workers)
        elif rdd.getNumPartitions() != self.num_workers:
            raise ValueError(f"repartition=False: the RDD has {rdd.getNumPartitions()} "
                             f"partitions but num_workers is {self.num_workers}")

        def task(index, rows):
            return run_rdd_task(shipped.value, index, rows)

        stage = rdd.barrier() if self.algorithm.synchronous else rdd
        return stage.mapPartitionsWithIndex(task).collect()

    @staticmethod
    def _tag(sc, spark, tag: str) -> None:
        if sc is not None:
            sc.setJobGroup(tag, "distkeras training", interruptOnCancel=True)
        else:
            spark.addTag(tag)

    @staticmethod
    def _untag(sc, spark, tag: str) -> None:
        if sc is None:
            spark.removeTag(tag)

    @staticmethod
    def _interrupt(sc, spark, tag: str) -> None:
        """Cancel this run's Spark jobs (KeyboardInterrupt, a failed task, a server abort)."""
        try:
            if sc is not None:
                sc.cancelJobGroup(tag)
            else:
                spark.interruptTag(tag)
        except Exception as error:  # noqa: BLE001 - the original error matters more
            log.warning("distkeras: could not cancel the Spark job: %s", error)

    def _result(self, bp, layout, center):
        model = bp.build()
        model.set_weights(layout.unflatten(center))
        return model

    def _compiled_loss(self):
        config = getattr(self.keras_model, "_compile_config", None)
        return config.config.get("loss") if config is not None else None

    def _partitioned(self, dataframe, repartition: bool = True):
        if not repartition:
            if not is_connect(dataframe.sparkSession):
                found = dataframe.rdd.getNumPartitions()
                if found != self.num_workers:
                    raise ValueError(f"repartition=False: the DataFrame has {found} "
                                     f"partitions but num_workers is {self.num_workers}")
            return dataframe
        if self.single_worker:
            return dataframe.coalesce(1)
        return dataframe.repartition(self.num_workers)

    def _server_address(self, sc) -> tuple[str, str]:
        """(bind, advertise): Spark's own driver address, or ``server_host`` when given."""
        if self.server_host:
            return self.server_host, self.server_host
        if sc is not None:
            return driver_address(sc)
        return "127.0.0.1", "127.0.0.1"  # Spark Connect client without server_host: local

    def _check_slots(self, sc, spark) -> None:
        if not self.algorithm.synchronous:
            return
        slots = task_slots(sc, spark)
        if slots is not None and slots < self.num_workers:
            raise ValueError(f"{type(self).__name__} is synchronous: its {self.num_workers} "
                             f"workers must run at the same time, but Spark has {slots} task "
                             f"slot(s). Use num_workers <= {slots} or give Spark more cores.")

    def _say(self, message: str) -> None:
        if self.verbose:
            print(message, flush=True)


class SingleTrainer(Trainer):
    """One worker trains the model plainly on all the data: the baseline."""

    single_worker = True
    default_window = math.inf

    def _algorithm(self):
        return algorithms.Replace()


class DOWNPOUR(Trainer):
    """Asynchronous SGD with a parameter server (Dean et al. 2012); ``lock=False``: Hogwild."""

    default_window = 5

    def __init__(self, keras_model, *args, lock: bool = True, **kwargs):
        self.lock = lock
        super().__init__(keras_model, *args, **kwargs)

    def _algorithm(self):
        return algorithms.DOWNPOUR(lock=self.lock)


class AGN(Trainer):
    """Accumulated Gradient Normalization (Hermans 2017)."""

    default_window = 12

    def _algorithm(self):
        return algorithms.AGN()


class ADAG(Trainer):
    """Asynchronous Distributed Adaptive Gradients (Hermans 2017): AGN with per-weight
    staleness damping on the server (``gamma``)."""

    default_window = 12

    def __init__(self, keras_model, *args, gamma: float = 1e-4, **kwargs):
        self.gamma = gamma
        super().__init__(keras_model, *args, **kwargs)

    def _algorithm(self):
        return algorithms.ADAG(gamma=self.gamma)


class DynSGD(Trainer):
    """Staleness-aware asynchronous SGD (Jiang et al. 2017): updates divided by staleness+1."""

    default_window = 5

    def _algorithm(self):
        return algorithms.DynSGD()


def _learning_rate(optimizer: Any) -> float | None:
    """The constant learning rate of a Keras optimizer (name, config dict or instance), or
    None when there is none to read (nothing given, a schedule, an unknown object)."""
    try:
        if isinstance(optimizer, (str, dict)):
            optimizer = keras.optimizers.get(optimizer)
        rate = optimizer.get_config()["learning_rate"]
    except Exception:  # noqa: BLE001 - unreadable means: nothing to warn about
        return None
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.number)):
        return None
    return float(rate)


class AEASGD(Trainer):
    """Asynchronous elastic averaging SGD (Zhang et al. 2015)."""

    default_window = 32

    def __init__(self, keras_model, *args, rho: float = 5.0, learning_rate: float = 0.01,
                 **kwargs):
        self.rho, self.learning_rate = rho, learning_rate
        super().__init__(keras_model, *args, **kwargs)
        if isinstance(self, EAMSGD):
            return  # EAMSGD replaces the worker optimizer and warns about that instead
        given = self.worker_optimizer
        if given is None and getattr(keras_model, "compiled", False):
            given = getattr(keras_model, "optimizer", None)
        rate, eta = _learning_rate(given), self.algorithm.learning_rate
        if rate is not None and abs(rate - eta) > 1e-6 * max(abs(rate), eta):
            warnings.warn(
                f"{type(self).__name__}: the worker optimizer's learning rate is {rate:g} but "
                f"learning_rate={eta:g}; the elastic coefficient alpha = rho * learning_rate = "
                f"{self.algorithm.alpha:g} uses the trainer's learning_rate, not the "
                f"optimizer's", UserWarning, stacklevel=2)

    def _algorithm(self):
        return algorithms.AEASGD(rho=self.rho, learning_rate=self.learning_rate)


class EAMSGD(AEASGD):
    """Asynchronous elastic averaging with Nesterov momentum on the workers (Zhang 2015)."""

    def __init__(self, keras_model, *args, momentum: float = 0.9, **kwargs):
        self.momentum = momentum
        super().__init__(keras_model, *args, **kwargs)
        compiled = (getattr(keras_model, "compiled", False)
                    and getattr(keras_model, "optimizer", None) is not None)
        if self.worker_optimizer is not None or compiled:
            source = "worker_optimizer" if self.worker_optimizer is not None else (
                "the model's compiled optimizer")
            warnings.warn(
                f"EAMSGD trains the workers with SGD(learning_rate="
                f"{self.algorithm.learning_rate:g}, momentum={self.algorithm.momentum:g}, "
                f"nesterov=True); {source} is not used", UserWarning, stacklevel=2)

    def _algorithm(self):
        return algorithms.EAMSGD(rho=self.rho, learning_rate=self.learning_rate,
                                 momentum=self.momentum)


class AveragingTrainer(Trainer):
    """Synchronous model averaging: every epoch each worker trains from the centre C over its
    partition, then C <- the sample-weighted mean of the replicas.

    Every replica restarts each epoch from the same C; its optimizer state (e.g. Adam's
    moments) is kept per worker from epoch to epoch, as ``model.fit`` would keep it. The
    default window is one epoch; a ``communication_window`` averages more often.
    """

    default_window = math.inf
    exchange_each_epoch = True

    def _algorithm(self):
        return algorithms.ModelAveraging()


class EASGD(AEASGD):
    """Synchronous elastic averaging SGD (Zhang et al. 2015): every ``communication_window``
    steps all workers meet at the server."""

    default_window = 8

    def _algorithm(self):
        algorithm = algorithms.EASGD(rho=self.rho, learning_rate=self.learning_rate)
        # A round moves the gap between the centre and the workers' mean by a factor
        # 1 - (n + 1) alpha: at (n + 1) alpha >= 2 it grows every round and training diverges
        # (seen in the scaling study: accuracy 0.05 at 64 workers with the defaults).
        factor = (self.num_workers + 1) * algorithm.alpha
        if factor >= 2.0:
            suggested = 0.9 / (self.num_workers * self.learning_rate)
            raise ValueError(
                f"EASGD with num_workers={self.num_workers} and alpha = rho * learning_rate = "
                f"{algorithm.alpha:g} diverges: each round scales the centre's distance to the "
                f"workers by 1 - (num_workers + 1) * alpha = {1.0 - factor:g}, which needs "
                f"(num_workers + 1) * alpha < 2; pass rho <= {suggested:.3g} (num_workers * "
                f"alpha = 0.9, as Zhang et al. 2015 suggest) or use fewer workers")
        return algorithm


class EnsembleTrainer(Trainer):
    """``num_ensembles`` independent models, one per partition; ``train`` returns the list.

    :meth:`average` turns that list into one Keras model whose prediction is the mean of
    the members' predictions.
    """

    default_window = math.inf
    returns_replicas = True

    def __init__(self, keras_model, *args, num_ensembles: int = 2, **kwargs):
        kwargs["num_workers"] = _positive_int("num_ensembles", num_ensembles)
        super().__init__(keras_model, *args, **kwargs)
        self.num_ensembles = self.num_workers

    def _algorithm(self):
        return algorithms.Independent()

    def _result(self, bp, layout, center):
        members = []
        for report in sorted(self.worker_reports, key=lambda r: r["worker"]):
            member = bp.build()
            member.set_weights(layout.unflatten(report["weights"]))
            member.name = f"{member.name}_member_{report['worker']}"  # unique when combined
            members.append(member)
        return members

    @staticmethod
    def average(members: Sequence[keras.Model]) -> keras.Model:
        """One model whose output is the mean of the members' outputs."""
        inputs = [keras.Input(tuple(t.shape[1:]), dtype=t.dtype) for t in members[0].inputs]
        feed = inputs[0] if len(inputs) == 1 else inputs
        outputs = [member(feed) for member in members]
        return keras.Model(inputs, keras.layers.Average()(outputs) if len(outputs) > 1
                           else outputs[0])
