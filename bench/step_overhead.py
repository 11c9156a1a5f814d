"""The cost of one training step: Keras' ``fit`` loop vs ``train_on_batch`` (the worker loop).

Why: issue 16 asks whether a compiled multi-step loop (``steps_per_execution``) would speed up
the workers, which train batch by batch with ``train_on_batch`` so that they can exchange with
the parameter server between any two batches. This bench times, in one process and on the
backend of ``KERAS_BACKEND`` (or ``--backend``), ``--steps`` batches of a 784-256-256-10 MLP
(SGD, batch ``--batch-size``) on random data, each way after a warm-up that compiles it:

* ``fit``: one ``model.fit`` over all the batches (Keras' own loop);
* ``train_on_batch``: one call per batch, as a distkeras worker trains;
* ``fit_per_window``: one ``model.fit`` per window of ``--window`` batches (what a worker
  could call between two exchanges), with ``steps_per_execution`` 1 and ``--window``.

One JSON line per way, with ``ms_per_step`` and ``x_fit`` (its time per step over ``fit``'s).

    .venv/bin/python bench/step_overhead.py --backend tensorflow
    .venv/bin/python bench/step_overhead.py --backend jax
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from _common import emit, log, machine_info, utc_now
from first_run import build_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default=None)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    import keras

    b, n, w = args.batch_size, args.steps, args.window
    rng = np.random.default_rng(0)
    x = rng.random((b * n, 784), dtype=np.float32)
    y = rng.integers(0, 10, b * n)
    info = {**machine_info(), "backend": keras.backend.backend()}
    common = {"bench": "step_overhead", "steps": n, "batch_size": b, "window": w}
    timed = {}

    log("step_overhead: fit")
    model = build_model(0, metrics=())
    model.fit(x[:b * 20], y[:b * 20], batch_size=b, verbose=0)
    started = time.perf_counter()
    model.fit(x, y, batch_size=b, epochs=1, shuffle=False, verbose=0)
    timed[("fit", None)] = time.perf_counter() - started

    log("step_overhead: train_on_batch")
    model = build_model(0, metrics=())
    model.train_on_batch(x[:b], y[:b])
    started = time.perf_counter()
    for i in range(n):
        model.train_on_batch(x[i * b:(i + 1) * b], y[i * b:(i + 1) * b])
    timed[("train_on_batch", None)] = time.perf_counter() - started

    for spe in (1, w):
        log(f"step_overhead: fit per window, steps_per_execution={spe}")
        model = build_model(0, spe, metrics=())
        model.fit(x[:b * w], y[:b * w], batch_size=b, verbose=0, shuffle=False)
        started = time.perf_counter()
        for i in range(0, n, w):
            model.fit(x[i * b:(i + w) * b], y[i * b:(i + w) * b], batch_size=b, epochs=1,
                      shuffle=False, verbose=0)
        timed[("fit_per_window", spe)] = time.perf_counter() - started

    fit_s = timed[("fit", None)]
    for (way, spe), seconds in timed.items():
        emit({**common, "way": way, "steps_per_execution": spe, "seconds": seconds,
              "ms_per_step": 1e3 * seconds / n, "x_fit": seconds / fit_s, **info,
              "utc": utc_now()}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
