"""local_session's driver heap (the executors of a local session live in the driver's JVM,
so Spark's default 1 GiB heap is too small for this library's data: it ran out on 100,000
cached 784-wide rows in bench/first_run.py, 2 runs of 4) and its Python workers, forked from
a daemon that imported the Keras backend's library once (distkeras.daemon)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

from distkeras import backends, daemon
from distkeras.backends import backend_library, configured_backend
from distkeras.spark import default_driver_memory, preload_modules

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
    import pyarrow as pa

    library = backend_library(backends.driver_backend())
    if library is None:
        pytest.skip("this backend has no library to preload")
    conf = spark.sparkContext.getConf()
    assert conf.get("spark.python.daemon.module") == "distkeras.daemon"
    assert conf.get(f"spark.executorEnv.{daemon.PRELOAD_ENV}").split(",")[0] == library

    def probe(batches):
        for _ in batches:
            pass
        parent = os.getppid()
        with open(f"/proc/{parent}/cmdline", "rb") as cmdline:
            command = cmdline.read().replace(b"\0", b" ").decode()
        with open(f"/proc/{parent}/maps") as maps:
            mapped = MAPPED[library] in maps.read()
        yield pa.RecordBatch.from_pylist([{"parent": command, "mapped": mapped}])

    rows = spark.range(0, 2, 1, 2).mapInArrow(probe, "parent string, mapped boolean").collect()
    assert len(rows) == 2
    for row in rows:
        assert "distkeras.daemon" in row["parent"], row["parent"]
        assert row["mapped"], f"the daemon did not import {library}"
