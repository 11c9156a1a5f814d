"""Partitions larger than worker memory: training speed and peak worker RSS, in memory vs
spilled, at about 1x, 4x and 16x the worker's budget.

Why: a partition over ``worker_memory`` is written once to a local Arrow file and streamed
back every epoch (a shuffled order of blocks, a shuffle window of half the budget). That must
bound the worker's resident memory without slowing training much: the issue's target is
spilled training at >= 0.8 x the samples/s of in-memory training for the MNIST MLP.

For each ratio the bench trains the same model on the same cached DataFrame twice with one
worker: ``worker_memory`` = the budget (the partition spills) and ``worker_memory`` = 4 x the
partition (it is held in memory). Data: the 4,000 MNIST training digits of bench/mnist.py,
repeated to the row count nearest ``ratio`` x budget (784 float32 features and a label: 3,140
bytes a row as the worker stores it), stored in random order (``--clustered``: each digit's
copies next to each other). Model: bench/mnist.py's 784 -> 128 -> 10 MLP, adam,
batch size 32. Speed is the worker's steady state, samples / (finished - first batch), so
it includes every window read of the spilled source; ``to_first_batch_s`` includes reading
(and spilling) the partition. ``peak_rss`` and ``base_rss`` come from ``worker_reports``.
After each training run a Spark job measures the data path alone, as the worker runs it:
rows/s reading (and spilling) the partition, rows/s taking one epoch of batches, and that
task's RSS growth.

    .venv/bin/python bench/spill.py                                  # 32m budget, 1x 4x 16x
    .venv/bin/python bench/spill.py --ratios 4 --epochs 1            # a quick check
    .venv/bin/python bench/spill.py --out bench/out/spill.jsonl
    .venv/bin/python bench/spill.py --arrow-records 1000    # Arrow batches of 3 MB, not 31

Besides its rows a worker holds up to two Arrow record batches from Spark (the one being read
and the one before); at 10,000 MNIST rows (Spark's default) that is 2 x 31 MB, which is
about twice a 32 MiB budget: ``--arrow-records`` shows the budget's effect without it.
"""

from __future__ import annotations

import argparse
import os
import time

from _common import emit, log, machine_info, utc_now

ROW_BYTES = (784 + 1) * 4


def feed_job(frame, plan, memory: int, batch: int) -> dict:
    """The data path alone, in one Spark task: read (and spill) the partition, then take one
    epoch of batches as the batch loop does; rows/s of each, and the task's peak RSS."""
    import pyarrow as pa

    def task(batches):
        from distkeras.memory import PeakRSS, rss
        from distkeras.rows import Order, collect
        from distkeras.spill import SpillDir

        peak, base = PeakRSS().start(), rss()
        with SpillDir("bench", 0) as spill:
            started = time.perf_counter()
            source = collect(plan, plan.arrow_chunks(batches), memory, spill, Order(1, 0))
            loaded = time.perf_counter()
            for first in range(0, source.rows, batch):
                source.take(0, range(first, min(source.rows, first + batch)))
            done = time.perf_counter()
            result = {"rows": source.rows, "spilled": source.spilled,
                      "read_rows_per_s": source.rows / (loaded - started),
                      "epoch_rows_per_s": source.rows / (done - loaded),
                      "feed_rss_growth": peak.stop() - base}
            source.close()
        yield pa.RecordBatch.from_pylist([result])

    schema = ("rows long, spilled long, read_rows_per_s double, epoch_rows_per_s double, "
              "feed_rss_growth long")
    (row,) = plan.arrow_frame(frame).coalesce(1).mapInArrow(task, schema).collect()
    return row.asDict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="32m", help="worker_memory of the spilled runs")
    parser.add_argument("--ratios", default="1,4,16", help="partition size / budget")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--trainer", default="SingleTrainer")
    parser.add_argument("--reps", type=int, default=1, help="runs of each (best kept)")
    parser.add_argument("--arrow-records", type=int, default=10000,
                        help="spark.sql.execution.arrow.maxRecordsPerBatch: rows of one Arrow "
                             "record batch reaching a worker (Spark's default: 10000)")
    parser.add_argument("--clustered", action="store_true",
                        help="keep the copies of each digit next to each other (a sorted data "
                             "set: shows what the block shuffle loses against a full one)")
    parser.add_argument("--reuse-workers", action="store_true",
                        help="let Spark reuse Python workers between tasks (RSS less clear)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    from mnist import accuracy, build_model, load_data, make_dataframe
    from pyspark.sql import functions as F

    import distkeras
    from distkeras.data import plan_columns
    from distkeras.memory import parse_size
    from distkeras.spark import local_session

    budget = parse_size(args.budget, "--budget")
    # a fresh Python worker per task (no reuse): base_rss then holds only the interpreter, the
    # backend and the model, not what an earlier task's allocators kept
    spark = local_session(1, app_name="distkeras-bench-spill",
                          spark_python_worker_reuse="true" if args.reuse_workers else "false",
                          spark_sql_execution_arrow_maxRecordsPerBatch=str(args.arrow_records),
                          spark_driver_memory="4g")  # caches up to 2 x 540 MB of rows at 16x
    x, y, x_test, y_test = load_data(0, 4000)
    weights = build_model(0).get_weights()
    # warm-up (not reported): the Python worker's start and the backend's import
    warm = make_dataframe(spark, x, y, 1, 1)
    getattr(distkeras, args.trainer)(build_model(0), loss="categorical_crossentropy",
                                     num_workers=1, verbose=0).train(warm, validate=False)
    warm.unpersist()
    for ratio in [float(r) for r in args.ratios.split(",")]:
        repeat = max(1, round(ratio * budget / ROW_BYTES / len(x)))
        rows = repeat * len(x)
        frame = make_dataframe(spark, x, y, repeat, 1)  # the copies of a digit adjacent
        if not args.clustered:  # stored in random order, as most data sets are
            shuffled = frame.orderBy(F.rand(seed=2)).cache()
            shuffled.count()
            frame.unpersist()
            frame = shuffled
        plan = plan_columns(frame, "features", "label", build_model(0),
                            "categorical_crossentropy")
        for rep in range(args.reps):
            modes = [("memory", 4 * rows * ROW_BYTES), ("spilled", budget)]
            for mode, memory in modes if rep % 2 == 0 else modes[::-1]:  # alternate: fair
                model = build_model(0)
                model.set_weights(weights)
                trainer = getattr(distkeras, args.trainer)(
                    model, worker_optimizer="adam", loss="categorical_crossentropy",
                    num_workers=1, batch_size=args.batch, num_epoch=args.epochs, verbose=0,
                    seed=1, worker_memory=memory)
                load_before = os.getloadavg()[0]
                called = time.time()
                trained = trainer.train(frame, validate=False)
                (report,) = trainer.worker_reports
                steady = report["finished"] - report["first_batch"]
                record = {
                    "bench": "spill", "utc": utc_now(), **machine_info(), "mode": mode,
                    "rep": rep, "trainer": args.trainer, "budget": budget,
                    "worker_memory": memory, "rows": rows,
                    "partition_bytes": rows * ROW_BYTES,
                    "ratio": rows * ROW_BYTES / budget, "epochs": args.epochs,
                    "batch_size": args.batch, "arrow_records": args.arrow_records,
                    "stored_order": "clustered" if args.clustered else "random",
                    "spilled": report["spilled"],
                    "samples": report["samples"], "steady_s": steady,
                    "samples_per_s": report["samples"] / steady,
                    "to_first_batch_s": report["first_batch"] - called,
                    "train_s": time.time() - called,
                    "peak_rss": report["peak_rss"], "base_rss": report["base_rss"],
                    "rss_growth": report["peak_rss"] - report["base_rss"],
                    "accuracy": accuracy(trained, x_test, y_test),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()[0]}
                feed = feed_job(frame, plan, memory, args.batch)
                record.update({k: v for k, v in feed.items() if k not in ("rows", "spilled")})
                emit(record, args.out)
                log(f"{mode} {rows} rows: {record['samples_per_s']:.0f} samples/s, "
                    f"RSS growth {record['rss_growth'] / 2**20:.0f} MiB")
        frame.unpersist()
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
