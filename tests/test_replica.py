"""distkeras.replica: the worker's batch-by-batch training gives what ``train_on_batch`` gives.

`make test` runs this file under TensorFlow and JAX; on JAX the worker keeps the model's state
as JAX arrays between batches, so this is where a mistake in that bookkeeping would show.
"""

from __future__ import annotations

import numpy as np
import pytest

from distkeras.replica import replica_trainer

pytestmark = pytest.mark.timeout(300)


def model():
    """Every kind of state a train step carries: trainable weights, non-trainable ones
    (batch normalisation's moving statistics), optimizer slots (Adam) and a metric."""
    import keras

    keras.utils.set_random_seed(3)
    made = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.BatchNormalization(), keras.layers.Dense(3)])
    made.compile(keras.optimizers.Adam(0.01),
                 keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 metrics=["accuracy"])
    return made


def batches(count, size=5):
    rng = np.random.default_rng(0)
    return [(rng.normal(size=(size, 6)).astype(np.float32), rng.integers(0, 3, size))
            for _ in range(count)]


def test_batch_trainer_matches_train_on_batch_across_an_exchange():
    """Batches, then what an exchange does (read the weights, set others), then more
    batches, a partial one among them: the same losses, weights and optimizer state as
    ``train_on_batch`` step for step."""
    import keras

    data = batches(12) + [batches(1, size=2)[0]] + batches(3)
    reference, fast = model(), model()
    trainer = replica_trainer(fast)
    if keras.backend.backend() == "jax":
        assert type(trainer).__name__ == "JaxBatchTrainer"
    expected, got = [], []
    for index, (x, y) in enumerate(data):
        if index in (4, 9):  # an exchange: the centre comes back moved
            trainer.sync()
            weights = fast.get_weights()
            np.testing.assert_array_equal(
                np.concatenate([w.ravel() for w in weights]),
                np.concatenate([w.ravel() for w in reference.get_weights()]))
            moved = [w * 0.5 for w in weights]
            fast.set_weights(moved)
            reference.set_weights(moved)
        loss = reference.train_on_batch(x, y)
        expected.append(float(loss[0]))
        got.append(trainer.train(x, y))
    trainer.sync()
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-7)
    for mine, theirs in zip(fast.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-7)
    assert int(fast.optimizer.iterations.numpy()) == len(data)
    for mine, theirs in zip(fast.optimizer.variables, reference.optimizer.variables):
        np.testing.assert_allclose(np.asarray(mine), np.asarray(theirs), rtol=1e-6, atol=1e-7)


def test_sync_twice_or_before_training_changes_nothing():
    trainer = replica_trainer(model())
    trainer.sync()
    before = [w.copy() for w in trainer.model.get_weights()]
    (x, y), = batches(1)
    trainer.train(x, y)
    trainer.train(x, y)
    trainer.sync()
    trainer.sync()
    after = trainer.model.get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    trainer.train(x, y)  # the state is read again from the variables after a sync
    trainer.sync()
    assert int(trainer.model.optimizer.iterations.numpy()) == 3
