"""Exact epochs and Keras callbacks: every epoch's logs come from the centre variable at the
commit that ended that epoch, however late the driver gets to it, and Keras' own callbacks
work on the driver as they do in ``model.fit``."""

from __future__ import annotations

import csv
import glob
import os
import time

import numpy as np
import pytest
from helpers import accuracy, commits_after_stop, mlp, one_hot

import distkeras

pytestmark = pytest.mark.timeout(600)

EPOCHS = 4


@pytest.fixture(scope="module")
def held_out(spark, digits):
    from pyspark.ml.linalg import Vectors

    _, _, xt, yt = digits
    df = spark.createDataFrame([(Vectors.dense(r), int(v)) for r, v in zip(xt[:500], yt[:500])],
                               ["features", "label"]).cache()
    df.count()
    yield df
    df.unpersist()


def make_recorder(keras):
    class Recorder(keras.callbacks.Callback):
        """Keeps every hook call, the epoch's weights and logs; sleeps at each epoch end so
        that the workers outrun the driver."""

        def __init__(self, sleep=0.0, stop_after=None):
            super().__init__()
            self.sleep, self.stop_after = sleep, stop_after
            self.calls, self.weights, self.logs = [], [], []

        def on_train_begin(self, logs=None):
            self.calls.append("train_begin")

        def on_epoch_begin(self, epoch, logs=None):
            self.calls.append(f"begin {epoch}")

        def on_epoch_end(self, epoch, logs=None):
            self.calls.append(f"end {epoch}")
            self.weights.append([w.copy() for w in self.model.get_weights()])
            self.logs.append(dict(logs))
            time.sleep(self.sleep)
            if self.stop_after is not None and epoch + 1 >= self.stop_after:
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            self.calls.append("train_end")

    return Recorder


def trainer(**kwargs):
    return distkeras.DOWNPOUR(mlp(), worker_optimizer="adam", loss="categorical_crossentropy",
                              metrics=["accuracy"], num_workers=2, num_epoch=EPOCHS,
                              communication_window=5, verbose=0, seed=11, **kwargs)


def test_each_epoch_reports_its_own_centre_even_when_the_driver_is_late(
        digits_df, held_out, digits):
    import keras

    _, _, xt, yt = digits
    recorder = make_recorder(keras)(sleep=1.5)  # the run's epochs take well under 1.5 s each
    run = trainer()
    model = run.train(digits_df, validation_data=held_out, callbacks=[recorder])
    h = run.history.history
    assert recorder.calls == ["train_begin"] + [c for e in range(EPOCHS)
                                                for c in (f"begin {e}", f"end {e}")] + \
        ["train_end"]
    assert len(h["val_loss"]) == EPOCHS and len(set(h["val_loss"])) == EPOCHS
    probe = mlp()
    probe.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    for epoch, weights in enumerate(recorder.weights):  # each value is its snapshot's
        probe.set_weights(weights)
        again = probe.evaluate(xt[:500], one_hot(yt[:500]), verbose=0, return_dict=True)
        assert again["loss"] == pytest.approx(h["val_loss"][epoch], rel=1e-5)
        assert again["accuracy"] == pytest.approx(h["val_accuracy"][epoch], rel=1e-5)
        assert recorder.logs[epoch]["val_loss"] == h["val_loss"][epoch]
        assert {"loss", "staleness", "commits_per_s"} <= set(recorder.logs[epoch])
    # the last epoch ends at the last commit: its snapshot is the model returned
    for final, last in zip(model.get_weights(), recorder.weights[-1]):
        np.testing.assert_array_equal(final, last)
    assert run.history.samples_applied == 4000 * EPOCHS


def test_a_callback_that_stops_training_ends_the_run_at_that_epoch(digits_df, digits):
    import keras

    _, _, xt, yt = digits
    recorder = make_recorder(keras)(stop_after=2)
    run = trainer()
    run.num_epoch = 30
    model = run.train(digits_df, callbacks=[recorder])
    assert recorder.calls[-3:] == ["begin 1", "end 1", "train_end"]
    assert len(run.history.history["loss"]) == 2
    assert run.history.samples_applied >= 4000 * 2
    # after the stop, only a commit already on its way per worker (the workers trained 3
    # more epochs meanwhile in the runs seen: the driver's latency, not theirs)
    late = commits_after_stop(run.history)
    assert all(count <= 1 for count in late.values()), late
    for final, stopped_at in zip(model.get_weights(), recorder.weights[-1]):
        np.testing.assert_array_equal(final, stopped_at)  # the stopping epoch's centre
    assert accuracy(model, xt, yt) > 0.8


def test_keras_checkpoint_csv_and_tensorboard_callbacks(digits_df, held_out, tmp_path):
    import keras

    checkpoints = str(tmp_path / "epoch-{epoch:02d}.keras")
    csv_path = str(tmp_path / "log.csv")
    logs = str(tmp_path / "tensorboard")
    recorder = make_recorder(keras)()
    run = trainer()
    run.train(digits_df, validation_data=held_out, callbacks=[
        keras.callbacks.ModelCheckpoint(checkpoints),
        keras.callbacks.CSVLogger(csv_path),
        keras.callbacks.TensorBoard(logs),
        recorder])
    saved = sorted(glob.glob(str(tmp_path / "epoch-*.keras")))
    assert [os.path.basename(p) for p in saved] == [f"epoch-{e:02d}.keras"
                                                    for e in range(1, EPOCHS + 1)]
    for path, weights in zip(saved, recorder.weights):  # each file holds its epoch's centre
        for a, b in zip(keras.saving.load_model(path).get_weights(), weights):
            np.testing.assert_array_equal(a, b)
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    assert [float(r["val_loss"]) for r in rows] == pytest.approx(
        run.history.history["val_loss"], rel=1e-6)
    assert {"loss", "staleness", "commits_per_s", "val_accuracy"} <= set(rows[0])
    tags = set()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for directory in ("train", "validation"):
        events = glob.glob(os.path.join(logs, directory, "events.out.tfevents.*"))
        assert events, f"no TensorBoard event file in {directory}"
        accumulator = EventAccumulator(os.path.join(logs, directory))
        accumulator.Reload()
        tags |= set(accumulator.Tags().get("tensors", [])) | set(
            accumulator.Tags().get("scalars", []))
    assert {"epoch_loss", "epoch_staleness", "epoch_commits_per_s"} <= tags, tags


def test_mlflow_keras_callback_works_unchanged(digits_df, held_out, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="pip install distkeras[mlflow]")
    from mlflow.keras import MlflowCallback

    # a local tracking store: MLflow 3 keeps the file store behind this switch
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    run = trainer()
    with mlflow.start_run() as tracked:
        run.train(digits_df, validation_data=held_out, callbacks=[MlflowCallback(tracked)])
    client = mlflow.tracking.MlflowClient()
    for key in ("loss", "val_loss", "val_accuracy", "staleness"):
        logged = [m.value for m in sorted(client.get_metric_history(tracked.info.run_id, key),
                                          key=lambda m: m.step)]
        assert logged == pytest.approx(run.history.history[key], rel=1e-6), key
    # the driver model's optimizer, as model.fit logs it (Keras numbers repeated names)
    assert client.get_run(tracked.info.run_id).data.params["optimizer_name"].startswith("adam")
