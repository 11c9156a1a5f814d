"""Synchronous trainers: the rendezvous never hangs, and each trainer reaches the bar."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter

import numpy as np
import pytest
from conftest import running_server
from helpers import (  # noqa: F401
    BATCH,
    EPOCHS,
    TOLERANCE,
    accuracy,
    mlp,
    reference_accuracy,
    rounds_of,
    wait_for,
)

import distkeras
from distkeras import algorithms
from distkeras.parameter_server import ServerConfig
from distkeras.workers import ServerLink, WorkerError

pytestmark = pytest.mark.timeout(300)


# ---- the rendezvous on a real server --------------------------------------------------------
def test_each_round_records_every_commit_and_hands_every_member_the_round_end_centre():
    """Model averaging of 3 workers, 4 rounds; worker 2 runs out of data after 2 rounds. Each
    round's members all receive the same centre, the sample-weighted mean of that round's
    updates, and the clock counted every commit; the history holds every commit, round by
    round."""
    n, size = 3, 6
    rounds_made = {0: 4, 1: 4, 2: 2}
    with running_server(algorithms.ModelAveraging(), np.zeros(size), num_workers=n) as (
            server, layout, token):
        links = [ServerLink(server.address, token, layout, worker=w) for w in range(n)]
        for link in links:
            link.pull()
        got = {w: [] for w in range(n)}  # (centre, clock) each commit_and_pull returned
        errors = []

        def work(w):
            try:
                link = links[w]
                for k in range(rounds_made[w]):
                    link.samples = w + 1
                    update = np.full(size, 10.0 * k + w, np.float32)
                    got[w].append((link.commit_and_pull(update).copy(), link.clock))
                link.bye()
            except Exception as error:  # noqa: BLE001 - reported by the test
                errors.append(error)

        threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not errors, errors
        assert not any(thread.is_alive() for thread in threads)
    clock = 0
    for k in range(max(rounds_made.values())):
        members = [w for w in range(n) if rounds_made[w] > k]
        clock += len(members)
        centre = sum((w + 1) * (10.0 * k + w) for w in members) / sum(w + 1 for w in members)
        for w in members:
            np.testing.assert_allclose(got[w][k][0], np.full(size, centre), rtol=1e-6)
            assert got[w][k][1] == clock, (w, k)
    commits = server.history.commits
    assert server.clock == len(commits) == sum(rounds_made.values())
    assert [r.clock for r in commits] == list(range(1, len(commits) + 1))
    rounds = rounds_of(commits)
    assert [sorted(r.worker for r in records) for records in rounds] == \
        [[0, 1, 2], [0, 1, 2], [0, 1], [0, 1]]
    assert all(r.samples == r.worker + 1 for r in commits)
    assert set(server.history.finished) == {0, 1, 2}


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
        # a's commit is at the server, waiting for b (not merely not sent yet)
        assert wait_for(lambda: server._rendezvous.arrived == {0})
        assert waiter.is_alive()
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
        assert wait_for(lambda: server._rendezvous.arrived == {0})  # a waits in the round
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
    # what the server computed: the clock counts every commit, the history holds each commit
    # every worker made (and the samples it trained), round by round
    commits = trainer.history.commits
    assert [r.clock for r in commits] == list(range(1, len(commits) + 1))
    reports = {r["worker"]: r for r in trainer.worker_reports}
    assert Counter(r.worker for r in commits) == Counter(
        {w: r["commits"] for w, r in reports.items()})
    summary = trainer.history.summary()
    assert {w: summary[w]["samples"] for w in reports} == \
        {w: r["samples"] for w, r in reports.items()}
    rounds = rounds_of(commits)
    assert len(rounds) == max(r["commits"] for r in reports.values()) >= EPOCHS


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
