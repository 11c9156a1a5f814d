"""Construction-time warnings of the elastic-averaging trainers (no Spark needed).

AEASGD and EASGD: alpha = rho * learning_rate uses the trainer's ``learning_rate``, so a
worker optimizer with another learning rate is worth a warning. EAMSGD: the worker optimizer
is replaced by Nesterov SGD, so a given one is worth a warning (and only that one).
"""

from __future__ import annotations

import warnings

import keras
import pytest

from distkeras.trainers import AEASGD, EAMSGD, EASGD, _learning_rate

SGD_001 = {"class_name": "SGD", "config": {"learning_rate": 0.01}}


def tiny(compile_with=None):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    if compile_with is not None:
        model.compile(optimizer=compile_with, loss="mse")
    return model


def make(cls, model, **kwargs):
    return cls(model, loss="mse", num_workers=2, verbose=0, **kwargs)


def no_warning(cls, model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return make(cls, model, **kwargs)


@pytest.mark.parametrize("cls", [AEASGD, EASGD])
@pytest.mark.parametrize("optimizer, rate", [
    ("adam", "0.001"),  # a name: Keras's default learning rate
    ({"class_name": "SGD", "config": {"learning_rate": 0.1}}, "0.1"),
    (keras.optimizers.RMSprop(learning_rate=0.05), "0.05"),
])
def test_elastic_trainers_warn_when_the_optimizer_rate_differs(cls, optimizer, rate):
    with pytest.warns(UserWarning, match=rf"learning rate is {rate} but learning_rate=0\.01; "
                                         r"the elastic coefficient alpha = rho \* "
                                         r"learning_rate = 0\.05 uses the trainer's"):
        make(cls, tiny(), worker_optimizer=optimizer)


def test_the_compiled_optimizer_counts_when_none_is_given():
    with pytest.warns(UserWarning, match=r"learning rate is 0\.3 but learning_rate=0\.02"):
        make(AEASGD, tiny(keras.optimizers.SGD(0.3)), learning_rate=0.02)
    # a worker_optimizer given overrides the compiled one
    no_warning(AEASGD, tiny(keras.optimizers.SGD(0.3)), worker_optimizer=SGD_001)


@pytest.mark.parametrize("cls", [AEASGD, EASGD])
def test_no_warning_when_the_rates_agree_or_are_unknown(cls):
    no_warning(cls, tiny(), worker_optimizer=SGD_001, learning_rate=0.01)
    no_warning(cls, tiny(), worker_optimizer="adam", learning_rate=0.001, rho=5.0)
    no_warning(cls, tiny(keras.optimizers.Adam(0.01)))
    no_warning(cls, tiny())  # nothing given: nothing to compare
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)
    no_warning(cls, tiny(), worker_optimizer=keras.optimizers.SGD(schedule))


def test_learning_rate_reader():
    assert _learning_rate("sgd") == pytest.approx(0.01)
    assert _learning_rate(SGD_001) == pytest.approx(0.01)
    assert _learning_rate(keras.optimizers.Adam(0.2)) == pytest.approx(0.2)
    for unreadable in (None, "no-such-optimizer", {"nonsense": 1}, object(),
                       keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(
                           0.1, 10, 0.9))):
        assert _learning_rate(unreadable) is None


@pytest.mark.parametrize("model, kwargs, source", [
    (tiny(), {"worker_optimizer": "adam"}, "worker_optimizer"),
    (tiny(), {"worker_optimizer": SGD_001}, "worker_optimizer"),
    (tiny("rmsprop"), {}, "the model's compiled optimizer"),
])
def test_eamsgd_warns_once_that_the_optimizer_is_replaced(model, kwargs, source):
    with pytest.warns(UserWarning) as record:
        make(EAMSGD, model, learning_rate=0.02, momentum=0.8, **kwargs)
    messages = [str(w.message) for w in record if issubclass(w.category, UserWarning)]
    assert messages == [f"EAMSGD trains the workers with SGD(learning_rate=0.02, momentum=0.8, "
                        f"nesterov=True); {source} is not used"]


def test_eamsgd_is_silent_without_an_optimizer():
    no_warning(EAMSGD, tiny())
