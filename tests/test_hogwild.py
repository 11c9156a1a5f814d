"""Hogwild (``DOWNPOUR(lock=False)``) on a real server: applies really run without the lock.

Four ServerLink clients commit a 2M-parameter update concurrently. The server's DOWNPOUR rule
is subclassed to record, in the server's threads, when each apply starts and ends
(``time.perf_counter``). Lock-free, two applies must be seen running at the same time; with
the lock (the default), never.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import running_server

from distkeras import algorithms
from distkeras.workers import ServerLink

pytestmark = pytest.mark.timeout(180)

WORKERS, PARAMS = 4, 2_000_000
WANTED = 3  # overlapping applies to see before the lock-free run stops
LOCKED_COMMITS = 50  # commits per worker of the locked run (none may overlap)


class TimedDOWNPOUR(algorithms.DOWNPOUR):
    """DOWNPOUR that records (start, end, worker) of every apply, and the most applies that
    were inside :meth:`apply` at once."""

    def __init__(self, lock: bool):
        super().__init__(lock=lock)
        self.intervals: list[tuple[float, float, int]] = []
        self.inside = self.most_inside = 0
        self._count = threading.Lock()  # guards the counters only, never the apply

    def apply(self, c, update, session, clock):
        with self._count:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        start = time.perf_counter()
        try:
            super().apply(c, update, session, clock)
        finally:
            end = time.perf_counter()
            with self._count:
                self.inside -= 1
                self.intervals.append((start, end, session.worker))

    def overlaps(self) -> int:
        """Applies that started before an earlier-started one had ended."""
        with self._count:
            intervals = sorted(self.intervals)
        count, latest_end = 0, float("-inf")
        for start, end, _ in intervals:
            count += start < latest_end
            latest_end = max(latest_end, end)
        return count


def commit_concurrently(rule: TimedDOWNPOUR, enough, commits: int | None = None):
    """WORKERS clients, each in its own thread, commit +1 to every weight until ``enough()``
    holds (checked every 10 ms for at most 30 s) or each made ``commits``. Returns the server
    and the commits each client made."""
    with running_server(rule, np.zeros(PARAMS), num_workers=WORKERS) as (server, layout, token):
        links = [ServerLink(server.address, token, layout, worker=w) for w in range(WORKERS)]
        ones = np.ones(PARAMS, np.float32)
        start, stop = threading.Barrier(WORKERS), threading.Event()
        made, errors = [0] * WORKERS, []

        def work(w: int) -> None:
            try:
                link = links[w]
                link.pull()  # a worker pulls before its first commit
                start.wait(timeout=30)
                while not stop.is_set() and (commits is None or made[w] < commits):
                    link.samples = 1
                    link.commit_and_pull(ones)
                    made[w] += 1
                link.bye()
            except Exception as error:  # noqa: BLE001 - reported by the test
                errors.append(error)

        threads = [threading.Thread(target=work, args=(w,), daemon=True)
                   for w in range(WORKERS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while any(t.is_alive() for t in threads) and not enough() \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        assert not errors, errors
        assert not any(t.is_alive() for t in threads)
        assert server.error is None
    return server, made


def test_lock_free_applies_run_at_the_same_time():
    rule = TimedDOWNPOUR(lock=False)
    server, made = commit_concurrently(rule, lambda: rule.overlaps() >= WANTED)
    total = sum(made)
    print(f"hogwild: {rule.overlaps()} of {total} applies of {PARAMS:,} parameters overlapped "
          f"another; at most {rule.most_inside} at once; weights between "
          f"{server.center.min():.0f} and {server.center.max():.0f} of {total}")
    assert rule.overlaps() >= WANTED
    assert rule.most_inside >= 2
    # the clock and the history still count every commit exactly once (only the additions
    # into the centre race); no weight got more than every commit
    assert server.clock == len(rule.intervals) == total
    assert len(server.history.commits) == total
    assert server.center.max() <= total


def test_locked_applies_never_overlap():
    rule = TimedDOWNPOUR(lock=True)
    server, made = commit_concurrently(rule, lambda: False, commits=LOCKED_COMMITS)
    total = sum(made)
    assert total == WORKERS * LOCKED_COMMITS
    assert len(rule.intervals) == total
    assert rule.overlaps() == 0 and rule.most_inside == 1
    assert server.clock == total
    assert np.all(server.center == np.float32(total))  # under the lock, no addition is lost
