"""Training over Spark Connect, where RDDs do not exist: the Arrow path end to end.

The suite starts a real Spark Connect server (its own process and JVM) on loopback and a
client process (``connect_client.py``): a Connect session switches PySpark into Connect mode
for its whole process, so it cannot share the suite's process with the classic session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
from helpers import free_port

pytestmark = pytest.mark.timeout(600)
HERE = os.path.dirname(__file__)


@pytest.fixture(scope="module")
def connect_runs():
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE")}
    server = subprocess.Popen([sys.executable, os.path.join(HERE, "connect_server.py"),
                               str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, env=env)
    ready = threading.Event()
    threading.Thread(target=lambda: server.stdout.readline() and ready.set(),
                     daemon=True).start()
    try:
        if not ready.wait(timeout=180):
            pytest.fail("the Spark Connect server did not start within 180 s")
        client = subprocess.run([sys.executable, os.path.join(HERE, "connect_client.py"),
                                 str(port)], capture_output=True, text=True, timeout=480,
                                env=env)
        assert client.returncode == 0, client.stderr[-3000:]
        return {r["scenario"]: r for r in map(json.loads, client.stdout.splitlines())}
    finally:
        server.kill()
        server.wait(timeout=30)


def test_connect_session_is_remote(connect_runs):
    assert connect_runs["session"]["module"].startswith("pyspark.sql.connect")


@pytest.mark.parametrize("name", ["ADAG", "EASGD"])
def test_training_over_spark_connect(name, connect_runs):
    run = connect_runs[name]
    assert run["samples_applied"] == 4000  # 2,000 rows x 2 epochs, each applied once
    assert run["workers"] == [0, 1]
    assert run["accuracy"] > 0.75  # 2 epochs of 2,000 digits: learning, not the bar


def test_bad_column_over_connect_fails_before_training(connect_runs):
    assert "'pixels'" in (connect_runs["bad_column"]["error"] or "")


def test_bad_row_over_connect_fails_before_any_worker_starts(connect_runs):
    run = connect_runs["bad_row"]
    assert run["error"] == "column 'features': 1 row(s) hold NaN or inf"
    assert run["connections"] == 0
