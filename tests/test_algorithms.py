"""Every update rule against numbers worked out by hand.

Server halves are checked directly on numpy arrays; worker halves through a real parameter
server on loopback, so the numbers also prove that the wire carries them unchanged.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import running_server
from numpy.testing import assert_allclose

from distkeras import algorithms
from distkeras.algorithms import Session
from distkeras.workers import ServerLink

f32 = np.float32


def arr(*values):
    return np.array(values, dtype=f32)


# ---- server halves ---------------------------------------------------------------------
def test_downpour_adds_the_delta():
    c = arr(1.0, 2.0)
    algorithms.DOWNPOUR().apply(c, arr(0.5, -1.0), Session(0), clock=3)
    assert_allclose(c, [1.5, 1.0])


def test_adag_scales_each_weight_by_how_far_it_moved_since_the_pull():
    # C0 = [0.99, 2.0]; (C - C0)^2 / gamma + 1 = [1e-4 / 1e-4 + 1, 0 + 1] = [2, 1]
    rule, session = algorithms.ADAG(gamma=1e-4), Session(0)
    rule.on_pull(arr(0.99, 2.0), session)
    c = arr(1.0, 2.0)
    rule.apply(c, arr(0.1, 0.1), session, clock=0)
    assert_allclose(c, [1.0 + 0.1 / 2, 2.0 + 0.1], rtol=1e-5)


def test_adag_pulled_copy_is_a_snapshot_not_a_view():
    rule, session = algorithms.ADAG(gamma=1.0), Session(0)
    c = arr(3.0)
    rule.on_pull(c, session)
    c += 1.0  # others commit after this worker's pull: C - C0 = 1 -> divisor 1/1 + 1 = 2
    rule.apply(c, arr(1.0), session, clock=0)
    assert_allclose(c, [4.5])


def test_dynsgd_divides_by_staleness_plus_one():
    # pulled at clock 4, committed at clock 7: tau = 7 - 4 + 1 = 4
    c = arr(1.0, 2.0)
    algorithms.DynSGD().apply(c, arr(0.4, -0.8), Session(0, pulled_clock=4), clock=7)
    assert_allclose(c, [1.1, 1.8], rtol=1e-6)


def test_dynsgd_fresh_update_passes_whole():
    c = arr(1.0)
    algorithms.DynSGD().apply(c, arr(0.5), Session(0, pulled_clock=9), clock=9)
    assert_allclose(c, [1.5])


def test_averaging_round_weights_by_samples():
    rule, c = algorithms.ModelAveraging(), arr(0.0, 0.0)
    acc = rule.round_begin(c)
    rule.round_add(acc, arr(1.0, 3.0), samples=100)
    rule.round_add(acc, arr(3.0, 1.0), samples=300)
    rule.round_end(c, acc)
    assert_allclose(c, [(100 * 1 + 300 * 3) / 400, (100 * 3 + 300 * 1) / 400])  # [2.5, 1.5]


def test_easgd_round_adds_every_elastic_difference():
    rule, c = algorithms.EASGD(rho=2.0, learning_rate=0.1), arr(1.0, 1.0)
    acc = rule.round_begin(c)
    rule.round_add(acc, arr(0.2, 0.0), samples=10)
    rule.round_add(acc, arr(-0.2, 0.4), samples=10)
    rule.round_end(c, acc)
    assert_allclose(c, [1.0, 1.4], rtol=1e-6)


@pytest.mark.parametrize("make", [lambda: algorithms.ADAG(gamma=0),
                                  lambda: algorithms.AEASGD(rho=-1),
                                  lambda: algorithms.AEASGD(rho=50, learning_rate=0.1),
                                  lambda: algorithms.EAMSGD(momentum=1.0)])
def test_bad_arguments_are_rejected_at_construction(make):
    with pytest.raises(ValueError):
        make()


# ---- worker halves, through a real server -----------------------------------------------
def exchange_once(rule, center, w, steps=1, pulled_first=True):
    """One worker: pull, set its weights to ``w``, exchange; return (worker w, w0, centre)."""
    with running_server(rule, center) as (server, layout, token):
        link = ServerLink(server.address, token, layout, worker=0)
        w0 = link.pull().copy()
        w_local = np.array(w, dtype=f32)
        link.samples, link.last_batch, link.loss = 32 * steps, steps - 1, 0.5
        rule.exchange(link, w_local, w0, steps)
        link.bye()
        return w_local, w0, server.center.copy()


def test_downpour_worker_sends_delta_and_takes_the_centre():
    w, w0, c = exchange_once(algorithms.DOWNPOUR(), [1.0, 2.0], [1.5, 1.0])
    assert_allclose(c, [1.5, 1.0])
    assert_allclose(w, c)
    assert_allclose(w0, c)


def test_downpour_with_a_scale_sends_that_share_of_its_change():
    # centre [1, 2], worker at [1.6, 1.0]: change [0.6, -1.0]; a quarter of it reaches C
    w, w0, c = exchange_once(algorithms.DOWNPOUR(scale=0.25), [1.0, 2.0], [1.6, 1.0])
    assert_allclose(c, [1.15, 1.75])
    assert_allclose(w, c)
    assert_allclose(w0, c)
    with pytest.raises(ValueError, match="scale"):
        algorithms.DOWNPOUR(scale=0)


def test_the_downpour_trainer_sends_one_nth_unless_told_otherwise():
    """The trainer's default share is 1/num_workers (docs/algorithms.md: the original rule
    moves the centre n times as far as model.fit would with the same optimizer)."""
    import keras

    import distkeras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    assert distkeras.DOWNPOUR(model, loss="mse", num_workers=4).algorithm.scale == 0.25
    assert distkeras.DOWNPOUR(model, loss="mse", num_workers=1).algorithm.scale == 1.0
    original = distkeras.DOWNPOUR(model, loss="mse", num_workers=4, delta_scale=1.0)
    assert original.algorithm.scale == 1.0
    assert distkeras.DOWNPOUR(model, loss="mse", num_workers=3,
                              lock=False).algorithm.get_config() == {"lock": False,
                                                                     "scale": 1 / 3}


def test_hogwild_applies_without_the_lock_and_gives_the_same_sum():
    w, _, c = exchange_once(algorithms.DOWNPOUR(lock=False), [1.0, 2.0], [0.0, 0.0])
    assert_allclose(c, [0.0, 0.0])
    assert algorithms.DOWNPOUR(lock=False).locked is False


def test_agn_worker_normalises_by_the_window():
    # W - W0 = [0.6, -0.3] over 3 steps -> delta = [0.2, -0.1]
    w, _, c = exchange_once(algorithms.AGN(), [1.0, 2.0], [1.6, 1.7], steps=3)
    assert_allclose(c, [1.2, 1.9], rtol=1e-6)
    assert_allclose(w, c)


def test_adag_worker_normalises_and_server_damps_nothing_when_fresh():
    # fresh commit: C == C0, divisor 1; delta = [0.4, 0.2] / 2
    _, _, c = exchange_once(algorithms.ADAG(), [0.0, 0.0], [0.4, 0.2], steps=2)
    assert_allclose(c, [0.2, 0.1], rtol=1e-6)


def test_aeasgd_worker_moves_towards_the_centre_and_sends_the_elastic_difference():
    # alpha = 2 * 0.1 = 0.2; W = [2, 0], C = [1, 1] -> E = [0.2, -0.2]
    w, w0, c = exchange_once(algorithms.AEASGD(rho=2.0, learning_rate=0.1), [1.0, 1.0],
                             [2.0, 0.0])
    assert_allclose(w, [1.8, 0.2], rtol=1e-6)
    assert_allclose(c, [1.2, 0.8], rtol=1e-6)
    assert_allclose(w0, [1.0, 1.0])


def test_dynsgd_through_the_server_divides_a_stale_commit():
    rule = algorithms.DynSGD()
    with running_server(rule, [0.0], num_workers=2) as (server, layout, token):
        a = ServerLink(server.address, token, layout, worker=0)
        b = ServerLink(server.address, token, layout, worker=1)
        a.pull()
        b.pull()
        a.commit(arr(1.0))  # fresh: tau = 1 -> C = 1
        a.pull()
        a.commit(arr(1.0))  # fresh again -> C = 2
        b.commit(arr(3.0))  # pulled at clock 0, server clock 2: tau = 3 -> C = 3
        assert_allclose(server.center, [3.0])
        stale = [r.staleness for r in server.history.commits]
        assert stale == [0, 0, 2]
        a.bye()
        b.bye()


def test_eamsgd_worker_trains_with_nesterov_momentum():
    # Keras' Nesterov SGD on a constant gradient g = 2, lr = 0.1, mu = 0.9, w = 1:
    # m1 = -0.2,                 w1 = 1 + 0.9 * -0.2 - 0.2          = 0.62
    # m2 = 0.9 * -0.2 - 0.2 = -0.38, w2 = 0.62 + 0.9 * -0.38 - 0.2 = 0.078
    import keras

    rule = algorithms.EAMSGD(rho=2.0, learning_rate=0.1, momentum=0.9)
    optimizer = keras.optimizers.get(rule.worker_optimizer("adam"))
    variable = keras.Variable([1.0])
    optimizer.apply_gradients([(keras.ops.convert_to_tensor([2.0]), variable)])
    assert_allclose(keras.ops.convert_to_numpy(variable), [0.62], rtol=1e-5)
    optimizer.apply_gradients([(keras.ops.convert_to_tensor([2.0]), variable)])
    assert_allclose(keras.ops.convert_to_numpy(variable), [0.078], rtol=1e-4)
    # and its exchange is AEASGD's elastic step
    w, _, c = exchange_once(rule, [1.0], [2.0])
    assert_allclose(w, [1.8], rtol=1e-6)
    assert_allclose(c, [1.2], rtol=1e-6)


def test_easgd_round_through_the_server_waits_for_both_workers():
    # alpha = 0.2, C = [1, 1]; W1 = [2, 1] -> E1 = [0.2, 0]; W2 = [0, 3] -> E2 = [-0.2, 0.4]
    rule = algorithms.EASGD(rho=2.0, learning_rate=0.1)
    with running_server(rule, [1.0, 1.0], num_workers=2) as (server, layout, token):
        results = {}

        def worker(k, w):
            link = ServerLink(server.address, token, layout, worker=k)
            w0 = link.pull().copy()
            w = np.array(w, dtype=f32)
            link.samples, link.last_batch = 10, 0
            rule.exchange(link, w, w0, 1)
            results[k] = (w, w0)
            link.bye()

        threads = [threading.Thread(target=worker, args=(0, [2.0, 1.0])),
                   threading.Thread(target=worker, args=(1, [0.0, 3.0]))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert_allclose(server.center, [1.0, 1.4], rtol=1e-6)
        assert_allclose(results[0][0], [1.8, 1.0], rtol=1e-6)
        assert_allclose(results[1][0], [0.2, 2.6], rtol=1e-6)
        assert_allclose(results[0][1], [1.0, 1.4], rtol=1e-6)  # both got the new centre
        assert_allclose(results[1][1], [1.0, 1.4], rtol=1e-6)


def test_averaging_round_through_the_server():
    rule = algorithms.ModelAveraging()
    with running_server(rule, [0.0, 0.0], num_workers=2) as (server, layout, token):
        out = {}

        def worker(k, w, samples):
            link = ServerLink(server.address, token, layout, worker=k)
            w0 = link.pull().copy()
            w = np.array(w, dtype=f32)
            link.samples = samples
            rule.exchange(link, w, w0, 1)
            out[k] = w
            link.bye()

        threads = [threading.Thread(target=worker, args=(0, [1.0, 3.0], 100)),
                   threading.Thread(target=worker, args=(1, [3.0, 1.0], 300))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert_allclose(server.center, [2.5, 1.5])
        assert_allclose(out[0], [2.5, 1.5])
