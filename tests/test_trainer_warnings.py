"""Construction-time warnings of the elastic-averaging trainers (no Spark needed).

AEASGD and EASGD: with a ``rho`` given, alpha = rho * learning_rate uses the trainer's
``learning_rate``, so a worker optimizer with another learning rate is worth a warning; with
the default ``rho=None``, alpha = 0.9 / num_workers does not depend on it, so nothing is.
EAMSGD: the worker optimizer is replaced by Nesterov SGD, so a given one is worth a warning
(and only that one).
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
    return cls(model, loss="mse", **{"num_workers": 2, "verbose": 0, **kwargs})


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
        make(cls, tiny(), worker_optimizer=optimizer, rho=5.0)


def test_the_compiled_optimizer_counts_when_none_is_given():
    with pytest.warns(UserWarning, match=r"learning rate is 0\.3 but learning_rate=0\.02"):
        make(AEASGD, tiny(keras.optimizers.SGD(0.3)), learning_rate=0.02, rho=5.0)
    # a worker_optimizer given overrides the compiled one
    no_warning(AEASGD, tiny(keras.optimizers.SGD(0.3)), worker_optimizer=SGD_001, rho=5.0)


@pytest.mark.parametrize("cls", [AEASGD, EASGD])
def test_no_warning_when_the_rates_agree_or_are_unknown(cls):
    no_warning(cls, tiny(), worker_optimizer=SGD_001, learning_rate=0.01, rho=5.0)
    no_warning(cls, tiny(), worker_optimizer="adam", learning_rate=0.001, rho=5.0)
    no_warning(cls, tiny(keras.optimizers.Adam(0.01)), rho=5.0)
    no_warning(cls, tiny(), rho=5.0)  # nothing given: nothing to compare
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)
    no_warning(cls, tiny(), worker_optimizer=keras.optimizers.SGD(schedule), rho=5.0)


@pytest.mark.parametrize("cls", [AEASGD, EASGD])
@pytest.mark.parametrize("workers", [1, 2, 4, 64])
def test_default_rho_makes_the_workers_pull_the_centre_nine_tenths_of_the_way(cls, workers):
    """rho=None: alpha = 0.9 / n whatever learning_rate and the optimizer say, so nothing
    is worth a warning (and EASGD's stability bound (n + 1) alpha < 2 always holds)."""
    for rate in (0.01, 0.2):
        trainer = no_warning(cls, tiny(keras.optimizers.Adam()), num_workers=workers,
                             learning_rate=rate)
        assert trainer.algorithm.alpha == pytest.approx(0.9 / workers)
    with pytest.raises(ValueError, match="learning_rate must be > 0, got 0"):
        make(cls, tiny(), learning_rate=0)


def test_learning_rate_reader():
    assert _learning_rate("sgd") == pytest.approx(0.01)
    assert _learning_rate(SGD_001) == pytest.approx(0.01)
    assert _learning_rate(keras.optimizers.Adam(0.2)) == pytest.approx(0.2)
    for unreadable in (None, "no-such-optimizer", {"nonsense": 1}, object(),
                       keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(
                           0.1, 10, 0.9))):
        assert _learning_rate(unreadable) is None


@pytest.mark.parametrize("model, kwargs, source", [
    (tiny(), {"worker_optimizer": "adam"}, "worker_optimizer (Adam)"),
    (tiny(), {"worker_optimizer": SGD_001}, "worker_optimizer (SGD)"),
    (tiny("rmsprop"), {}, "the model's compiled optimizer (RMSprop)"),
])
def test_eamsgd_warns_once_that_the_optimizer_is_replaced(model, kwargs, source):
    with pytest.warns(UserWarning) as record:
        make(EAMSGD, model, learning_rate=0.02, momentum=0.8, **kwargs)
    messages = [str(w.message) for w in record if issubclass(w.category, UserWarning)]
    advice = "" if "SGD" in source else (" (with Adam it ended 2.6 to 4.0 points below "
                                         "model.fit; AEASGD keeps the optimizer)")
    assert messages == [f"EAMSGD trains the workers with SGD(learning_rate=0.02, momentum=0.8, "
                        f"nesterov=True); {source} is not used{advice}"]


def test_eamsgd_is_silent_without_an_optimizer():
    trainer = no_warning(EAMSGD, tiny())
    assert (trainer.algorithm.learning_rate, trainer.algorithm.momentum) == (0.01, 0.9)


@pytest.mark.parametrize("optimizer, rate, momentum", [
    (keras.optimizers.SGD(0.05, momentum=0.9), 0.05, 0.9),  # tuned for model.fit: kept
    (keras.optimizers.SGD(0.1, momentum=0.5), 0.1, 0.5),
    (keras.optimizers.SGD(0.03), 0.03, 0.9),  # no momentum: EAMSGD's own
    ("sgd", 0.01, 0.9),
])
def test_eamsgd_adopts_the_users_sgd(optimizer, rate, momentum):
    """A model.fit-tuned SGD carries over (its rate and momentum; Nesterov added), silently."""
    for trainer in (no_warning(EAMSGD, tiny(optimizer)),
                    no_warning(EAMSGD, tiny(), worker_optimizer=optimizer)):
        rule = trainer.algorithm
        assert (rule.learning_rate, rule.momentum) == pytest.approx((rate, momentum))
        assert rule.alpha == pytest.approx(0.9 / 2)  # rho=None: independent of the rate
        assert rule.worker_optimizer(None)["config"] == pytest.approx(
            {"learning_rate": rate, "momentum": momentum, "nesterov": True})


def test_eamsgd_replaces_adam_with_its_own_sgd():
    with pytest.warns(UserWarning, match=r"SGD\(learning_rate=0\.01, momentum=0\.9, "
                                         r"nesterov=True\); the model's compiled optimizer "
                                         r"\(Adam\) is not used \(with Adam it ended 2\.6 to "
                                         r"4\.0 points below model\.fit; AEASGD keeps"):
        trainer = make(EAMSGD, tiny(keras.optimizers.Adam(0.05)))
    assert (trainer.algorithm.learning_rate, trainer.algorithm.momentum) == (0.01, 0.9)
