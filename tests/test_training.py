"""Each trainer on real Spark (local[2], 2 workers) against plain ``model.fit`` on MNIST digits.

The bar: held-out accuracy within 4 points (``helpers.TOLERANCE``) of ``model.fit`` with the
same optimizer, batch size and epochs, measured here in the same run.
"""

from __future__ import annotations

import pytest
from helpers import (  # noqa: F401 - reference_accuracy is a fixture
    BATCH,
    EPOCHS,
    TOLERANCE,
    accuracy,
    commits_after_stop,
    mlp,
    one_hot,
    reference_accuracy,
    server_threads,
)

import distkeras
from distkeras import DataError

pytestmark = pytest.mark.timeout(600)


TRAINERS = {
    "SingleTrainer": {},
    "DOWNPOUR": {"communication_window": 5},
    "Hogwild": {"communication_window": 5, "lock": False},
    "AGN": {"communication_window": 3},
    "ADAG": {"communication_window": 3},
    "DynSGD": {"communication_window": 5},
    "AEASGD": {"communication_window": 4},  # rho=None: alpha = 0.9 / n
    "EAMSGD": {"communication_window": 4, "learning_rate": 0.02, "momentum": 0.9},
}


@pytest.mark.parametrize("name", list(TRAINERS))
def test_trainer_reaches_model_fit_accuracy(name, digits_df, digits,
                                            reference_accuracy):  # noqa: F811
    import keras

    _, _, xt, yt = digits
    cls = distkeras.DOWNPOUR if name == "Hogwild" else getattr(distkeras, name)
    trainer = cls(mlp(), worker_optimizer="adam", loss="categorical_crossentropy",
                  metrics=["accuracy"], num_workers=2, batch_size=BATCH, num_epoch=EPOCHS,
                  verbose=0, seed=7, **TRAINERS[name])
    model = trainer.train(digits_df)
    acc = accuracy(model, xt, yt)
    assert acc >= reference_accuracy - TOLERANCE, (name, acc, reference_accuracy)
    # every sample of every epoch reached the centre variable exactly once
    assert trainer.history.samples_applied == 4000 * EPOCHS
    workers = {r.worker for r in trainer.history.commits}
    assert workers == set(range(trainer.num_workers))
    # the workers ran the driver's Keras backend (make test runs this under two backends)
    assert {r["backend"] for r in trainer.worker_reports} == {keras.backend.backend()}
    assert trainer.get_training_time() > 0
    assert not server_threads()


def test_compiled_model_settings_are_used_when_arguments_are_omitted(digits_df, digits):
    import keras

    model = mlp()
    # not the default optimizer: a trainer that ignored the compiled one would train with Adam
    model.compile(keras.optimizers.RMSprop(learning_rate=0.002), "categorical_crossentropy",
                  metrics=["accuracy", "categorical_crossentropy"])
    trainer = distkeras.ADAG(model, num_workers=2, num_epoch=1, verbose=0,
                             communication_window=3)
    trained = trainer.train(digits_df)
    _, _, xt, yt = digits
    assert accuracy(trained, xt, yt) > 0.75
    assert trained.loss == "categorical_crossentropy"
    # the replicas (and the returned model) are compiled from the same blueprint
    assert type(trained.optimizer).__name__ == "RMSprop"
    assert float(trained.optimizer.learning_rate) == pytest.approx(0.002)
    scores = trained.evaluate(xt[:200], one_hot(yt[:200]), verbose=0, return_dict=True)
    assert {"accuracy", "categorical_crossentropy"} <= set(scores)


def test_integer_labels_with_sparse_loss_and_array_features(spark, digits):
    x, y, xt, yt = digits
    df = spark.createDataFrame([(row.tolist(), int(label)) for row, label in
                                zip(x[:2000], y[:2000])], ["pixels", "digit"])
    trainer = distkeras.DOWNPOUR(mlp(), worker_optimizer="adam",
                                 loss="sparse_categorical_crossentropy", num_workers=2,
                                 num_epoch=2, features_col="pixels", label_col="digit",
                                 verbose=0)
    # integer labels reach the sparse loss intact: 0.84 to 0.88 seen; chance is 0.1
    assert accuracy(trainer.train(df), xt, yt) > 0.7


def test_functional_model_with_a_custom_layer(spark, digits):
    import keras

    @keras.saving.register_keras_serializable(package="distkeras_tests")
    class Scale(keras.layers.Layer):
        def __init__(self, factor=1.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, inputs):
            return inputs * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}

    keras.utils.set_random_seed(3)
    inputs = keras.Input((784,))
    hidden = keras.layers.Dense(32, activation="relu")(Scale(2.0)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(hidden))
    x, y, xt, yt = digits
    from pyspark.ml.linalg import Vectors

    df = spark.createDataFrame([(Vectors.dense(r), int(v)) for r, v in zip(x[:2000], y[:2000])],
                               ["features", "label"])
    trainer = distkeras.AGN(model, loss="categorical_crossentropy", num_workers=2, num_epoch=2,
                            communication_window=2, verbose=0)
    trained = trainer.train(df)
    assert any(type(layer).__name__ == "Scale" for layer in trained.layers)
    # the custom layer trains (0.78 to 0.86 seen); chance is 0.1, a scrambled pipeline ~0.5
    assert accuracy(trained, xt, yt) > 0.7


# ---- bad input fails before training --------------------------------------------------------
def make_trainer(**kwargs):
    return distkeras.DOWNPOUR(mlp(), loss="categorical_crossentropy", verbose=0, **kwargs)


def test_missing_column_is_named(digits_df):
    with pytest.raises(DataError, match="'pixels'"):
        make_trainer(features_col="pixels").train(digits_df)


def test_wrong_width_names_column_and_shapes(spark):
    df = spark.createDataFrame([([0.0] * 10, 1)], ["features", "label"])
    with pytest.raises(DataError, match=r"'features'.*784.*10"):
        make_trainer().train(df)


def test_empty_dataframe_is_refused(digits_df):
    with pytest.raises(DataError, match="empty"):
        make_trainer().train(digits_df.limit(0))


def test_non_numeric_column_is_refused(spark):
    df = spark.createDataFrame([([0.0] * 784, "seven")], ["features", "label"])
    with pytest.raises(DataError, match="column 'label' has type string, which is not numeric"):
        make_trainer().train(df)


@pytest.mark.parametrize("kwargs", [{"num_workers": 0}, {"batch_size": -1}, {"num_epoch": 1.5},
                                    {"communication_window": 0}])
def test_bad_trainer_arguments_fail_at_construction(kwargs):
    with pytest.raises(ValueError):
        make_trainer(**kwargs)


def test_failed_spark_job_stops_the_server(spark):
    # label 12 does not exist in a 10-class model; without the validation pass only the
    # worker finds out, and its Spark task fails
    df = spark.createDataFrame([([0.0] * 784, 12)] * 64, ["features", "label"])
    with pytest.raises(IndexError) as raised:  # the worker's own exception, not the JVM's
        make_trainer(num_workers=2).train(df, validate=False)
    notes = "\n".join(getattr(raised.value, "__notes__", []))
    assert "raised in a Spark worker" in notes and "distkeras/data.py" in notes
    assert "\tat org.apache" not in notes
    assert not server_threads()


def test_label_index_out_of_range_fails_before_training(spark):
    df = spark.createDataFrame([([0.0] * 784, 12)] * 8, ["features", "label"])
    with pytest.raises(DataError, match=r"'label'.*\[0, 10\).*12"):
        make_trainer().train(df)


def test_nan_features_fail_before_training(spark):
    rows = [([0.5] * 784, 1)] * 63 + [([float("nan")] * 784, 1)]
    df = spark.createDataFrame(rows, ["features", "label"])
    with pytest.raises(DataError, match="'features'.*1 row.*NaN"):
        make_trainer().train(df)


def test_ragged_rows_fail_before_training(spark):
    df = spark.createDataFrame([([0.0] * 784, 1), ([0.0] * 783, 1)], ["features", "label"])
    with pytest.raises(DataError, match=r"'features'.*784.*783"):
        make_trainer().train(df)


def test_nan_during_training_stops_with_a_clear_error(spark):
    rows = [([float("nan")] * 784, 1)] * 64
    df = spark.createDataFrame(rows, ["features", "label"])
    # the worker's message names worker, epoch and batch; the run stops at this first failure
    with pytest.raises(distkeras.TrainingAborted,
                       match=r"worker 0: (training loss is nan at|the model's weights became "
                             r"NaN/inf by) epoch 0, batch \d+"):
        make_trainer(num_workers=1).train(df, validate=False)


def test_rdd_of_pairs_trains_through_the_row_path(spark, digits):
    from pyspark.ml.linalg import Vectors

    x, y, xt, yt = digits
    rdd = spark.sparkContext.parallelize(
        [(Vectors.dense(r), int(v)) for r, v in zip(x[:2000], y[:2000])], 4)
    trainer = distkeras.DOWNPOUR(mlp(), loss="categorical_crossentropy", num_workers=2,
                                 num_epoch=2, verbose=0)
    model = trainer.train(rdd)
    assert trainer.history.samples_applied == 4000
    # the row path feeds the right labels: 0.80 to 0.87 seen; chance is 0.1
    assert accuracy(model, xt, yt) > 0.7


def test_multi_input_multi_output_model_from_several_columns(spark, digits):
    import keras

    x, y, xt, yt = digits
    keras.utils.set_random_seed(5)
    left, right = keras.Input((392,), name="left"), keras.Input((392,), name="right")
    hidden = keras.layers.Dense(48, activation="relu")(keras.layers.Concatenate()([left, right]))
    digit = keras.layers.Dense(10, activation="softmax", name="digit")(hidden)
    parity = keras.layers.Dense(1, activation="sigmoid", name="parity")(hidden)
    model = keras.Model([left, right], [digit, parity])
    df = spark.createDataFrame(
        [(r[:392].tolist(), r[392:].tolist(), int(v), float(v % 2)) for r, v in
         zip(x[:2000], y[:2000])], ["left", "right", "label", "odd"])
    trainer = distkeras.DOWNPOUR(model, loss=["categorical_crossentropy", "binary_crossentropy"],
                                 features_col=["left", "right"], label_col=["label", "odd"],
                                 num_workers=2, num_epoch=3, verbose=0)
    trained = trainer.train(df)
    digit_out, parity_out = trained.predict([xt[:, :392], xt[:, 392:]], verbose=0)
    assert (digit_out.argmax(axis=1) == yt).mean() > 0.8
    # chance is 0.5 (what a label routed to the wrong output gives); the parity head reaches
    # 0.75 or more in 3 epochs in the runs seen (one JAX run gave exactly 0.75)
    assert ((parity_out[:, 0] > 0.5) == (yt % 2 == 1)).mean() > 0.7


def test_validation_history_and_early_stopping(spark, digits_df, digits):
    from pyspark.ml.linalg import Vectors

    x, y, xt, yt = digits
    held_out = spark.createDataFrame([(Vectors.dense(r), int(v)) for r, v in
                                      zip(xt[:500], yt[:500])], ["features", "label"])
    trainer = distkeras.DOWNPOUR(mlp(), worker_optimizer="adam", loss="categorical_crossentropy",
                                 metrics=["accuracy"], num_workers=2, num_epoch=4, verbose=0)
    trainer.train(digits_df, validation_data=held_out)
    h = trainer.history.history
    assert len(h["val_loss"]) == 4 and len(h["loss"]) == 4 and len(h["val_accuracy"]) == 4
    assert h["val_loss"][-1] < h["val_loss"][0]
    assert h["val_accuracy"][-1] > 0.85

    # a patience of 1 with an impossible min_delta stops after the second epoch, exactly (the
    # shorthand for keras.callbacks.EarlyStopping), and restores the first epoch's centre
    stopper = distkeras.DOWNPOUR(mlp(), worker_optimizer="adam",
                                 loss="categorical_crossentropy", num_workers=2, num_epoch=20,
                                 verbose=0)
    model = stopper.train(digits_df, validation_data=held_out, early_stopping_patience=1,
                          early_stopping_min_delta=10.0)
    val_loss = stopper.history.history["val_loss"]
    assert len(val_loss) == 2
    # the workers stopped at once: after the stop, only a commit already on its way per worker
    # (how many epochs they trained meanwhile depends on the driver's latency: 2 to 3 seen)
    stopped = stopper.history.stopped_early
    assert stopped is not None and "after epoch 2" in stopped["reason"], stopped
    late = commits_after_stop(stopper.history)
    assert all(count <= 1 for count in late.values()), late
    held_x, held_y = xt[:500], one_hot(yt[:500])
    restored = model.evaluate(held_x, held_y, verbose=0, return_dict=True)["loss"]
    assert restored == pytest.approx(val_loss[0], rel=1e-5)  # epoch 1's, not epoch 2's
    assert val_loss[1] != pytest.approx(val_loss[0], rel=1e-5)
    # a trained model, not the initial one: one epoch of 4,000 digits gives 0.79 to 0.88 (0.79
    # in a CI run under JAX), so the bar only has to rule out chance (0.1)
    assert accuracy(model, xt, yt) > 0.6


# ---- an optimizer tuned for model.fit, unchanged (issue 18) ---------------------------------
def sgd_momentum_model(seed):
    """A user's model compiled for model.fit: SGD with momentum at a rate tuned for it."""
    import keras

    model = mlp(seed)
    model.compile(keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def sgd_momentum_fit_accuracy(digits):
    x, y, xt, yt = digits
    model = sgd_momentum_model(3)
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0)
    return accuracy(model, xt, yt)


@pytest.mark.parametrize("name", ["DOWNPOUR", "ADAG", "EAMSGD"])
def test_a_model_fit_tuned_sgd_with_momentum_works_unchanged(name, digits_df, digits,
                                                              sgd_momentum_fit_accuracy):
    """The compiled model alone, nothing retuned: the mean of two seeds within the bar of
    model.fit with the same optimizer (fit 0.907). Seen here, seeds 5 to 10: DOWNPOUR 0.891 to
    0.917, and once 0.865 in a clean-clone CI run (its staleness can spike under load, so one
    seed alone is not the measure); ADAG (window 4) 0.901 to 0.902 on seeds 5 to 7; EAMSGD,
    which takes the SGD's rate and momentum, 0.902 to 0.911. DOWNPOUR's original rule
    (delta_scale=1.0), which moves the centre n times as far, gave 0.612 to 0.826 on seeds 5
    to 7, failing on each."""
    _, _, xt, yt = digits
    accuracies = []
    for seed in (5, 6):
        trainer = getattr(distkeras, name)(sgd_momentum_model(3), num_workers=2,
                                           batch_size=BATCH, num_epoch=EPOCHS, verbose=0,
                                           seed=seed)
        model = trainer.train(digits_df)
        assert type(model.optimizer).__name__ == "SGD"
        accuracies.append(accuracy(model, xt, yt))
    mean = sum(accuracies) / len(accuracies)
    assert mean >= sgd_momentum_fit_accuracy - TOLERANCE, (name, accuracies,
                                                           sgd_momentum_fit_accuracy)
