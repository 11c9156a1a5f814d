"""Synchronous trainers: the rendezvous never hangs, and each trainer reaches the bar."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
from conftest import running_server
from test_training import BATCH, EPOCHS, TOLERANCE, accuracy, mlp, reference_accuracy  # noqa: F401

import distkeras
from distkeras import algorithms
from distkeras.parameter_server import ServerConfig
from distkeras.workers import ServerLink, WorkerError

pytestmark = pytest.mark.timeout(300)


# ---- the rendezvous on a real server --------------------------------------------------------
def test_finished_worker_leaves_the_round_set():
    rule = algorithms.EASGD(rho=1.0, learning_rate=0.5)  # alpha = 0.5
    with running_server(rule, [0.0], num_workers=2) as (server, layout, token):
        a = ServerLink(server.address, token, layout, worker=0)
        b = ServerLink(server.address, token, layout, worker=1)
        a.pull()
        b.pull()
        b.bye()  # b ran out of data before the first round
        a.commit_and_pull(np.array([1.0], np.float32))  # the round is a alone: no wait
        a.commit_and_pull(np.array([1.0], np.float32))
        assert server.center[0] == pytest.approx(2.0)
        a.bye()


def test_round_completes_when_the_last_member_leaves_instead_of_committing():
    rule = algorithms.ModelAveraging()
    with running_server(rule, [0.0], num_workers=2) as (server, layout, token):
        a = ServerLink(server.address, token, layout, worker=0)
        a.pull()  # a worker pulls before it commits
        b = ServerLink(server.address, token, layout, worker=1)
        a.samples = 10
        result = {}

        def commit():
            result["c"] = a.commit_and_pull(np.array([4.0], np.float32)).copy()

        waiter = threading.Thread(target=commit)
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive()  # waits for b
        b.bye()
        waiter.join(timeout=10)
        assert result["c"][0] == pytest.approx(4.0)
        a.bye()


def test_worker_dying_mid_round_fails_the_run_naming_it():
    rule = algorithms.ModelAveraging()
    with running_server(rule, [0.0], num_workers=2) as (server, layout, token):
        a = ServerLink(server.address, token, layout, worker=0)
        a.pull()  # a worker pulls before it commits
        b = ServerLink(server.address, token, layout, worker=1)
        errors = []

        def commit():
            try:
                a.commit_and_pull(np.array([1.0], np.float32))
            except WorkerError as error:
                errors.append(error)

        waiter = threading.Thread(target=commit)
        waiter.start()
        time.sleep(0.2)
        b._sock.shutdown(socket.SHUT_RDWR)  # killed: no bye
        b.close()
        waiter.join(timeout=10)
        assert not waiter.is_alive()
        assert errors and "aborted" in str(errors[0])
        assert "worker 1" in server.error


def test_round_timeout_names_the_missing_worker():
    rule = algorithms.ModelAveraging()
    config = ServerConfig(round_timeout=1.0)
    with running_server(rule, [0.0], num_workers=2, config=config) as (server, layout, token):
        a = ServerLink(server.address, token, layout, worker=0)
        a.pull()  # a worker pulls before it commits
        hung = ServerLink(server.address, token, layout, worker=1)  # connects, then hangs
        started = time.monotonic()
        with pytest.raises(WorkerError, match="aborted"):
            a.commit_and_pull(np.array([1.0], np.float32))
        assert time.monotonic() - started < 10
        assert "worker(s) [1]" in server.error
        hung.close()


# ---- trainers on Spark ----------------------------------------------------------------------
SYNC = {
    "AveragingTrainer": {},
    "EASGD": {"communication_window": 4, "rho": 5.0, "learning_rate": 0.01},
}


@pytest.mark.parametrize("name", list(SYNC))
def test_synchronous_trainer_reaches_model_fit_accuracy(name, digits_df, digits,
                                                        reference_accuracy):  # noqa: F811
    _, _, xt, yt = digits
    trainer = getattr(distkeras, name)(mlp(), worker_optimizer="adam",
                                       loss="categorical_crossentropy", num_workers=2,
                                       batch_size=BATCH, num_epoch=EPOCHS, verbose=0, seed=3,
                                       **SYNC[name])
    model = trainer.train(digits_df)
    acc = accuracy(model, xt, yt)
    assert acc >= reference_accuracy - TOLERANCE, (name, acc, reference_accuracy)
    assert trainer.history.samples_applied == 4000 * EPOCHS
    assert max(r.staleness for r in trainer.history.commits) == 0


def skewed(spark, digits, big=2000, small=200):
    """Two partitions, one 10x the other (``repartition=False`` keeps them)."""
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql.types import LongType, StructField, StructType

    x, y, _, _ = digits
    rows = [(Vectors.dense(r), int(v)) for r, v in zip(x, y)]
    keyed = [(0, row) for row in rows[:big]] + [(1, row) for row in rows[big:big + small]]
    # a shuffle, not a union: Spark refuses barrier stages over union/coalesce chains
    rdd = spark.sparkContext.parallelize(keyed, 4).partitionBy(2, lambda key: key).values()
    schema = StructType([StructField("features", VectorUDT()), StructField("label", LongType())])
    return spark.createDataFrame(rdd, schema)


@pytest.mark.parametrize("name", ["AveragingTrainer", "EASGD"])
def test_skewed_partitions_finish_every_round(name, spark, digits):
    df = skewed(spark, digits)
    assert df.rdd.glom().map(len).collect() == [2000, 200]
    trainer = getattr(distkeras, name)(mlp(), loss="categorical_crossentropy", num_workers=2,
                                       num_epoch=2, verbose=0, communication_window=5)
    trainer.train(df, repartition=False)
    assert trainer.history.samples_applied == 2200 * 2
    by_worker = trainer.history.summary()
    assert by_worker[0]["samples"] == 4000 and by_worker[1]["samples"] == 400


def test_empty_partition_leaves_cleanly(spark, digits):
    df = skewed(spark, digits, big=500, small=0)
    trainer = distkeras.EASGD(mlp(), loss="categorical_crossentropy", num_workers=2,
                              num_epoch=1, verbose=0)
    trainer.train(df, repartition=False)
    assert trainer.history.samples_applied == 500


def test_more_workers_than_slots_fails_at_once(digits_df):
    trainer = distkeras.AveragingTrainer(mlp(), loss="categorical_crossentropy", num_workers=4,
                                         verbose=0)
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"4 workers.*2 task slot"):
        trainer.train(digits_df)
    assert time.monotonic() - started < 30


def test_asynchronous_trainer_with_four_workers_on_two_slots(digits_df):
    trainer = distkeras.DOWNPOUR(mlp(), loss="categorical_crossentropy", num_workers=4,
                                 num_epoch=1, verbose=0)
    trainer.train(digits_df)
    assert trainer.history.samples_applied == 4000
    assert set(trainer.history.summary()) == {0, 1, 2, 3}


def test_ensemble_returns_independent_members_and_their_average(digits_df, digits):
    _, _, xt, yt = digits
    trainer = distkeras.EnsembleTrainer(mlp(), worker_optimizer="adam",
                                        loss="categorical_crossentropy", num_ensembles=2,
                                        num_epoch=3, verbose=0)
    members = trainer.train(digits_df)
    assert len(members) == 2
    w0, w1 = members[0].get_weights()[0], members[1].get_weights()[0]
    assert not np.allclose(w0, w1)  # trained apart, on different partitions
    accs = [accuracy(m, xt, yt) for m in members]
    average = distkeras.EnsembleTrainer.average(members)
    expected = (members[0].predict(xt, verbose=0) + members[1].predict(xt, verbose=0)) / 2
    np.testing.assert_allclose(average.predict(xt, verbose=0), expected, rtol=1e-4, atol=1e-6)
    assert accuracy(average, xt, yt) >= min(accs) - 0.01
    assert min(accs) > 0.8
