"""What only long real runs meet, made short: round timeouts, silent trainers, fencing of
task attempts, checkpoints in the middle of a round, failing checkpoint writes, torn Hogwild
copies, counters past 2^32, and peers that break the rules. Timeouts are shrunk through
``ServerConfig``; every exchange goes through a real server on loopback."""

from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np
import pytest
from conftest import running_server
from helpers import wait_for
from numpy.testing import assert_array_equal

from distkeras import algorithms, checkpoint, protocol
from distkeras.parameter_server import ServerConfig
from distkeras.workers import ServerLink, WorkerError

pytestmark = pytest.mark.timeout(120)


def in_thread(target, *args):
    """Run ``target`` in a thread; returns (thread, results list, errors list)."""
    results, errors = [], []

    def run():
        try:
            results.append(target(*args))
        except Exception as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, results, errors


# ---- 1: a round's timeout counts the wait for the missing workers, nothing else -------------
def test_round_timeout_counts_from_the_first_arrival_not_from_the_last_round():
    config = ServerConfig(round_timeout=0.5)
    with running_server(algorithms.ModelAveraging(), [0.0], num_workers=2,
                        config=config) as (server, layout, token):
        links = [ServerLink(server.address, token, layout, worker=k) for k in range(2)]
        for link in links:
            link.pull()
            link.samples = 10
        for value in (2.0, 4.0):  # two rounds, each "epoch" longer than round_timeout
            time.sleep(1.0)
            threads = [in_thread(link.commit_and_pull, np.array([value], np.float32))
                       for link in links]
            for thread, _, errors in threads:
                thread.join(timeout=10)
                assert not errors, errors
        assert server.error is None
        assert server.center[0] == pytest.approx(4.0)
        for link in links:
            link.bye()


def test_a_missing_worker_that_still_trains_is_waited_for():
    config = ServerConfig(round_timeout=0.5)
    with running_server(algorithms.ModelAveraging(), [0.0], num_workers=2,
                        config=config) as (server, layout, token):
        a, b = (ServerLink(server.address, token, layout, worker=k) for k in range(2))
        a.pull()
        b.pull()
        a.samples = b.samples = 10
        assert 0 < b.heartbeat <= 0.1  # the server asks for a fifth of its shortest timeout
        waiter, results, errors = in_thread(a.commit_and_pull, np.array([2.0], np.float32))
        until = time.monotonic() + 2.0  # b trains 4x longer than round_timeout ...
        while time.monotonic() < until:
            b.heartbeat_if_due()  # ... saying so from its batch loop
            time.sleep(0.01)
        assert waiter.is_alive() and server.error is None
        b.commit_and_pull(np.array([4.0], np.float32))
        waiter.join(timeout=10)
        assert not errors, errors
        assert results[0][0] == pytest.approx(3.0)
        a.bye()
        b.bye()


def test_round_timeout_aborts_through_the_abort_callback():
    called = []
    config = ServerConfig(round_timeout=0.5)
    with running_server(algorithms.ModelAveraging(), [0.0], num_workers=2, config=config,
                        on_abort=called.append) as (server, layout, token):
        a = ServerLink(server.address, token, layout, worker=0)
        hung = ServerLink(server.address, token, layout, worker=1)
        a.pull()
        with pytest.raises(WorkerError, match="aborted"):
            a.commit_and_pull(np.array([1.0], np.float32))
        hung.close()
    assert len(called) == 1 and "worker(s) [1]" in called[0]  # the Spark job gets cancelled


# ---- 2: a worker that trains is not a hung worker, whatever its window ----------------------
def test_a_silent_but_training_worker_outlives_stall_and_idle_timeouts():
    config = ServerConfig(stall_timeout=0.6, idle_timeout=0.6)
    with running_server(algorithms.Replace(), np.zeros(4), config=config) as (
            server, layout, token):
        link = ServerLink(server.address, token, layout, worker=0)
        link.pull()
        until = time.monotonic() + 2.5  # one long window, 4x both timeouts
        while time.monotonic() < until:
            link.heartbeat_if_due()
            time.sleep(0.01)
        after = link.commit_and_pull(np.full(4, 3.0, np.float32))
        assert_array_equal(after, np.full(4, 3.0))
        assert server.error is None
        link.bye()


# ---- 4: the newest attempt of a partition owns it ------------------------------------------
@pytest.mark.parametrize("lock", [True, False], ids=["locked", "hogwild"])
def test_a_newer_attempt_fences_the_older_one(lock):
    config = ServerConfig(stall_timeout=0.5)
    with running_server(algorithms.DOWNPOUR(lock=lock), np.zeros(3), config=config) as (
            server, layout, token):
        old = ServerLink(server.address, token, layout, worker=0, attempt=0)
        old.pull()
        old.samples, old.last_batch = 32, 4
        old.commit(np.ones(3, np.float32))
        new = ServerLink(server.address, token, layout, worker=0, attempt=1)  # speculative
        assert new.cursor == 4
        with pytest.raises(WorkerError, match="newer attempt"):
            old.commit(np.ones(3, np.float32))  # refused: never applied
        assert_array_equal(server.center, np.ones(3))
        with pytest.raises(WorkerError, match="newer attempt"):
            ServerLink(server.address, token, layout, worker=0, attempt=0)  # a late zombie
        new.pull()
        for batch in range(5, 25):  # the fenced, silent connection is no hung worker
            new.samples, new.last_batch = 32, batch
            new.commit(np.ones(3, np.float32))
            time.sleep(0.05)
        assert server.error is None
        assert server.cursors == {0: 24}
        assert_array_equal(server.center, np.full(3, 21.0))
        assert server.history.samples_applied == 21 * 32
        new.bye()
        old.close()


# ---- 5: synchronous cursors become visible when the round is applied ------------------------
def worker_0_waits_in_round_0(server, layout, token, last_batch):
    """Two workers connect; worker 0 commits 2.0 for 10 samples (cursor ``last_batch``) and
    waits for worker 1. Returns (worker 1's link, the waiting thread, its errors)."""
    a, b = (ServerLink(server.address, token, layout, worker=k) for k in range(2))
    a.pull()
    a.samples, a.last_batch = 10, last_batch
    waiter, _, errors = in_thread(a.commit_and_pull, np.array([2.0], np.float32))
    assert wait_for(lambda: server._rendezvous.arrived == {0}, timeout=10)
    return b, waiter, errors


def test_a_checkpoint_in_the_middle_of_a_round_holds_no_cursor_of_it(tmp_path):
    path = str(tmp_path / "mid-round.npz")
    with running_server(algorithms.ModelAveraging(), [0.0], num_workers=2,
                        config=ServerConfig(checkpoint_path=path)) as (server, layout, token):
        b, waiter, errors = worker_0_waits_in_round_0(server, layout, token, last_batch=4)
        b.pull()
        server.checkpoint()
        mid = checkpoint.load(path, layout)
        assert mid.cursors == {} and mid.clock == 0 and mid.center[0] == 0.0
        assert server.history.samples_applied == 0
        b.samples, b.last_batch = 30, 6
        b.commit_and_pull(np.array([4.0], np.float32))
        waiter.join(timeout=10)
        assert not errors, errors
        server.checkpoint()
        after = checkpoint.load(path, layout)
        assert after.cursors == {0: 4, 1: 6} and after.clock == 2
        assert after.center[0] == pytest.approx(3.5)
        assert server.history.samples_applied == 40


def test_an_aborted_round_publishes_nothing(tmp_path):
    path = str(tmp_path / "aborted.npz")
    with running_server(algorithms.ModelAveraging(), [0.0], num_workers=2,
                        config=ServerConfig(checkpoint_path=path)) as (server, layout, token):
        b, waiter, errors = worker_0_waits_in_round_0(server, layout, token, last_batch=9)
        b._sock.shutdown(socket.SHUT_RDWR)  # worker 1 dies mid-round
        waiter.join(timeout=10)
        assert errors and "aborted" in str(errors[0])
        b.close()
    saved = checkpoint.load(path, layout)  # the last checkpoint, written by stop()
    assert saved.cursors == {} and saved.clock == 0 and saved.center[0] == 0.0


# ---- 6: a checkpoint that cannot be written stops the run, saying why -----------------------
def test_a_failing_checkpoint_write_aborts_once_naming_the_path(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the checkpoint's directory should be")
    path = str(blocker / "run.npz")
    called = []
    config = ServerConfig(checkpoint_path=path, checkpoint_every=1)
    with running_server(algorithms.DOWNPOUR(), np.zeros(2), config=config,
                        on_abort=called.append) as (server, layout, token):
        link = ServerLink(server.address, token, layout, worker=0)
        link.pull()
        link.commit(np.ones(2, np.float32))  # applied; then its checkpoint fails
        with pytest.raises(WorkerError, match="aborted"):
            link.commit(np.ones(2, np.float32))
        link.close()
    assert len(called) == 1
    assert path in server.error  # the path and the OS error, not a lost connection
    assert "FileExistsError" in server.error or "NotADirectoryError" in server.error
    assert "lost its connection" not in server.error


# ---- 7: a Hogwild checkpoint is one consistent centre ---------------------------------------
def test_hogwild_snapshots_and_checkpoints_are_never_torn(tmp_path):
    size = 1_000_000
    path = str(tmp_path / "hogwild.npz")
    # one committing worker: two concurrent lock-free applies may lose increments (that is
    # Hogwild); what must never happen is a copy taken in the middle of one apply
    with running_server(algorithms.DOWNPOUR(lock=False), np.zeros(size),
                        config=ServerConfig(checkpoint_path=path)) as (server, layout, token):
        stop = threading.Event()

        def commit_ones(worker):
            link = ServerLink(server.address, token, layout, worker=worker)
            link.pull()
            ones = np.ones(size, np.float32)
            while not stop.is_set():
                link.samples = 1
                link.commit(ones)
            link.bye()

        workers = [in_thread(commit_ones, 0)]
        assert wait_for(lambda: server.clock > 5, timeout=10)
        copies = [server.snapshot() for _ in range(20)]
        for _ in range(10):
            server.checkpoint()
            copies.append(checkpoint.load(path, layout).center)
        stop.set()
        for thread, _, errors in workers:
            thread.join(timeout=30)
            assert not errors, errors
    for copy in copies:  # every commit adds 1 to every weight: a whole copy is uniform
        assert copy.min() == copy.max(), f"torn copy: {copy.min()} .. {copy.max()}"


# ---- 10: counters that pass 2^32 ------------------------------------------------------------
def test_sample_counts_beyond_32_bits_cross_the_wire():
    with running_server(algorithms.Replace(), np.zeros(2)) as (server, layout, token):
        link = ServerLink(server.address, token, layout, worker=0)
        link.pull()
        link.samples = 2**32 + 5  # a SingleTrainer run over more than 4.3 billion samples
        link.commit_and_pull(np.ones(2, np.float32))
        link.bye()
        assert server.history.samples_applied == 2**32 + 5


# ---- 12, 13: peers that break the rules -----------------------------------------------------
def test_a_commit_before_any_pull_is_refused_and_leaves_the_clock():
    with running_server(algorithms.ADAG(), np.zeros(4)) as (server, layout, token):
        sock = socket.create_connection(server.address, timeout=10)
        sock.sendall(protocol.HELLO.pack(protocol.MAGIC, protocol.VERSION, 0, token,
                                         layout.digest(), 0, 0, 0, layout.num_params))
        protocol.recv_struct(sock, protocol.WELCOME)
        sock.sendall(protocol.request(protocol.Op.COMMIT, samples=1, nbytes=layout.nbytes)
                     + np.ones(4, np.float32).tobytes())
        sock.settimeout(10)
        try:
            assert sock.recv(64) == b""  # closed, no reply
        except ConnectionResetError:
            pass  # closed with the payload unread: a reset
        sock.close()
        assert server.clock == 0 and server.error is None
        assert_array_equal(server.center, np.zeros(4))
        link = ServerLink(server.address, token, layout, worker=0, attempt=1)  # still serves
        link.pull()
        link.commit(np.ones(4, np.float32))
        assert server.clock == 1
        link.bye()


def test_a_peer_with_a_wrong_token_learns_nothing():
    with running_server(algorithms.DOWNPOUR(), np.zeros(4), num_workers=2, clock=5,
                        cursors={1: 7}) as (server, layout, token):
        sock = socket.create_connection(server.address, timeout=10)
        sock.sendall(protocol.HELLO.pack(protocol.MAGIC, protocol.VERSION, protocol.Flag.SHARED,
                                         bytes(32), layout.digest(), 1, 0, 0,
                                         layout.num_params))
        magic, status, *rest = protocol.recv_struct(sock, protocol.WELCOME)
        sock.close()
        assert status == protocol.Status.BAD_TOKEN
        assert rest == [0, 0, 0.0, bytes(64)]
        link = ServerLink(server.address, token, layout, worker=1)  # the real worker does
        assert (link.clock, link.cursor) == (5, 7)
        link.close()


# ---- 14: a failure that a retry would repeat stops the run at once --------------------------
def test_a_worker_failure_stops_the_run_and_refuses_retries():
    called = []
    with running_server(algorithms.DOWNPOUR(), np.zeros(2), num_workers=2,
                        on_abort=called.append) as (server, layout, token):
        link = ServerLink(server.address, token, layout, worker=1)
        link.pull()
        link.fail("worker 1: training loss is nan at epoch 2, batch 17")
        link.close()
        assert "worker 1: training loss is nan at epoch 2, batch 17" in server.error
        with pytest.raises(WorkerError, match="aborted"):  # Spark's retry gets nowhere
            ServerLink(server.address, token, layout, worker=1, attempt=1)
    assert len(called) == 1


def test_no_shared_memory_segment_is_left_behind():
    before = {f for f in os.listdir("/dev/shm") if f.startswith("distkeras-")}
    test_a_newer_attempt_fences_the_older_one(True)
    after = {f for f in os.listdir("/dev/shm") if f.startswith("distkeras-")}
    assert after <= before


# ---- 1 and 2 on Spark: trainers that exchange once per epoch or once per run ----------------
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["SingleTrainer", "AveragingTrainer"])
def test_trainers_without_a_window_outlive_short_timeouts(name, spark, digits_df, digits):
    from helpers import accuracy, mlp

    import distkeras

    _, _, xt, yt = digits
    # batches of 4: an epoch takes longer than every timeout below, so the old server
    # aborted these runs (SingleTrainer: silent for the whole run; AveragingTrainer: its
    # rounds are epochs and round 0 counted Spark's start-up too)
    config = ServerConfig(stall_timeout=2.0, idle_timeout=2.0, round_timeout=2.0)
    trainer = getattr(distkeras, name)(mlp(), worker_optimizer="adam",
                                       loss="categorical_crossentropy", num_workers=2,
                                       batch_size=4, num_epoch=2, verbose=0, seed=5,
                                       server_config=config)
    model = trainer.train(digits_df)
    assert trainer.history.samples_applied == 4000 * 2
    assert accuracy(model, xt, yt) > 0.85
    assert {r["transport"] for r in trainer.worker_reports} == {"shm"}
