"""The two schedules written once: who meets in a synchronous round, and when a worker
trains and exchanges."""

from __future__ import annotations

import numpy as np

from distkeras.rendezvous import EXCHANGE, TRAIN, Rendezvous, batch_schedule


def test_a_round_ends_when_every_active_worker_arrived_or_left():
    rendezvous = Rendezvous(range(3))
    assert rendezvous.arrive(0, "a") is None
    assert rendezvous.arrive(2, "c") is None
    assert rendezvous.missing == {1}
    assert rendezvous.leave(1) == ["a", "c"]  # the last member ran out of data
    assert rendezvous.round_no == 1 and not rendezvous.open
    assert rendezvous.arrive(2, "c2") is None
    assert rendezvous.arrive(0, "a2") == ["c2", "a2"]  # arrival order


def steps(rows=10, batch=3, epochs=2, window=2.0, each_epoch=False, resume=-1):
    order = lambda epoch: np.arange(rows)[::-1] if epoch % 2 else np.arange(rows)  # noqa: E731
    return [(s.kind, s.epoch, s.batch, s.index) + ((tuple(s.rows),) if s.kind == TRAIN else ())
            for s in batch_schedule(rows, batch, epochs, window, each_epoch, order, resume)]


def test_the_schedule_exchanges_every_window_and_commits_the_last_partial_one():
    got = steps()
    trains = [s for s in got if s[0] == TRAIN]
    assert [s[3] for s in trains] == list(range(8))  # 4 batches per epoch, 2 epochs
    assert trains[3][4] == (9,) and trains[4][4] == (9, 8, 7)  # the epoch's own order
    exchanges = [s[3] for s in got if s[0] == EXCHANGE]
    assert exchanges == [1, 3, 5, 7]  # windows cross epoch ends


def test_model_averaging_exchanges_at_every_epoch_end():
    got = steps(window=float("inf"), each_epoch=True)
    assert [s[1:4] for s in got if s[0] == EXCHANGE] == [(0, 3, 3), (1, 3, 7)]


def test_a_resumed_attempt_skips_what_was_committed():
    got = steps(window=3, resume=4)
    assert [s[3] for s in got if s[0] == TRAIN] == [5, 6, 7]
    assert [s[3] for s in got if s[0] == EXCHANGE] == [7]  # a full window at the end


def test_an_empty_partition_has_no_steps():
    assert steps(rows=0) == []
