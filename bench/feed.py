"""Feeding workers: rows/s from a DataFrame to numpy arrays, Arrow path vs RDD row path.

Why: before a worker trains its first batch it turns its whole partition into numpy. The
Arrow path (``mapInArrow``, Vectors converted to arrays in the JVM) is the default; the row
path (``mapPartitions`` over Row objects) is what users holding RDDs get. This bench runs
both through the same ``ColumnPlan`` code the trainers use, on a cached DataFrame of
MNIST-sized rows (784 float features as a Spark ML Vector, an integer label), and reports
rows/s for the whole Spark job (scheduling included) with ``--workers`` partitions.

    .venv/bin/python bench/feed.py                       # 40,000 and 200,000 rows
    .venv/bin/python bench/feed.py --rows 10000 --reps 1 --out bench/out/feed.jsonl
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import emit, machine_info, utc_now


def build_frame(spark, rows: int, workers: int):
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    width = 784
    frame = (spark.range(rows, numPartitions=workers)
             .select(F.array(*[(F.rand(seed=i) * 255).cast("float") for i in range(width)])
                     .alias("pixels"), (F.col("id") % 10).alias("label"))
             .select(array_to_vector("pixels").alias("features"), "label"))
    return frame.cache()


def arrow_job(frame, plan) -> int:
    import pyarrow as pa

    def convert(batches):
        xs, ys = plan.arrow_to_numpy(batches)
        yield pa.RecordBatch.from_pylist([{"n": int(len(xs[0]))}])

    return sum(r.n for r in plan.arrow_frame(frame).mapInArrow(convert, "n long").collect())


def rdd_job(frame, plan) -> int:
    def convert(rows):
        xs, ys = plan.rows_to_numpy(rows)
        yield len(xs[0])

    return sum(frame.select(*plan.names).rdd.mapPartitions(convert).collect())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="40000,200000", help="comma list of row counts")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (best kept)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import keras

    from distkeras.data import plan_columns
    from distkeras.spark import local_session

    # 200,000 cached rows of 784 doubles are 1.3 GB in the JVM: more than Spark's default
    # 1 GB driver heap of local mode (java.lang.OutOfMemoryError while caching)
    spark = local_session(args.workers, app_name="distkeras-bench-feed",
                          spark_driver_memory="4g")
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, activation="softmax")])
    for rows in [int(r) for r in args.rows.split(",")]:
        frame = build_frame(spark, rows, args.workers)
        frame.count()
        plan = plan_columns(frame, "features", "label", model, "categorical_crossentropy")
        for path, job in (("arrow", arrow_job), ("rdd", rdd_job)):
            job(frame, plan)  # warm the Python workers
            times = []
            for _ in range(args.reps):
                started = time.perf_counter()
                assert job(frame, plan) == rows
                times.append(time.perf_counter() - started)
            best = float(np.min(times))
            emit({"bench": "feed", "utc": utc_now(), **machine_info(), "path": path,
                  "rows": rows, "workers": args.workers, "features": 784,
                  "seconds": best, "rows_per_s": rows / best,
                  "mb_per_s": rows * 784 * 4 / best / 1e6}, args.out)
        frame.unpersist()
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
