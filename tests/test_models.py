"""distkeras.models: the one ``.keras`` bytes round trip the trainers and the predictors share."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
from helpers import shift_layer

from distkeras.models import blueprint, model_from_bytes, model_to_bytes, pickle_custom_objects

pytestmark = pytest.mark.timeout(300)


def shifted_model():
    import keras

    Shift = shift_layer("distkeras_test_models")
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((3,)), Shift(0.5), keras.layers.Dense(2)])
    return model, Shift


@pytest.mark.parametrize("objects", ["pickled", "dict"])
def test_bytes_round_trip_keeps_weights_and_custom_layers(objects):
    import keras

    model, shift = shifted_model()
    data = model_to_bytes(model)
    custom = pickle_custom_objects() if objects == "pickled" else \
        {"distkeras_test_models>Shift": shift}
    back = model_from_bytes(data, custom)
    assert not back.compiled  # inference needs no optimizer; a replica compiles it itself
    assert [type(layer).__name__ for layer in back.layers] == ["Shift", "Dense"]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(back.predict(x, verbose=0), model.predict(x, verbose=0))
    assert isinstance(back, keras.Sequential)


def test_blueprint_builds_a_compiled_replica_through_the_same_round_trip():
    model, _ = shifted_model()
    bp = blueprint(model, "sgd", "mse", ["mae"])
    replica = bp.build()
    assert replica.compiled and type(replica.optimizer).__name__ == "SGD"
    for mine, theirs in zip(replica.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(mine, theirs)


def test_a_blueprint_unpickles_without_importing_keras():
    """A Spark task unpickles the blueprint before it may import a backend (devices first)."""
    import keras

    bp = blueprint(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), "adam", "mse")
    script = ("import pickle, sys; bp = pickle.loads(sys.stdin.buffer.read()); "
              "print(type(bp).__name__, 'keras' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(bp),
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().split() == ["ModelBlueprint", "False"]
