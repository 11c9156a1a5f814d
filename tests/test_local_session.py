"""local_session's driver heap (the executors of a local session live in the driver's JVM,
so Spark's default 1 GiB heap is too small for this library's data: it ran out on 100,000
cached 784-wide rows in bench/first_run.py, 2 runs of 4) and its Python workers, forked from
a daemon that imported the Keras backend's library once (distkeras.daemon), while the JVM
started (distkeras.forkserver)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from distkeras import backends, daemon, forkserver
from distkeras.backends import backend_library, configured_backend
from distkeras.spark import (
    default_driver_memory,
    preload_modules,
    threads_per_worker,
    worker_threads,
)

GIB = 2**30


@pytest.mark.parametrize("physical, expected", [
    (24 * GIB, "2048m"),
    (6 * GIB, "1536m"),  # a quarter of a small machine
    (2 * GIB, "1024m"),  # never below Spark's own default
    (0, "1024m"),  # unknown
])
def test_default_driver_memory(physical, expected):
    assert default_driver_memory(physical) == expected


def test_the_session_jvm_got_that_heap(spark):
    configured = spark.sparkContext.getConf().get("spark.driver.memory")
    assert configured == default_driver_memory()
    max_heap = spark.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory()
    # the JVM reports a little less than -Xmx (one survivor space is not counted)
    assert max_heap > 0.85 * int(configured.rstrip("m")) * 2**20, (max_heap, configured)


def test_configured_backend_is_keras_own_choice_read_without_importing_it(monkeypatch,
                                                                          tmp_path):
    monkeypatch.setattr(backends, "current_backend", lambda: None)  # as before `import keras`
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert configured_backend() == "jax"
    monkeypatch.delenv("KERAS_BACKEND")
    assert configured_backend() == "tensorflow"  # no keras.json: Keras' default
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "torch"}))
    assert configured_backend() == "torch"


def test_backend_library():
    assert backend_library("numpy") is None  # nothing to preload
    assert backend_library("no_such_backend") is None
    expected = "tensorflow" if importlib.util.find_spec("tensorflow") else None
    assert backend_library("tensorflow") == expected


def test_the_daemon_preloads_what_it_can_and_says_what_it_cannot(capsys):
    assert daemon.preload("json, no_such_module_here,") == ["json"]
    assert "could not preload no_such_module_here" in capsys.readouterr().err


def test_no_preload_when_the_workers_python_cannot_import_the_daemon(monkeypatch, tmp_path):
    if backend_library(configured_backend()) is None:
        pytest.skip("this backend has no library to preload")
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\nexit 1\n")  # a Python without distkeras, as it answers
    python.chmod(0o755)
    monkeypatch.setenv("PYSPARK_PYTHON", str(python))
    assert preload_modules() is None
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    library = backend_library(configured_backend())
    expected = f"{library},keras" if configured_backend() == "jax" else library
    assert preload_modules() == expected


#: a file of each library that its import maps into the process
MAPPED = {"tensorflow": "/tensorflow/", "jax": "/jaxlib/", "torch": "/torch/"}


def test_workers_fork_from_a_daemon_that_imported_the_backend(spark):
    """... before the JVM started: the fork server's child (distkeras.forkserver), with the
    environment Spark gave its daemon."""
    import pyarrow as pa

    library = backend_library(backends.driver_backend())
    if library is None:
        pytest.skip("this backend has no library to preload")
    conf = spark.sparkContext.getConf()
    assert conf.get("spark.python.daemon.module") == "distkeras.daemon"
    assert conf.get(f"spark.executorEnv.{daemon.PRELOAD_ENV}").split(",")[0] == library
    assert conf.get(f"spark.executorEnv.{forkserver.SOCKET_ENV}")

    def probe(batches):
        for _ in batches:
            pass
        parent = os.getppid()
        with open(f"/proc/{parent}/cmdline", "rb") as cmdline:
            command = cmdline.read().replace(b"\0", b" ").decode()
        with open(f"/proc/{parent}/maps") as maps:
            mapped = MAPPED[library] in maps.read()
        spark_set = "SPARK_REUSE_WORKER" in os.environ  # by the JVM for its daemon only
        handed = forkserver.SOCKET_ENV not in os.environ
        yield pa.RecordBatch.from_pylist([{"parent": command, "mapped": mapped,
                                           "spark_set": spark_set, "handed": handed}])

    rows = spark.range(0, 2, 1, 2).mapInArrow(
        probe, "parent string, mapped boolean, spark_set boolean, handed boolean").collect()
    assert len(rows) == 2
    for row in rows:
        assert "distkeras.forkserver" in row["parent"], row["parent"]
        assert row["mapped"], f"the daemon did not import {library}"
        assert row["spark_set"] and row["handed"], row


# ---- the workers' CPU threads: distkeras.spark.worker_threads, backends.limit_threads -------
@pytest.mark.parametrize("cores, task_cpus, workers, threads", [
    (2, 1, 2, 1),    # local[2], two workers: one core each, not two threads each
    (2, 1, 1, 2),    # a single worker has the machine
    (8, 1, 2, 4),
    (8, 1, 16, 1),   # more workers than slots: a slot each
    (32, 1, 4, 8),   # a cluster's 32 cores, 4 workers
    (64, 2, 64, 2),  # spark.task.cpus=2: at least that
    (4, 2, 4, 2),
])
def test_threads_per_worker_share_the_slots_cores(cores, task_cpus, workers, threads):
    assert threads_per_worker(cores, task_cpus, workers) == threads


def test_worker_threads_read_the_sessions_cores(spark):
    sc = spark.sparkContext  # local[2]
    assert (worker_threads(sc, spark, 2), worker_threads(sc, spark, 1)) == (1, 2)


LIMIT_PROBE = """
import json, os, sys
from distkeras.backends import cpu_threads, limit_threads
limit_threads("tensorflow", int(sys.argv[1]))
import tensorflow as tf
tf.constant(1.0) + 1.0  # starts TensorFlow
limit_threads("tensorflow", 5)  # too late: no error, the pools stay
print(json.dumps({"intra": cpu_threads("tensorflow"),
                  "inter": tf.config.threading.get_inter_op_parallelism_threads()}))
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("user_env", [False, True])
def test_limit_threads_sizes_tensorflows_pools_unless_the_user_did(user_env):
    pytest.importorskip("tensorflow")
    env = {k: v for k, v in os.environ.items() if k not in backends.TF_THREAD_ENV}
    if user_env:
        env["TF_NUM_INTRAOP_THREADS"] = "3"
    done = subprocess.run([sys.executable, "-c", LIMIT_PROBE, "1"], env=env,
                          capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr[-2000:]
    pools = json.loads(done.stdout.strip().splitlines()[-1])
    # the environment's pools are TensorFlow's own business (its getter reports 0 for them)
    assert pools == ({"intra": 0, "inter": 0} if user_env else {"intra": 1, "inter": 1})


TRAIN_PROBE = """
import json, sys
import numpy as np, keras, distkeras
spark = distkeras.local_session(2, app_name="distkeras-threads-probe")
rng = np.random.default_rng(0)
df = spark.createDataFrame([(rng.normal(size=4).tolist(), int(i % 3)) for i in range(64)],
                           ["features", "label"])
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
trainer = distkeras.DOWNPOUR(model, loss="sparse_categorical_crossentropy", num_workers=2,
                             batch_size=8, verbose=0)
trainer.train(df)
print(json.dumps({"workers": sorted(r["cpu_threads"] for r in trainer.worker_reports),
                  "pids": len({r["pid"] for r in trainer.worker_reports})}))
spark.stop()
"""


@pytest.mark.timeout(240)
def test_two_workers_on_two_cores_run_one_thread_each():
    """A fresh session (its Python workers start here): each of the two workers' TensorFlow
    runs one thread per pool instead of one per core of the host."""
    if backends.driver_backend() != "tensorflow":
        pytest.skip("the thread pools are sized for TensorFlow only")
    done = subprocess.run([sys.executable, "-c", TRAIN_PROBE], capture_output=True, text=True,
                          timeout=230)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"workers": [1, 1], "pids": 2}, found
