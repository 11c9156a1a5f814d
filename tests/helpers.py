"""Helpers shared by several test modules: import them from here, never from another test
module (``from helpers import mlp, accuracy``). Fixtures every module gets for free live in
conftest.py; what is here is imported by name."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from distkeras.workers import ServerLink

# the MNIST training bar (tests/test_training.py): held-out accuracy within TOLERANCE of
# model.fit with the same optimizer, BATCH size and EPOCHS
EPOCHS = 5
BATCH = 32
TOLERANCE = 0.03


def mlp(seed=1, hidden=64):
    """The MNIST digits classifier of the training tests: 784 -> hidden (relu) -> 10 (softmax),
    its initial weights fixed by ``seed``."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((784,)), keras.layers.Dense(hidden, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def accuracy(model, x, y):
    """Fraction of the rows of ``x`` whose predicted class is the integer label in ``y``."""
    return float((model.predict(x, verbose=0, batch_size=500).argmax(axis=1) == y).mean())


def one_hot(labels, classes=10):
    """Integer class labels as one-hot rows, as Keras' categorical losses want them."""
    import keras

    return keras.utils.to_categorical(labels, classes)


@pytest.fixture(scope="module")
def reference_accuracy(digits):
    """Held-out accuracy of plain ``model.fit`` with the training tests' settings."""
    import keras

    x, y, xt, yt = digits
    model = mlp()
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, keras.utils.to_categorical(y, 10), batch_size=BATCH, epochs=EPOCHS, verbose=0)
    return accuracy(model, xt, yt)


def shift_layer(package):
    """A custom Keras layer class (adds ``by`` to its input) registered under ``package``;
    defined in a function, so it travels to the workers by value, as a notebook's would."""
    import keras

    @keras.saving.register_keras_serializable(package=package)
    class Shift(keras.layers.Layer):
        def __init__(self, by=0.0, **kwargs):
            super().__init__(**kwargs)
            self.by = by

        def call(self, inputs):
            return inputs + self.by

        def get_config(self):
            return {**super().get_config(), "by": self.by}

    return Shift


def server_threads() -> list[str]:
    """Names of the parameter-server threads still running (none once training is over)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("distkeras-ps")]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---- a well-behaved worker next to hostile peers (the protocol and fuzz tests) -------------
class GoodWorker(threading.Thread):
    """Commits +1 to every weight, over and over, until told to stop."""

    def __init__(self, server, layout, token):
        super().__init__(daemon=True)
        self.link = ServerLink(server.address, token, layout, worker=0)
        self.commits = 0
        self.error = None
        self.stop = threading.Event()

    def run(self):
        try:
            ones = np.ones(self.link.layout.num_params, dtype=np.float32)
            self.link.pull()
            while not self.stop.is_set() or self.commits < 20:
                self.link.samples = 1
                self.link.commit_and_pull(ones)
                self.commits += 1
                time.sleep(0.002)
            self.link.bye()
        except Exception as error:  # noqa: BLE001 - reported by the test
            self.error = error


def closed_by_server(sock, timeout=10.0):
    """True once the server has closed ``sock`` (reads EOF or reset within ``timeout``)."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def wait_for(condition, timeout=30.0, interval=0.01):
    """Poll ``condition()`` until it is true or ``timeout`` seconds have passed; returns its
    last value (synchronise on the state expected, not on a sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
