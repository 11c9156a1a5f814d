"""GPU placement on a real Spark standalone cluster whose worker declares two fake GPUs.

The worker's discovery script says it has GPUs "0" and "1"; the application asks for both on
its executor and for half a GPU per task, so two tasks share one address, as fractional
``spark.task.resource.gpu.amount`` does on a real GPU cluster. Nothing here needs a GPU: on
a host without one the backend trains on the CPU, and the checks are that each task applied
exactly the address Spark assigned it (``CUDA_VISIBLE_DEVICES`` in its Python worker) and
that the reports tell the assigned addresses apart from where the replicas really lived.
One driver subprocess (this test session already holds a local SparkContext) runs three jobs
on one cluster: training, a probe with a stage-level profile of one whole GPU per task (in
the training's reused Python workers), and distributed prediction.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys

import pytest
from helpers import cluster_env, standalone_cluster

from distkeras.devices import host_gpus

pytestmark = pytest.mark.slow

ROWS = 600

DRIVER = r'''
import json, os, sys, time
import numpy as np

master, rows = sys.argv[1], int(sys.argv[2])
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master(master).appName("distkeras-fake-gpus")
         .config("spark.driver.host", "127.0.0.1")
         .config("spark.driver.bindAddress", "127.0.0.1")
         .config("spark.executor.memory", "1g")
         .config("spark.executor.cores", "2")
         .config("spark.cores.max", "2")
         .config("spark.executor.resource.gpu.amount", "2")
         .config("spark.task.resource.gpu.amount", "0.5")
         .config("spark.python.worker.reuse", "true")  # Spark's default, said out loud
         .config("spark.ui.enabled", "false")
         .getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
import keras
import distkeras

rng = np.random.default_rng(0)
x = rng.normal(size=(rows, 4)).astype(np.float32)
y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
df = spark.createDataFrame([(r.tolist(), int(v)) for r, v in zip(x, y)], ["features", "label"])
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                          keras.layers.Dense(2, activation="softmax")])
trainer = distkeras.DOWNPOUR(model, worker_optimizer="adam",
                             loss="sparse_categorical_crossentropy", num_workers=2,
                             batch_size=16, num_epoch=2, verbose=1)
trained = trainer.train(df)
reports = [{k: r[k] for k in ("worker", "pid", "gpu_addresses", "devices")}
           for r in trainer.worker_reports]


def probe(batches):
    """A task asking for one whole GPU, in a Python worker the training pinned (the same
    kind of task as the training's, an Arrow one, so Spark reuses its Python workers)."""
    import pyarrow as pa
    from pyspark import TaskContext
    from distkeras.devices import place

    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    assigned = TaskContext.get().resources()["gpu"].addresses
    placement = place()
    for _ in batches:
        pass
    time.sleep(1.0)  # both tasks hold a Python worker at the same time
    seen = {"pid": os.getpid(), "assigned": list(assigned), "before": before,
            "after": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "gpu_addresses": list(placement.gpu_addresses), "source": placement.source,
            "visible": list(placement.visible), "index": placement.index,
            "pinned": placement.pinned, "note": placement.note}
    yield pa.RecordBatch.from_pylist([{"j": json.dumps(seen)}])


from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests
whole = ResourceProfileBuilder().require(TaskResourceRequests().cpus(1).resource("gpu", 1.0))
probes = [json.loads(row.j) for row in
          df.repartition(2).mapInArrow(probe, "j string", profile=whole.build).collect()]

scored = distkeras.ModelPredictor(trained, output_col="p").predict(df).select("p").collect()
predicted = np.array([row["p"].toArray() for row in scored], dtype=np.float32)
expected = trained.predict(x, verbose=0)
print("RESULT " + json.dumps({
    "samples_applied": trainer.history.samples_applied, "reports": reports, "probes": probes,
    "predictions_match": bool(np.allclose(np.sort(predicted, axis=0),
                                          np.sort(expected, axis=0), atol=1e-5)),
}), flush=True)
spark.stop()
'''


def where(address: str, gpus: tuple[str, ...]) -> list[str]:
    """Where a replica assigned ``address`` lives: that GPU if this host has it, else CPU."""
    return [f"GPU:{address}"] if address in gpus else ["CPU"]


@pytest.mark.timeout(420)
def test_each_task_applies_the_gpu_spark_assigned_it(tmp_path):
    script = tmp_path / "gpus.sh"
    script.write_text('#!/bin/sh\necho \'{"name": "gpu", "addresses": ["0", "1"]}\'\n')
    script.chmod(0o755)
    opts = (f"-Dspark.worker.resource.gpu.amount=2 "
            f"-Dspark.worker.resource.gpu.discoveryScript={script}")
    with standalone_cluster(tmp_path, cores=2, memory="2g", worker_opts=opts) as url:
        (tmp_path / "driver.py").write_text(DRIVER)
        done = subprocess.run([sys.executable, str(tmp_path / "driver.py"), url, str(ROWS)],
                              env=cluster_env(tmp_path), capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
    tail = f"\n--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-4000:]}"
    assert done.returncode == 0, f"driver exit code {done.returncode}{tail}"
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, f"no RESULT line{tail}"
    result = json.loads(line[len("RESULT "):])
    print(result)
    gpus = host_gpus()

    # training: each worker was given one of the worker's GPUs, at most two tasks per GPU
    # (half a GPU each), and its replica lived where that GPU is (the CPU on this host)
    reports = result["reports"]
    assert result["samples_applied"] == 2 * ROWS
    assert sorted(r["worker"] for r in reports) == [0, 1]
    for report in reports:
        assert len(report["gpu_addresses"]) == 1 and report["gpu_addresses"][0] in ("0", "1")
        assert report["devices"] == where(report["gpu_addresses"][0], gpus), report
    per_gpu = collections.Counter(r["gpu_addresses"][0] for r in reports)
    assert max(per_gpu.values()) <= 2
    assert "workers ran on" in done.stdout

    # the probe tasks ran in the training's Python workers: what the training task set in
    # CUDA_VISIBLE_DEVICES is still there, and it is exactly the address Spark gave it
    trained_on = {r["pid"]: ",".join(r["gpu_addresses"]) for r in reports}
    probes = result["probes"]
    reused = [p for p in probes if p["pid"] in trained_on]
    assert reused, (probes, reports)
    for p in reused:
        assert p["before"] == trained_on[p["pid"]], (p, reports)

    # one whole GPU per task: Spark gave the two probes different GPUs, each task saw the
    # address Spark assigned; a reused worker kept its GPU and said so when it differed
    assert sorted(p["assigned"][0] for p in probes) == ["0", "1"], probes
    for p in probes:
        assert p["gpu_addresses"] == p["assigned"] and p["source"] == "spark", p
        if p["before"] is None:  # a fresh Python worker: pinned to the task's GPU
            assert p["pinned"] and p["after"] == ",".join(p["assigned"]), p
            continue
        assert not p["pinned"] and p["after"] == p["before"], p
        assert p["visible"] == p["before"].split(","), p
        if p["assigned"][0] in p["visible"]:
            assert p["note"] is None and p["visible"][p["index"]] == p["assigned"][0], p
        else:
            assert p["index"] == 0 and p["note"], p
            assert "spark.python.worker.reuse=false" in p["note"], p

    # distributed prediction placed its tasks too, and predicts as the driver does
    assert result["predictions_match"]
