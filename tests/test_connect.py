"""Training over Spark Connect, where RDDs do not exist: the Arrow path end to end.

The suite starts a real Spark Connect server (its own process and JVM) on loopback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest
from test_training import accuracy, mlp

import distkeras

pytestmark = pytest.mark.timeout(420)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def remote(spark):  # the classic session starts first: one JVM per process stays the rule
    port = free_port()
    script = os.path.join(os.path.dirname(__file__), "connect_server.py")
    server = subprocess.Popen([sys.executable, script, str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    ready = threading.Event()
    threading.Thread(target=lambda: server.stdout.readline() and ready.set(),
                     daemon=True).start()
    try:
        if not ready.wait(timeout=180):
            pytest.fail("the Spark Connect server did not start within 180 s")
        from pyspark.sql import SparkSession

        session = SparkSession.builder.remote(f"sc://127.0.0.1:{port}").create()
        yield session
        session.stop()
    finally:
        server.kill()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def remote_digits(remote, digits):
    from pyspark.ml.linalg import Vectors

    x, y, _, _ = digits
    return remote.createDataFrame([(Vectors.dense(r), int(v)) for r, v in
                                   zip(x[:2000], y[:2000])], ["features", "label"])


def test_connect_session_is_remote(remote):
    assert type(remote).__module__.startswith("pyspark.sql.connect")


@pytest.mark.parametrize("name", ["ADAG", "EASGD"])
def test_training_over_spark_connect(name, remote_digits, digits):
    _, _, xt, yt = digits
    trainer = getattr(distkeras, name)(mlp(), loss="categorical_crossentropy", num_workers=2,
                                       num_epoch=2, verbose=0, communication_window=3)
    model = trainer.train(remote_digits)
    assert trainer.history.samples_applied == 4000
    assert {r["worker"] for r in trainer.worker_reports} == {0, 1}
    assert accuracy(model, xt, yt) > 0.75  # 2 epochs of 2,000 digits: learning, not the bar


def test_bad_column_over_connect_fails_before_training(remote_digits):
    trainer = distkeras.DOWNPOUR(mlp(), loss="categorical_crossentropy", verbose=0,
                                 features_col="pixels")
    with pytest.raises(distkeras.DataError, match="'pixels'"):
        trainer.train(remote_digits)
