"""Driver side: check the data, start the parameter server, run the Spark job, return the model.

Each trainer is a thin class that names its algorithm (see algorithms.py) and its defaults;
everything else is shared by :class:`Trainer`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import textwrap
import time
import warnings
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from . import algorithms, protocol
from .backends import driver_backend
from .checkpoint import load as load_checkpoint
from .data import CHECK_FAILED, plan_columns, plan_rdd_columns
from .data import validate as validate_data
from .errors import DataError, worker_exception
from .history import History
from .jobs import SparkJob
from .memory import WORKER_MEMORY, parse_size
from .models import blueprint
from .monitor import (
    EpochEnds,
    Progress,
    collect_numpy,
    describe_phases,
    phases_of,
    where_workers_ran,
)
from .parameter_server import ParameterServer, ServerConfig, TrainingAborted
from .precision import check_policy
from .spark import worker_threads
from .workers import WorkerSpec

log = logging.getLogger(__name__)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


#: the ``Args:`` entries every trainer takes, written once: :class:`Trainer`'s docstring
#: includes them, each trainer's own docstring refers to it (as Keras' optimizers do)
_SHARED_ARGS = """\
keras_model: The `keras.Model` to train. It must be built (its input shapes known):
    its weights are the starting centre variable, and it is shipped to the workers in
    Keras' `.keras` format.
worker_optimizer: The optimizer each worker trains its replica with: a Keras optimizer
    name, config dict or instance. Defaults to the model's compiled optimizer, else
    `"adam"`.
loss: A Keras loss (name, function or instance; a list or dict for a multi-output
    model). Defaults to the model's compiled loss; one of the two must be given.
metrics: Keras metrics the replicas are compiled with and `validation_data` is
    evaluated with. Defaults to the model's compiled metrics, else none.
num_workers: Spark tasks, each training a replica on one partition of the data.
    Synchronous trainers (`AveragingTrainer`, `EASGD`) need that many task slots at
    once. Defaults to `2`.
batch_size: Rows per local training step. Defaults to `32`.
num_epoch: Passes over the data. Defaults to `1`.
features_col: The features: a Spark ML Vector, array or numeric column, or a list of
    columns, one per model input. Each row holds the flattened input; it is reshaped to
    the input's shape. Defaults to `"features"`.
label_col: The label: a vector or array column of the output's width, or a class index
    (one-hot encoded on the workers unless the loss is a sparse one); a list of columns
    for a multi-output model. Defaults to `"label"`.
communication_window: Local steps between two exchanges with the parameter server: a
    positive integer, or `math.inf` to exchange only when a worker's data are done (and,
    for `AveragingTrainer`, at the end of every epoch). A worker's last partial window
    is committed too. `None` (default) takes the trainer's own default.
verbose: `0` prints nothing; otherwise a progress bar (in a terminal or notebook, else
    a log line every 10 seconds), one line per epoch and a summary. Defaults to `1`.
seed: Seed of the batch order: each epoch's row order is a function of seed, partition
    and epoch, so a retried task trains the same batches. Defaults to a random seed.
shuffle: Whether each worker reshuffles its partition's rows every epoch. Defaults to
    `True`.
server_config: The parameter server's timeouts, limits and checkpoint settings, a
    `ServerConfig`. Defaults to `ServerConfig()`.
server_host: The address the executors connect to, and the parameter server binds.
    Defaults to Spark's own `spark.driver.host` (bound on `spark.driver.bindAddress`).
checkpoint_path: A file to save the centre variable, the server clock, every
    partition's cursor and the seed to (atomically, in `.npz` format): after every
    epoch, when the run ends (also when it fails) and as `checkpoint_every` and
    `checkpoint_seconds` say. `train(resume_from=checkpoint_path)` continues from it.
    When given, it and the two below replace `server_config`'s checkpoint fields.
    Defaults to `None` (`server_config`'s, by default none).
checkpoint_every: With `checkpoint_path`, also save every this many commits (`0`:
    off). Defaults to `0`.
checkpoint_seconds: With `checkpoint_path`, also save every this many seconds (`0`:
    off). Defaults to `0.0`.
dtype_policy: Mixed precision on the workers: `"mixed_bfloat16"` or `"mixed_float16"`.
    Each replica's float32 layers compute in 16 bits (a replica loaded from the `.keras`
    bytes keeps its layers' saved policies, so the policy is set on its layers, not
    globally); for `"mixed_float16"` Keras wraps the worker optimizer in a
    `LossScaleOptimizer`. The variables, the centre variable, the weights on the wire and
    the returned model stay float32. `worker_reports[i]["dtype_policy"]` says what each
    replica computed with. Defaults to `None` (the policies the model was saved with,
    float32 for a model built under the default policy).
worker_memory: Bytes of training rows one worker (one Spark task) holds in memory: an
    int or a size as Spark writes it (`"512m"`, `"4g"`). A partition that fits trains
    from memory; a larger one is written once, as it arrives, to an Arrow file in the
    executor's local directories (`spark.local.dir`) and streamed from it every epoch,
    in a shuffled order of blocks with a shuffle window of half this size (see
    docs/data.md). Rows count as float32, `width` numbers per column. The model, the
    backend and one Arrow record batch from Spark come on top. Defaults to `"1g"`.
"""


class Trainer:
    """Base class of the trainers: data-parallel training of a Keras model on Spark.

    A trainer starts a parameter server on the driver that holds the centre variable (the
    model's weights), runs one Spark task per worker that trains a replica on its partition
    and exchanges weights with the server every `communication_window` local steps, and
    returns a model holding the final centre variable. The subclasses only choose the
    algorithm (the exchange rule, see `distkeras.algorithms`) and its defaults; use one of
    them, not `Trainer` itself. Numbers and the algorithm's arguments are checked when
    the trainer is created; the model, the loss and the data when `train()` runs.

    Args:
        {{shared_args}}

    Attributes:
        history: The `History` of the last `train()` (records of every commit, per-epoch
            values in `history.history`); while training, the live one.
        worker_reports: One dict per worker of the last `train()`: rows, commits,
            samples, host (the executor's hostname), `address` (the worker's address
            as the parameter server saw it: on a cluster, which machine it ran on), pid,
            `python` (the executor's interpreter, `sys.executable`), transport (`"tcp"`,
            or `"shm"` beside the driver), the times (`time.time()`) it `started`, had
            its `model_built` and its `rows_read`, trained its `first_batch` and
            `finished`; `cpu_threads` (the worker's TensorFlow thread pools, 0 for the
            backend's default; see docs/cluster.md); `gpu_addresses` (the GPU
            addresses Spark assigned to the task, a list of strings, empty without a GPU
            resource), `devices` (where the replica's variables lived: `["CPU"]` or
            `["GPU:<address>"]`) and `dtype_policy` (see docs/cluster.md); `spilled`
            (bytes of the worker's spill file, `0` when its rows were held in memory),
            `peak_rss` (the task's peak resident memory in bytes) and `base_rss` (its
            resident memory once the model was built, before its rows arrived).
        timings: Where the last successful `train()` spent its time: seconds from the call to
            `train()` to the end of each phase, in order: `validated` (the columns
            planned, the rows counted, and where no shuffle follows, with
            `validate=True`, every row checked by a Spark job of its own),
            `server_started`, `first_task_started` (the first training task began),
            `first_model_built` and `first_rows_read` (the first worker to have built
            its replica, to have read its partition), `first_batch` (the first worker
            trained its first batch),
            `last_worker_finished`, `returned`. The summary line of `verbose` says the same.
        parameter_server: The running `ParameterServer` during `train()`, else `None`.

    Raises:
        ValueError: `num_workers`, `batch_size`, `num_epoch` or `communication_window`
            is not a positive integer (the window may also be `math.inf`), an
            algorithm argument is out of range (see each trainer), `dtype_policy` is
            not a mixed policy, or `worker_memory` is not a size.
    """

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
                 checkpoint_seconds: float = 0.0, dtype_policy: str | None = None,
                 worker_memory: int | str = WORKER_MEMORY):
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
        self.dtype_policy = check_policy(dtype_policy)
        self.worker_memory = parse_size(worker_memory, "worker_memory")
        self.server_config = dataclasses.replace(
            server_config or ServerConfig(),
            **({"checkpoint_path": checkpoint_path, "checkpoint_every": int(checkpoint_every),
                "checkpoint_seconds": float(checkpoint_seconds)} if checkpoint_path else {}))
        #: the running parameter server during ``train()`` (for monitoring), else None
        self.parameter_server: ParameterServer | None = None
        self.server_host = server_host  # where executors reach the driver, if not Spark's
        self.history = History()
        self.worker_reports: list[dict] = []
        self.timings: dict[str, float] = {}
        self.algorithm = self._algorithm()  # validates the algorithm's arguments at once

    def _algorithm(self) -> algorithms.Algorithm:
        raise NotImplementedError

    def get_training_time(self) -> float:
        """Seconds the last successful `train()` took, from its start to the returned model.

        Returns:
            The wall-clock seconds as a float; `0.0` before the first `train()` completes.
        """
        return self.timings.get("returned", 0.0)

    # ---- the run ----------------------------------------------------------------------
    #: seconds between two looks of the driver's loop at the job, the history and the epochs
    poll_interval = 0.2

    def train(self, data, shuffle: bool | None = None, repartition: bool = True,
              validate: bool = True, resume_from: str | None = None,
              validation_data=None, callbacks: Sequence | None = None,
              early_stopping_patience: int | None = None,
              early_stopping_min_delta: float = 0.0, restore_best_weights: bool = True):
        """Train on `data` and return a model holding the final centre variable.

        Epochs are exact: epoch k ends at the commit (for synchronous trainers: the round)
        that brings the samples trained to k x rows, where the server copies the centre
        variable. On that copy the driver evaluates `validation_data`, runs the callbacks
        and, with `checkpoint_path`, saves a checkpoint. `history.history` gets each
        epoch's `loss` (mean training loss of its windows), `staleness`, `commits_per_s`
        and `val_loss`/`val_<metric>`, as Keras' `History.history` does. An interrupt
        (KeyboardInterrupt) cancels the Spark job and stops the parameter server.

        Args:
            data: A DataFrame (classic or Spark Connect; the workers read it as Arrow
                record batches) with the `features_col` and `label_col` columns, or an
                RDD of `(features, label)` pairs.
            shuffle: Overrides the trainer's `shuffle` for this run. Defaults to `None`
                (the trainer's).
            repartition: `True` spreads the rows evenly over `num_workers` partitions;
                `False` keeps the data's own partitions, one worker each (their number
                must equal `num_workers`). Defaults to `True`.
            validate: Whether every row is checked (widths, nulls, NaN/inf, class
                indices) so that bad data fail before the first worker starts: in the
                stage that spreads the rows over the workers, or by a Spark job of its own
                where the rows are not shuffled (`repartition=False`, `SingleTrainer`);
                `False` checks the columns and the first row only. Ignored for an RDD.
                Defaults to `True`.
            resume_from: A checkpoint written by a run with `checkpoint_path` to continue
                from: the centre variable, the clock and every partition's cursor, so
                that no batch is trained twice. Give the same data, `num_workers` and
                `batch_size` as the interrupted run. Defaults to `None`.
            validation_data: A DataFrame with the same columns, collected to the driver
                (keep it small) and evaluated on the centre variable at every epoch's
                end. Defaults to `None`.
            callbacks: Keras callbacks, run on the driver as `model.fit` runs them
                (`on_train_begin/end`, `on_epoch_begin/end` with the epoch's logs);
                `callback.model` holds the epoch's centre variable. Setting
                `model.stop_training = True` stops the workers and the job completes.
                Defaults to `None`.
            early_stopping_patience: A shorthand for adding
                `keras.callbacks.EarlyStopping(monitor="val_loss", patience=...)`
                (`monitor="loss"` without `validation_data`). Defaults to `None` (none).
            early_stopping_min_delta: That EarlyStopping's `min_delta`. Defaults to
                `0.0`.
            restore_best_weights: That EarlyStopping's `restore_best_weights`. Defaults
                to `True`.

        Returns:
            A new compiled `keras.Model` holding the final centre variable (when a
            callback stopped the run: what the callbacks left, e.g. EarlyStopping's best
            weights). `EnsembleTrainer` returns a list of models instead.

        Raises:
            DataError: The data do not fit the model (a missing column, a wrong width, a
                null, NaN/inf, a class index out of range, no rows); raised before
                training starts.
            ValueError: There is no loss (none given, the model not compiled);
                `repartition=False` and the number of partitions is not `num_workers`; a
                synchronous trainer needs more task slots than Spark has; the checkpoint
                `resume_from` was written for another model.
            FileNotFoundError: There is no checkpoint at `resume_from`.
            TypeError: `worker_optimizer` is not a Keras optimizer name, config or
                instance, or a callback is not a `keras.callbacks.Callback`.
            TrainingAborted: The parameter server stopped the run: a worker failed in a
                way a retry would repeat (e.g. its loss became NaN/inf), a worker died
                mid-round or hung past `stall_timeout`, a round timed out, or a
                checkpoint could not be written.
            Exception: A worker's own exception, rebuilt from the Spark error, with the
                worker's traceback as a note.

        Example:

        ```python
        import keras
        from distkeras import ADAG, local_session

        spark = local_session(num_workers=2)
        train_df, test_df = ...  # "features": 784 values per row, "label": a class index
        model = keras.Sequential([keras.Input((784,)),
                                  keras.layers.Dense(10, activation="softmax")])
        trainer = ADAG(model, worker_optimizer="adam", loss="categorical_crossentropy",
                       metrics=["accuracy"], num_workers=2, num_epoch=5)
        trained = trainer.train(train_df, validation_data=test_df,
                                early_stopping_patience=2)
        print(trainer.get_training_time(), trainer.history.history["val_accuracy"])
        ```
        """
        started = time.time()
        shuffle = self.shuffle if shuffle is None else shuffle
        loss = self.loss if self.loss is not None else self._compiled_loss()
        job = SparkJob(data, self.num_workers, self.single_worker, self.algorithm.synchronous,
                       name=f"distkeras {type(self).__name__}")
        timings = {}  # published when the run succeeds, as get_training_time() always was
        inline = validate and job.shuffles(repartition)  # checked in the shuffle's stage
        plan, rows = self._check_data(job, loss, validate and not inline)
        timings["validated"] = time.time() - started
        bp = blueprint(self.keras_model, self.worker_optimizer, self.loss, self.metrics)
        layout, center, resumed = self._starting_point(resume_from)
        job.check_slots()
        server, address, token = self._start_server(job, layout, center, resumed, rows)
        timings["server_started"] = time.time() - started
        spec = WorkerSpec(bp, self.algorithm, plan, layout, address, token,
                          self.batch_size, self.num_epoch, self.communication_window,
                          self.exchange_each_epoch, self.returns_replicas, shuffle, server.seed,
                          backend=driver_backend(), dtype_policy=self.dtype_policy,
                          worker_memory=self.worker_memory,
                          cpu_threads=worker_threads(job.sc, job.spark, self.num_workers))
        progress = Progress(server.history, rows, self.num_epoch, self.verbose,
                            name=type(self).__name__)
        ends = EpochEnds(server, bp.build(), self._callbacks(callbacks, validation_data,
                         early_stopping_patience, early_stopping_min_delta,
                         restore_best_weights), self._held_out(validation_data, loss),
                         self.batch_size, self.num_epoch, progress.say,
                         checkpoint_each_epoch=bool(self.server_config.checkpoint_path))
        try:
            job.start(spec, plan, repartition, check=inline)
            ends.begin()
            while not job.wait(self.poll_interval):
                progress.show()
                ends.process()
            self.worker_reports = job.reports()
            for report in self.worker_reports:  # where each worker ran, as the server saw it
                report["address"] = server.history.address_of(report["worker"],
                                                               report["attempt"])
            ends.process()
        except BaseException as error:
            job.cancel()
            failure = self._failure(server, error, job, plan)
            raise failure from (None if isinstance(failure, DataError) else error)
        finally:
            progress.close()
            server.stop()
            self.parameter_server = None
            job.close()
        if server.error:
            raise TrainingAborted(server.error)
        ends.end(center)
        model = self._result(ends.model, bp, layout)
        timings.update(phases_of(self.worker_reports, started))
        timings["returned"] = time.time() - started
        self.timings = timings
        self._say(f"distkeras: trained in {timings['returned']:.1f}s "
                  f"({describe_phases(timings)}), "
                  f"{self.history.samples_applied:,} samples applied in "
                  f"{len(self.history.commits):,} commits; "
                  f"{where_workers_ran(self.worker_reports)}")
        return model

    # ---- the steps of a run -------------------------------------------------------------
    def _check_data(self, job: SparkJob, loss, validate: bool):
        """How each column feeds the model, and the number of rows (validated: every row)."""
        if job.is_rdd:
            return plan_rdd_columns(job.data, self.keras_model, loss), job.data.count()
        plan = plan_columns(job.data, self.features_col, self.label_col, self.keras_model, loss)
        return plan, (validate_data(job.data, plan) if validate else job.data.count())

    def _starting_point(self, resume_from: str | None):
        """(layout, flat centre variable, the checkpoint resumed from or None)."""
        weights = self.keras_model.get_weights()
        layout = protocol.Layout.of(weights)
        center = layout.flatten(weights)
        resumed = load_checkpoint(resume_from, layout) if resume_from else None
        if resumed is not None:
            center[:] = resumed.center
        return layout, center, resumed

    def _start_server(self, job: SparkJob, layout, center, resumed, rows):
        """The run's parameter server, listening: (server, address for workers, token)."""
        bind, host = job.server_address(self.server_host)
        token = protocol.new_token()
        server = ParameterServer(
            center, layout, self.algorithm, self.num_workers, token,
            bind_host=bind, config=self.server_config,
            cursors=resumed.cursors if resumed else None, clock=resumed.clock if resumed else 0,
            seed=resumed.seed if resumed else self.seed, on_abort=lambda reason: job.cancel(),
            rows=rows, num_epochs=self.num_epoch, samples=resumed.samples if resumed else 0)
        server.start()
        self.parameter_server = server
        self.history = server.history
        self._say(f"distkeras: {type(self).__name__} on {self.num_workers} worker(s), "
                  f"{layout.num_params:,} parameters, server {host}:{server.address[1]}")
        return server, (host, server.address[1]), token

    def _held_out(self, validation_data, loss):
        if validation_data is None:
            return None
        return collect_numpy(validation_data, plan_columns(
            validation_data, self.features_col, self.label_col, self.keras_model, loss))

    def _callbacks(self, callbacks, validation_data, patience, min_delta, restore_best):
        callbacks = list(callbacks or [])
        for callback in callbacks:
            if not isinstance(callback, keras.callbacks.Callback):
                raise TypeError(f"callbacks must be keras.callbacks.Callback instances, got "
                                f"{type(callback).__name__}")
        if patience is not None:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_loss" if validation_data is not None else "loss",
                patience=int(patience), min_delta=float(min_delta),
                restore_best_weights=bool(restore_best)))
        return keras.callbacks.CallbackList(callbacks, add_history=False, add_progbar=False,
                                            epochs=self.num_epoch, verbose=0)

    @staticmethod
    def _failure(server: ParameterServer, error: BaseException, job: SparkJob,
                 plan) -> BaseException:
        """What the caller sees when the run fails: the server's reason, else the worker's
        own exception, else the error itself; a row that failed the checks before the
        shuffle, as :func:`validate` words it."""
        text = str(error)
        if CHECK_FAILED in text:
            try:
                validate_data(job.data, plan)
            except DataError as found:
                return found
            said = text[text.index(CHECK_FAILED):].splitlines()[0]
            return DataError(f"{said}, but a second pass found no bad row: do the data "
                             f"change from one read to the next?")
        lost = _lost_executor(error)
        if lost and not server.error and server.algorithm.synchronous:
            # Spark may fail the barrier stage before the server sees the lost worker's
            # connection drop: a moment for it, so that the error names the worker
            deadline = time.monotonic() + 5.0
            while not server.error and time.monotonic() < deadline:
                time.sleep(0.05)
        if server.error:
            return TrainingAborted(server.error + (f" (Spark: {lost})" if lost else ""))
        own = worker_exception(error)
        return own if own is not None else error

    def _result(self, model, bp, layout):
        """The model ``train`` returns: the callbacks' model, holding the final centre."""
        return model

    def _compiled_loss(self):
        config = getattr(self.keras_model, "_compile_config", None)
        return config.config.get("loss") if config is not None else None

    def _say(self, message: str) -> None:
        if self.verbose:
            print(message, flush=True)


if Trainer.__doc__:  # None under python -OO
    Trainer.__doc__ = Trainer.__doc__.replace(
        "{{shared_args}}", textwrap.indent(_SHARED_ARGS, " " * 8).strip())


def _lost_executor(error: BaseException) -> str | None:
    """Spark's reason when a job failed because an executor was lost (its machine or
    process died), else None."""
    if not isinstance(error, Exception):
        return None
    return next((line.strip() for line in str(error).splitlines()
                 if "ExecutorLostFailure" in line), None)


class SingleTrainer(Trainer):
    """One worker trains the model plainly on all the data: the baseline.

    The data go to one partition and one worker trains on it with `worker_optimizer`, as
    `model.fit` would; its final weights become the centre variable. `num_workers` is
    ignored (always 1). Default `communication_window`: `math.inf` (one exchange, at the
    end).

    ```python
    C = W  # once the worker's data are done
    ```

    Takes only the arguments shared by every trainer (see `Trainer`).
    """

    single_worker = True
    default_window = math.inf

    def _algorithm(self):
        return algorithms.Replace()


class DOWNPOUR(Trainer):
    """Asynchronous SGD with a parameter server (Dean et al. 2012); `lock=False`: Hogwild.

    Every worker sends its share of the change of its replica since its last pull and
    continues from the centre variable; the server adds each commit as it arrives. Default
    `communication_window`: 5.

    ```python
    # worker, every communication_window steps (W0: the centre it last pulled)
    delta = delta_scale * (W - W0)
    W = W0 = commit_and_pull(delta)
    # server, on each commit
    C = C + delta
    ```

    Args:
        lock: Whether the server applies commits under its lock. `False` is Hogwild
            (Recht et al. 2011): commits are added concurrently, without the lock.
            Defaults to `True`.
        delta_scale: The share of each worker's change that reaches the centre. `None`
            means `1 / num_workers`: n workers together move the centre about as far as
            `model.fit` moves one model, so an optimizer tuned for `model.fit` (SGD with
            momentum included) works unchanged. `1.0` is Dean et al.'s original rule,
            whose centre moves about n times as far: with `SGD(0.05, momentum=0.9)` it
            lost 9.7 points at 2 workers and diverged on one seed of three at 4 (see
            docs/algorithms.md). Defaults to `None`.

    Plus the arguments shared by every trainer (see `Trainer`).
    """

    default_window = 5

    def __init__(self, keras_model, *args, lock: bool = True,
                 delta_scale: float | None = None, **kwargs):
        self.lock = lock
        self.delta_scale = delta_scale
        super().__init__(keras_model, *args, **kwargs)

    def _algorithm(self):
        scale = 1.0 / self.num_workers if self.delta_scale is None else self.delta_scale
        return algorithms.DOWNPOUR(lock=self.lock, scale=scale)


class AGN(Trainer):
    """Accumulated Gradient Normalization (Hermans 2017).

    DOWNPOUR with the window's accumulated update divided by the number of local steps it
    took, so that a long window does not make a large step at the server. Default
    `communication_window`: 4 (the centre moves about n / window times as far per sample as
    `model.fit` moves its model: with Adam at its defaults, windows of 12 ended 3.5 to 4
    points below `model.fit`, windows of 4 0.9 to 1.2; see docs/algorithms.md).

    ```python
    # worker, every communication_window steps (W0: the centre it last pulled)
    delta = (W - W0) / steps  # steps: local steps in the window
    W = W0 = commit_and_pull(delta)
    # server, on each commit
    C = C + delta
    ```

    Takes only the arguments shared by every trainer (see `Trainer`).
    """

    default_window = 4

    def _algorithm(self):
        return algorithms.AGN()


class ADAG(Trainer):
    """Asynchronous Distributed Adaptive Gradients (Hermans 2017).

    AGN with per-weight staleness damping on the server: a weight that moved a lot since
    the committing worker's pull (a stale update) is damped, the others pass through almost
    unchanged. Default `communication_window`: 4 (as AGN).

    ```python
    # worker: as AGN
    delta = (W - W0) / steps
    # server, per weight (C0: the centre this worker last pulled)
    C = C + delta / ((C - C0) ** 2 / gamma + 1)
    ```

    Args:
        gamma: The damping scale, > 0: the smaller, the stronger stale weights are
            damped. Defaults to `1e-4`.

    Plus the arguments shared by every trainer (see `Trainer`).

    Raises:
        ValueError: `gamma` is not > 0.
    """

    default_window = 4

    def __init__(self, keras_model, *args, gamma: float = 1e-4, **kwargs):
        self.gamma = gamma
        super().__init__(keras_model, *args, **kwargs)

    def _algorithm(self):
        return algorithms.ADAG(gamma=self.gamma)


class DynSGD(Trainer):
    """Staleness-aware asynchronous SGD (Jiang et al. 2017): updates divided by staleness + 1.

    DOWNPOUR whose server scales each commit by how many commits of other workers were
    applied since the committing worker's pull. Default `communication_window`: 5.

    ```python
    # worker: as DOWNPOUR
    delta = W - W0
    # server, on each commit (clock0: the server clock at this worker's last pull)
    tau = clock - clock0 + 1
    C = C + delta / tau
    clock = clock + 1
    ```

    Takes only the arguments shared by every trainer (see `Trainer`).
    """

    default_window = 5

    def _algorithm(self):
        return algorithms.DynSGD()


def _optimizer_config(optimizer: Any) -> tuple[str, dict] | None:
    """(class name, config) of a Keras optimizer given as a name, config dict or instance,
    or None when there is none to read (nothing given, an unknown object)."""
    try:
        if isinstance(optimizer, (str, dict)):
            optimizer = keras.optimizers.get(optimizer)
        return type(optimizer).__name__, optimizer.get_config()
    except Exception:  # noqa: BLE001 - unreadable means: nothing to compare
        return None


def _constant(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return None  # a schedule, a variable we cannot read: no constant
    return float(value)


def _learning_rate(optimizer: Any) -> float | None:
    """The constant learning rate of a Keras optimizer (name, config dict or instance), or
    None when there is none to read (nothing given, a schedule, an unknown object)."""
    read = _optimizer_config(optimizer)
    return _constant(read[1].get("learning_rate")) if read else None


def _user_optimizer(trainer: Trainer) -> tuple[Any, str] | None:
    """The optimizer the user chose for the workers and where it came from, if any."""
    if trainer.worker_optimizer is not None:
        return trainer.worker_optimizer, "worker_optimizer"
    model = trainer.keras_model
    if getattr(model, "compiled", False) and getattr(model, "optimizer", None) is not None:
        return model.optimizer, "the model's compiled optimizer"
    return None


class AEASGD(Trainer):
    """Asynchronous elastic averaging SGD (Zhang et al. 2015).

    Each worker is pulled towards the centre variable and the centre towards the worker by
    the same elastic step, so replicas may explore away from the centre. Default
    `communication_window`: 32.

    ```python
    # worker, every communication_window steps
    C = pull()
    E = alpha * (W - C)  # alpha = rho * learning_rate
    W = W - E
    commit(E)
    # server, on each commit
    C = C + E
    ```

    Args:
        rho: The elastic force, > 0. `None` means `0.9 / (num_workers * learning_rate)`:
            `alpha = 0.9 / num_workers`, so that the n workers together pull the centre
            `num_workers * alpha = 0.9` of the way (Zhang et al.'s beta), whatever the
            workers' optimizer. With Adam, AEASGD ended 2.5 and 4.3 points below
            `model.fit` (2 and 4 workers) with the former fixed `rho=5.0` (alpha 0.05), 0.6
            and 1.8 with this (see docs/algorithms.md). Defaults to `None`.
        learning_rate: The learning rate in `alpha = rho * learning_rate`, > 0. The
            workers train with `worker_optimizer` and its own learning rate; when `rho` is
            given, a `UserWarning` says so if the two differ. Defaults to `0.01`.

    Plus the arguments shared by every trainer (see `Trainer`).

    Raises:
        ValueError: `rho` or `learning_rate` is not > 0, or `rho * learning_rate >= 1`.
    """

    default_window = 32

    def __init__(self, keras_model, *args, rho: float | None = None,
                 learning_rate: float = 0.01, **kwargs):
        self.rho, self.learning_rate = rho, learning_rate
        super().__init__(keras_model, *args, **kwargs)
        if isinstance(self, EAMSGD) or rho is None:
            return  # alpha does not depend on learning_rate, or EAMSGD warns instead
        given = _user_optimizer(self)
        rate, eta = _learning_rate(given[0] if given else None), self.algorithm.learning_rate
        if rate is not None and abs(rate - eta) > 1e-6 * max(abs(rate), eta):
            warnings.warn(
                f"{type(self).__name__}: the worker optimizer's learning rate is {rate:g} but "
                f"learning_rate={eta:g}; the elastic coefficient alpha = rho * learning_rate = "
                f"{self.algorithm.alpha:g} uses the trainer's learning_rate, not the "
                f"optimizer's", UserWarning, stacklevel=2)

    def _elastic_rho(self, learning_rate: float) -> float:
        """`rho` as given, or the one that makes num_workers * alpha = 0.9."""
        if self.rho is not None:
            return self.rho
        if not float(learning_rate) > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        return 0.9 / (self.num_workers * float(learning_rate))

    def _algorithm(self):
        rate = self.learning_rate
        return algorithms.AEASGD(rho=self._elastic_rho(rate), learning_rate=rate)


class EAMSGD(AEASGD):
    """Asynchronous elastic averaging with Nesterov momentum on the workers (Zhang 2015).

    AEASGD whose workers train with `SGD(learning_rate, momentum, nesterov=True)`. When the
    user's optimizer (`worker_optimizer`, else the model's compiled one) is an `SGD`, its
    learning rate and momentum are the defaults, so an SGD tuned for `model.fit` carries
    over. Any other optimizer (Adam, say) is replaced by that SGD, and a `UserWarning` says
    so: with Adam compiled, EAMSGD's SGD at 0.01 ended 2.6 and 4.0 points below `model.fit`
    with Adam (2 and 4 workers), where AEASGD, which keeps the optimizer, was within 1.8
    (docs/algorithms.md).
    Default `communication_window`: 32.

    ```python
    # worker, every local step (g: the gradient)
    v = momentum * v - learning_rate * g(W + momentum * v)
    W = W + v
    # exchange: as AEASGD
    ```

    Args:
        learning_rate: The workers' SGD learning rate, > 0 (and, with a `rho` given, the
            one in `alpha = rho * learning_rate`). `None` means the user's `SGD`'s rate,
            else `0.01`. Defaults to `None`.
        momentum: The workers' Nesterov momentum, in `[0, 1)`. `None` means the user's
            `SGD`'s momentum when it has one, else `0.9`. Defaults to `None`.

    Plus `rho` (see `AEASGD`) and the arguments shared by every trainer (see `Trainer`).

    Raises:
        ValueError: `momentum` is not in `[0, 1)`, or as `AEASGD`.
    """

    _replaced: tuple[str, str] | None  # (source, class) of an optimizer not used: _algorithm

    def __init__(self, keras_model, *args, learning_rate: float | None = None,
                 momentum: float | None = None, **kwargs):
        self.momentum = momentum
        super().__init__(keras_model, *args, learning_rate=learning_rate, **kwargs)
        if self._replaced is not None:
            (source, name), rule = self._replaced, self.algorithm
            advice = ("" if name == "SGD" else " (with Adam it ended 2.6 to 4.0 points below "
                      "model.fit; AEASGD keeps the optimizer)")
            warnings.warn(
                f"EAMSGD trains the workers with SGD(learning_rate={rule.learning_rate:g}, "
                f"momentum={rule.momentum:g}, nesterov=True); {source} ({name}) is not "
                f"used{advice}", UserWarning, stacklevel=2)

    def _algorithm(self):
        """The Nesterov SGD from the user's SGD (read once here), noting in ``_replaced``
        an optimizer of the user's that it does not match."""
        given = _user_optimizer(self)
        read = _optimizer_config(given[0]) if given else None
        name, config = read if read else (type(given[0]).__name__ if given else None, {})
        sgd = config if name == "SGD" else {}
        own_rate, own_momentum = _constant(sgd.get("learning_rate")), _constant(sgd.get("momentum"))
        rate = self.learning_rate if self.learning_rate is not None else own_rate or 0.01
        momentum = self.momentum if self.momentum is not None else own_momentum or 0.9
        kept = name == "SGD" and own_rate == rate and own_momentum in (momentum, 0.0)
        self._replaced = None if given is None or kept else (given[1], name)
        return algorithms.EAMSGD(rho=self._elastic_rho(rate), learning_rate=rate,
                                 momentum=momentum)


class AveragingTrainer(Trainer):
    """Synchronous model averaging: every epoch each worker trains from the centre C over its
    partition, then C becomes the sample-weighted mean of the replicas.

    Every replica restarts each epoch from the same C; its optimizer state (e.g. Adam's
    moments) is kept per worker from epoch to epoch, as `model.fit` would keep it. The
    default window is one epoch (`math.inf`); a `communication_window` averages more often.
    All `num_workers` tasks run at once (a Spark barrier stage).

    ```python
    # once all n workers have committed (m_k: samples worker k trained on)
    C = sum(m_k * W_k) / sum(m_k)
    W_k = C
    ```

    Takes only the arguments shared by every trainer (see `Trainer`).
    """

    default_window = math.inf
    exchange_each_epoch = True

    def _algorithm(self):
        return algorithms.ModelAveraging()


class EASGD(AEASGD):
    """Synchronous elastic averaging SGD (Zhang et al. 2015): every `communication_window`
    steps all workers meet at the server.

    All `num_workers` tasks run at once (a Spark barrier stage). Default
    `communication_window`: 8.

    ```python
    # every communication_window steps, each worker k (C: the centre of the last round)
    E_k = alpha * (W_k - C)  # alpha = rho * learning_rate
    W_k = W_k - E_k
    # server, once all n workers have committed
    C = C + sum(E_k)
    ```

    Takes `rho` and `learning_rate` (see `AEASGD`) plus the arguments shared by every
    trainer (see `Trainer`).

    Raises:
        ValueError: As `AEASGD`, or `(num_workers + 1) * alpha >= 2`: each round would
            then widen the gap between the centre and the workers and training diverges
            (the message suggests a `rho`).
    """

    default_window = 8

    def _algorithm(self):
        rate = self.learning_rate
        algorithm = algorithms.EASGD(rho=self._elastic_rho(rate), learning_rate=rate)
        # A round moves the gap between the centre and the workers' mean by a factor
        # 1 - (n + 1) alpha: at (n + 1) alpha >= 2 it grows every round and training diverges
        # (seen in the scaling study: accuracy 0.05 at 64 workers with the former rho=5.0).
        # The default rho (None) keeps n alpha = 0.9, which never diverges.
        factor = (self.num_workers + 1) * algorithm.alpha
        if factor >= 2.0:
            suggested = 0.9 / (self.num_workers * self.learning_rate)
            raise ValueError(
                f"EASGD with num_workers={self.num_workers} and alpha = rho * learning_rate = "
                f"{algorithm.alpha:g} diverges: each round scales the centre's distance to the "
                f"workers by 1 - (num_workers + 1) * alpha = {1.0 - factor:g}, which needs "
                f"(num_workers + 1) * alpha < 2; pass rho <= {suggested:.3g} (num_workers * "
                f"alpha = 0.9, as Zhang et al. 2015 suggest; rho=None does that) or use fewer "
                f"workers")
        return algorithm


class EnsembleTrainer(Trainer):
    """`num_ensembles` independent models, one per partition; `train` returns the list.

    Every worker trains its own replica from the same initial weights on its partition,
    with no exchange; `train` returns one model per worker, in partition order. `average`
    turns that list into one Keras model whose prediction is the mean of the members'.

    Args:
        num_ensembles: Number of models (and workers), a positive integer; it replaces
            `num_workers`. Defaults to `2`.

    Plus the arguments shared by every trainer (see `Trainer`).

    Raises:
        ValueError: `num_ensembles` is not a positive integer.

    Example:

    ```python
    members = EnsembleTrainer(model, loss="categorical_crossentropy",
                              num_ensembles=4).train(df)
    ensemble = EnsembleTrainer.average(members)
    ```
    """

    default_window = math.inf
    returns_replicas = True

    def __init__(self, keras_model, *args, num_ensembles: int = 2, **kwargs):
        kwargs["num_workers"] = _positive_int("num_ensembles", num_ensembles)
        super().__init__(keras_model, *args, **kwargs)
        self.num_ensembles = self.num_workers

    def _algorithm(self):
        return algorithms.Independent()

    def _result(self, model, bp, layout):
        members = []
        for report in sorted(self.worker_reports, key=lambda r: r["worker"]):
            member = bp.build()
            member.set_weights(layout.unflatten(report["weights"]))
            member.name = f"{member.name}_member_{report['worker']}"  # unique when combined
            members.append(member)
        return members

    @staticmethod
    def average(members: Sequence[keras.Model]) -> keras.Model:
        """One model whose output is the mean of the members' outputs.

        Args:
            members: The models `train` returned (any Keras models with the same inputs
                and output shape), at least one.

        Returns:
            A new functional `keras.Model` (not compiled) on the first member's inputs;
            with a single member it only wraps that member.

        Raises:
            IndexError: `members` is empty.
        """
        inputs = [keras.Input(tuple(t.shape[1:]), dtype=t.dtype) for t in members[0].inputs]
        feed = inputs[0] if len(inputs) == 1 else inputs
        outputs = [member(feed) for member in members]
        return keras.Model(inputs, keras.layers.Average()(outputs) if len(outputs) > 1
                           else outputs[0])
