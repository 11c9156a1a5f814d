"""GPU: plain ``model.fit`` on one GPU vs distkeras with 1 and 2 workers sharing that GPU.

Why: the most common way to use a GPU executor is to let several tasks share it (a fractional
``spark.task.resource.gpu.amount``), and that only pays if the workers together keep up with
one process owning the GPU. Issue 12's target: 2 workers sharing one GPU reach at least
0.8 x the steady-state samples/s of ``model.fit`` on it.

Data: generated images (``--image`` pixels square, 3 channels, 10 classes): each class is a
blocky random template, each image its class's template shifted by up to a quarter of the
image and buried in Gaussian noise. Rows come in blocks of ``--block-rows``, each a pure
function of (seed, block): the bench process makes the training blocks for ``model.fit`` and
a held-out set, Spark's tasks make the same training blocks where they run (the images never
travel through the driver). Model: a CNN, Conv(32)-Conv(64)-pool-Conv(128)-pool-Dense(256)-
Dense(10), 1.28M parameters at 32 x 32 (``--width`` scales the filters), adam,
sparse categorical cross-entropy.

Spark: ``local-cluster[1, --cores, ...]`` (one executor JVM, real Python workers) whose
worker finds the GPU with a discovery script around ``nvidia-smi`` (the first GPU), with
``spark.executor.resource.gpu.amount=1`` and ``spark.task.resource.gpu.amount=0.5``: the two
tasks of the 2-worker run share the GPU, as on a cluster. ``--master URL`` uses a cluster of
yours instead (its GPU settings are then yours). ``model.fit`` runs in the bench process on
the same GPU, with memory growth on so that it and the executors coexist.

Run (from the repository root)::

    .venv/bin/python bench/gpu.py --out bench/out/gpu.jsonl      # on a host with a GPU
    .venv/bin/python bench/gpu.py --dtype-policy mixed_float16     # mixed precision
    .venv/bin/python bench/gpu.py --smoke                          # tiny, CPU, fake GPU "0"

One JSON line per run goes to stdout (and is appended to ``--out``): ``model.fit``, then
distkeras with each ``--workers`` count. Progress goes to stderr. ``--smoke`` (tiny sizes,
a discovery script that declares a fake GPU "0", so it runs anywhere, CPU included) is run
by the test suite so that the script cannot rot; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
from _common import emit, log, machine_info, utc_now
from mnist import accuracy, worker_timing

TARGET_RATIO = 0.8  # 2 workers sharing the GPU >= 0.8 x model.fit's samples/s
CLASSES = 10
NOISE = 2.0
TASK_GPU_AMOUNT = 0.5


# ---- data ---------------------------------------------------------------------------------
def templates(seed: int, size: int) -> np.ndarray:
    """One blocky random pattern per class, (classes, size, size, 3), float32."""
    coarse = np.random.default_rng([seed, 0xC1A55]).normal(size=(CLASSES, 4, 4, 3))
    scale = max(size // 4, 1)
    return np.repeat(np.repeat(coarse, scale, axis=1), scale, axis=2).astype(np.float32)


def make_block(seed: int, block: int, rows: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Block ``block`` of the data set: (images flattened to rows, labels), the same bytes
    wherever it is made."""
    rng = np.random.default_rng([seed, block])
    labels = rng.integers(0, CLASSES, rows)
    base = templates(seed, size)
    shifts = rng.integers(-(size // 4), size // 4 + 1, size=(rows, 2))
    images = np.empty((rows, size, size, 3), dtype=np.float32)
    for i in range(rows):
        images[i] = np.roll(base[labels[i]], tuple(shifts[i]), axis=(0, 1))
    images += rng.normal(0.0, NOISE, images.shape).astype(np.float32)
    return images.reshape(rows, -1), labels.astype(np.int32)


def make_blocks(seed: int, blocks: range, rows: int, size: int) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    parts = [make_block(seed, b, rows, size) for b in blocks]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def spark_frame(spark: Any, seed: int, blocks: int, rows: int, size: int,
                partitions: int) -> Any:
    """The training blocks as a cached DataFrame of ``partitions`` partitions, made by the
    executors (features: array<float>, label: int)."""
    import pyarrow as pa

    width = size * size * 3

    def generate(batches):
        for batch in batches:
            for block in batch.column("id").to_pylist():
                x, y = make_block(seed, block, rows, size)
                offsets = np.arange(0, len(x) * width + 1, width, dtype=np.int32)
                features = pa.ListArray.from_arrays(pa.array(offsets),
                                                    pa.array(x.ravel(), pa.float32()))
                yield pa.RecordBatch.from_arrays([features, pa.array(y, pa.int32())],
                                                 ["features", "label"])

    df = (spark.range(0, blocks, numPartitions=partitions)
          .mapInArrow(generate, "features array<float>, label int").cache())
    count = df.count()
    if count != blocks * rows:
        raise RuntimeError(f"DataFrame has {count} rows, expected {blocks * rows}")
    return df


# ---- model --------------------------------------------------------------------------------
def build_model(seed: int, size: int, width: float) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    f = [max(int(n * width), 4) for n in (32, 64, 128, 256)]
    layers = keras.layers
    return keras.Sequential([
        keras.Input((size * size * 3,)), layers.Reshape((size, size, 3)),
        layers.Conv2D(f[0], 3, activation="relu"), layers.Conv2D(f[1], 3, activation="relu"),
        layers.MaxPooling2D(), layers.Conv2D(f[2], 3, activation="relu"), layers.MaxPooling2D(),
        layers.Flatten(), layers.Dense(f[3], activation="relu"),
        layers.Dense(CLASSES, activation="softmax")])


# ---- the GPU and Spark --------------------------------------------------------------------
def gpu_name() -> str | None:
    """The first GPU's name from ``nvidia-smi``; None without one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return names[0] if names else None


def discovery_script(folder: str, fake: bool) -> str:
    """A Spark GPU discovery script: the first GPU ``nvidia-smi`` lists, or (``fake``) a
    GPU "0" that need not exist."""
    path = os.path.join(folder, "gpus.py")
    body = ('print(json.dumps({"name": "gpu", "addresses": ["0"]}))' if fake else
            'out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],'
            ' capture_output=True, text=True, check=True).stdout.split()\n'
            'print(json.dumps({"name": "gpu", "addresses": out[:1]}))')
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"#!{sys.executable}\nimport json, subprocess\n{body}\n")
    os.chmod(path, 0o755)
    return path


def start_spark(args: argparse.Namespace, script: str) -> Any:
    from pyspark.sql import SparkSession

    from distkeras.spark import check_java, worker_environment

    check_java()
    worker_environment()
    memory_mb = args.executor_memory_mb
    master = args.master or f"local-cluster[1,{args.cores},{memory_mb + 512}]"
    builder = (SparkSession.builder.master(master).appName("distkeras-bench-gpu")
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.driver.host", "127.0.0.1")
               .config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.driver.memory", "4g")
               .config("spark.executor.memory", f"{memory_mb}m")
               .config("spark.executor.cores", str(args.cores))
               .config("spark.sql.execution.arrow.maxRecordsPerBatch", "1024"))
    if not args.master:
        builder = (builder.config("spark.worker.resource.gpu.amount", "1")
                   .config("spark.worker.resource.gpu.discoveryScript", script)
                   .config("spark.executor.resource.gpu.amount", "1")
                   .config("spark.task.resource.gpu.amount", str(TASK_GPU_AMOUNT)))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


# ---- the runs -----------------------------------------------------------------------------
def run_fit(weights: list[np.ndarray], x: np.ndarray, y: np.ndarray, x_test: np.ndarray,
            y_test: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """``model.fit`` in this process, on its GPU; the replica is built as a worker's is."""
    import keras

    from distkeras.devices import model_devices
    from distkeras.models import blueprint

    class Clock(keras.callbacks.Callback):
        first_batch: float | None = None

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self.first_batch = self.first_batch or time.time()

    model = build_model(args.seed, args.image, args.width)
    model.set_weights(weights)
    model = blueprint(model, "adam", "sparse_categorical_crossentropy").build(
        dtype_policy=args.dtype_policy)
    clock = Clock()
    called = time.time()
    model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, shuffle=True, verbose=0,
              callbacks=[clock])
    returned = time.time()
    samples = len(x) * args.epochs
    steady = returned - (clock.first_batch or called)
    return {"train_s": returned - called, "accuracy": accuracy(model, x_test, y_test),
            "num_workers": 1, "samples_trained": samples, "steady_s": steady,
            "samples_per_s": samples / steady if steady > 0 else None,
            "devices": [model_devices(model)]}


def run_distkeras(spark: Any, workers: int, weights: list[np.ndarray], x_test: np.ndarray,
                  y_test: np.ndarray, args: argparse.Namespace,
                  blocks: int) -> dict[str, Any]:
    import distkeras

    df = spark_frame(spark, args.seed, blocks, args.block_rows, args.image, workers)
    try:
        model = build_model(args.seed, args.image, args.width)
        model.set_weights(weights)
        cls = getattr(distkeras, args.trainer)
        trainer = cls(model, worker_optimizer="adam", loss="sparse_categorical_crossentropy",
                      num_workers=workers, batch_size=args.batch_size, num_epoch=args.epochs,
                      communication_window=args.window, verbose=0, seed=args.seed,
                      dtype_policy=args.dtype_policy)
        called = time.time()
        trained = trainer.train(df, repartition=False, validate=False)
        returned = time.time()
    finally:
        df.unpersist()
    reports = sorted(trainer.worker_reports, key=lambda r: r["worker"])
    return {"train_s": returned - called, "accuracy": accuracy(trained, x_test, y_test),
            "num_workers": workers, "trainer": args.trainer,
            "window": trainer.communication_window,
            "devices": [r["devices"] for r in reports],
            "gpu_addresses": [r["gpu_addresses"] for r in reports],
            "worker_dtype_policy": sorted({r["dtype_policy"] for r in reports}),
            **worker_timing(reports, called, returned)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes and a fake GPU '0': runs on CPU in seconds")
    parser.add_argument("--rows", type=int, default=40960, help="training rows")
    parser.add_argument("--test-rows", type=int, default=2048, help="held-out rows")
    parser.add_argument("--block-rows", type=int, default=256, help="rows per data block")
    parser.add_argument("--image", type=int, default=32, help="image side in pixels")
    parser.add_argument("--width", type=float, default=1.0, help="scales the CNN's filters")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--trainer", default="DOWNPOUR", help="a distkeras trainer class")
    parser.add_argument("--window", type=int, default=10, help="communication_window")
    parser.add_argument("--workers", default="1,2", help="comma list of num_workers")
    parser.add_argument("--dtype-policy", default=None,
                        help="mixed_float16 or mixed_bfloat16, for model.fit and the workers")
    parser.add_argument("--cores", type=int, default=2, help="the executor's cores")
    parser.add_argument("--executor-memory-mb", type=int, default=8192)
    parser.add_argument("--master", default=None,
                        help="a Spark master of yours (default: local-cluster with the GPU)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="1: a small untimed run first (imports the backend in the "
                             "Python workers); 0: none")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.test_rows, args.block_rows, args.image = 128, 64, 32, 16
        args.width, args.epochs, args.batch_size, args.window = 0.25, 1, 16, 2
        args.executor_memory_mb, args.warmup = 1024, 0
    args.workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    if max(args.workers) > args.cores:
        parser.error("--workers needs at most --cores workers (their tasks run at once)")
    if args.rows < args.block_rows:
        parser.error("--rows must be at least --block-rows")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # model.fit in this process shares the GPU with the executors: memory growth, set
    # before TensorFlow is imported (the executors' tasks get it from distkeras)
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    blocks = args.rows // args.block_rows
    test_blocks = max(args.test_rows // args.block_rows, 1)
    x, y = make_blocks(args.seed, range(blocks), args.block_rows, args.image)
    x_test, y_test = make_blocks(args.seed, range(blocks, blocks + test_blocks),
                                 args.block_rows, args.image)
    model = build_model(args.seed, args.image, args.width)
    weights = model.get_weights()
    info = machine_info()
    common = {"bench": "gpu", "smoke": args.smoke, "gpu_name": gpu_name(),
              "params": int(model.count_params()), "rows": len(x), "test_rows": len(x_test),
              "image": args.image, "epochs": args.epochs, "batch_size": args.batch_size,
              "dtype_policy": args.dtype_policy, "seed": args.seed,
              "task_gpu_amount": None if args.master else TASK_GPU_AMOUNT,
              "master": args.master or "local-cluster"}
    log(f"gpu: model.fit on {common['gpu_name'] or 'no GPU (CPU)'}, "
        f"{common['params']:,} parameters, {len(x):,} rows")
    fit = run_fit(weights, x, y, x_test, y_test, args)
    emit({**common, "run": "model.fit", **fit, "ratio_to_fit": 1.0, **info, "utc": utc_now()},
         args.out)
    with tempfile.TemporaryDirectory() as folder:
        spark = start_spark(args, discovery_script(folder, fake=args.smoke))
        try:
            if args.warmup:
                log("gpu: warm-up run (the backend's import in the Python workers)")
                warm = argparse.Namespace(**{**vars(args), "epochs": 1})
                run_distkeras(spark, max(args.workers), weights, x_test, y_test, warm,
                              max(len(args.workers), max(args.workers)))
            for workers in args.workers:
                log(f"gpu: distkeras {args.trainer}, {workers} worker(s)")
                record = {**common, "run": "distkeras",
                          **run_distkeras(spark, workers, weights, x_test, y_test, args,
                                          blocks)}
                speed, base = record.get("samples_per_s"), fit["samples_per_s"]
                record["ratio_to_fit"] = speed / base if speed and base else None
                if workers == 2:
                    record["target_ratio"] = TARGET_RATIO
                    record["meets_target"] = (record["ratio_to_fit"] >= TARGET_RATIO
                                              if record["ratio_to_fit"] is not None else None)
                emit({**record, **info, "utc": utc_now()}, args.out)
        finally:
            spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
