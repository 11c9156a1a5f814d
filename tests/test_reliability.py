"""Faults: a killed worker is retried without applying a batch twice; checkpoints resume.

The kill test runs in its own process (``tests/fault_script.py``): it needs a Spark that
retries tasks (``local[2,4]``) and a process holds one SparkContext.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from helpers import BATCH, TOLERANCE, accuracy, mlp, server_threads

import distkeras
from distkeras import checkpoint
from distkeras.protocol import Layout

ASYNC = ["DOWNPOUR", "AGN", "ADAG", "DynSGD", "AEASGD", "EAMSGD"]
SCRIPT = os.path.join(os.path.dirname(__file__), "fault_script.py")


@pytest.fixture(scope="module")
def fault_runs():
    completed = subprocess.run([sys.executable, SCRIPT,
                                ",".join(ASYNC + ["ADAG-spill", "AveragingTrainer", "EASGD",
                                                  "NaN"])],
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {r["trainer"]: r for r in map(json.loads, completed.stdout.splitlines())}


@pytest.mark.timeout(960)
@pytest.mark.parametrize("name", ASYNC)
def test_killed_worker_resumes_and_every_batch_is_applied_exactly_once(name, fault_runs):
    run = fault_runs[name]
    assert "error" not in run, run.get("error")
    assert run["killed"], "the worker was never killed"
    assert [1, 1] in run["attempts"], run["attempts"]  # partition 1 ran a second attempt
    assert run["resumed_after"]["1"] >= 0  # ... which resumed after the committed batches
    assert run["samples_applied"] == run["rows"] * run["epochs"]
    assert run["accuracy"] >= run["reference_accuracy"] - TOLERANCE
    assert run["threads_left"] == []


@pytest.mark.timeout(960)
def test_killed_worker_that_spills_resumes_exactly_and_leaves_no_spill_file(fault_runs):
    """Partitions 4x worker_memory, streamed from spill files: the killed attempt's file is
    removed by the retry, whose deterministic block order resumes after the cursor."""
    run = fault_runs["ADAG-spill"]
    assert "error" not in run, run.get("error")
    assert run["killed"] and [1, 1] in run["attempts"], run["attempts"]
    assert all(spilled >= 2000 * (784 + 1) * 4 for spilled in run["spilled"].values()), run
    assert run["resumed_after"]["1"] >= 0
    assert run["samples_applied"] == run["rows"] * run["epochs"]
    # it trains sensibly (the accuracy bar of spilling is tested in test_spill.py)
    assert run["accuracy"] >= run["reference_accuracy"] - 0.05
    assert run["spill_leftovers"] == []


@pytest.mark.timeout(960)
@pytest.mark.parametrize("name", ["AveragingTrainer", "EASGD"])
def test_killed_worker_fails_a_synchronous_run_naming_it(name, fault_runs):
    run = fault_runs[name]
    assert run["killed"]
    assert "TrainingAborted" in run["error"] and "worker 1" in run["error"]
    assert run["seconds"] < 120
    assert run["threads_left"] == []


@pytest.mark.timeout(960)
def test_a_diverging_worker_stops_the_run_at_once_without_retries(fault_runs):
    run = fault_runs["NaN"]  # tasks may be retried 3 times in this Spark
    assert "TrainingAborted" in run["error"]
    assert re.search(r"worker [01]: training loss is nan at epoch 0, batch [1-9]\d*",
                     run["error"])
    assert run["connections"] and all(c["attempt"] == 0 for c in run["connections"])
    assert run["samples_applied"] == 0
    assert run["seconds"] < 60


@pytest.mark.timeout(600)
def test_checkpoint_resume_continues_where_the_run_stopped(spark, digits_df, digits, tmp_path):
    _, _, xt, yt = digits
    path = str(tmp_path / "run.npz")
    epochs = 3

    def make():
        return distkeras.ADAG(mlp(), worker_optimizer="adam", loss="categorical_crossentropy",
                              num_workers=2, batch_size=BATCH, num_epoch=epochs, verbose=0,
                              seed=11, communication_window=3, checkpoint_path=path,
                              checkpoint_every=10)

    first = make()

    def interrupt():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if first.parameter_server is not None and len(first.history.commits) >= 40:
                spark.sparkContext.cancelAllJobs()
                return
            time.sleep(0.01)

    stopper = threading.Thread(target=interrupt, daemon=True)
    stopper.start()
    # Spark's own error for the cancelled job reaches the caller (its type depends on the
    # Spark API that ran the job), and it says the job was cancelled
    with pytest.raises(Exception, match=r"(?i)cancel"):
        first.train(digits_df)
    stopper.join(timeout=5)
    done_first = first.history.samples_applied
    assert 0 < done_first < 4000 * epochs
    assert os.path.exists(path)

    saved = checkpoint.load(path, Layout.of(mlp().get_weights()))
    assert saved.cursors  # something was committed before the cancel

    second = make()
    model = second.train(digits_df, resume_from=path)
    assert done_first + second.history.samples_applied == 4000 * epochs
    # every partition resumed right after the last batch the checkpoint holds for it (-1: a
    # partition that had committed nothing yet, e.g. one that started late on a busy machine)
    resumed = {r["worker"]: r["resumed_after"] for r in second.worker_reports}
    assert resumed == {worker: saved.cursors.get(worker, -1) for worker in resumed}
    assert max(resumed.values()) >= 0

    straight = distkeras.ADAG(mlp(), worker_optimizer="adam", loss="categorical_crossentropy",
                              num_workers=2, batch_size=BATCH, num_epoch=epochs, verbose=0,
                              seed=11, communication_window=3)
    reference = accuracy(straight.train(digits_df), xt, yt)
    assert accuracy(model, xt, yt) >= reference - TOLERANCE


def test_checkpoint_of_another_model_is_refused(digits_df, tmp_path):
    import keras

    path = str(tmp_path / "small.npz")
    small = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, activation="softmax")])
    distkeras.DOWNPOUR(small, loss="categorical_crossentropy", num_epoch=1, verbose=0,
                       checkpoint_path=path).train(digits_df.limit(200))
    with pytest.raises(ValueError, match="another model layout"):
        distkeras.DOWNPOUR(mlp(), loss="categorical_crossentropy", verbose=0).train(
            digits_df, resume_from=path)


@pytest.mark.timeout(600)
def test_ctrl_c_stops_the_server_frees_the_port_and_the_next_train_works():
    script = os.path.join(os.path.dirname(__file__), "interrupt_script.py")
    completed = subprocess.run([sys.executable, script], capture_output=True, text=True,
                               timeout=540)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["interrupted"] is True
    assert result["seconds_to_return"] < 120
    assert result["threads_left"] == []
    assert result["port_free"] is True
    assert result["second_run_samples"] == 2000


@pytest.mark.timeout(300)
def test_hanging_worker_stops_the_run_with_an_error_naming_it(spark, digits):
    import keras

    from distkeras.parameter_server import ServerConfig

    backend = keras.backend.backend()

    @keras.saving.register_keras_serializable(package="distkeras_tests")
    class HangOnPartitionOne(keras.layers.Layer):
        """Identity, except that in Spark partition 1 it hangs after a few batches (a Python
        call in the compiled training step of each backend)."""

        def call(self, inputs):
            def maybe_hang(values):
                from pyspark import TaskContext

                context = TaskContext.get()
                if context is not None and context.partitionId() == 1:
                    HangOnPartitionOne.calls = getattr(HangOnPartitionOne, "calls", 0) + 1
                    if HangOnPartitionOne.calls > 10:
                        time.sleep(3600)
                return values

            if backend == "tensorflow":
                import tensorflow as tf

                out = tf.py_function(maybe_hang, [inputs], inputs.dtype)
                out.set_shape(inputs.shape)
                return out
            if backend == "jax":
                import jax

                return jax.pure_callback(maybe_hang, jax.ShapeDtypeStruct(inputs.shape,
                                                                          inputs.dtype), inputs)
            return maybe_hang(inputs)  # eager (torch)

    keras.utils.set_random_seed(2)
    inputs = keras.Input((784,))
    hidden = keras.layers.Dense(16, activation="relu")(HangOnPartitionOne()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(hidden))
    from pyspark.ml.linalg import Vectors

    x, y, _, _ = digits
    df = spark.createDataFrame([(Vectors.dense(r), int(v)) for r, v in zip(x[:2000], y[:2000])],
                               ["features", "label"])
    trainer = distkeras.DOWNPOUR(model, loss="categorical_crossentropy", num_workers=2,
                                 num_epoch=5, verbose=0,
                                 server_config=ServerConfig(stall_timeout=5.0))
    started = time.monotonic()
    with pytest.raises(distkeras.TrainingAborted, match=r"worker 1 .*stall_timeout"):
        trainer.train(df)
    assert time.monotonic() - started < 120
    assert not server_threads()
