"""32 worker processes against one parameter server with a 1M-parameter model.

The server's memory is measured as what it is now, not as a lifetime peak: a thread samples
the process's resident set (``/proc/self/statm``, shared-memory mappings included) and the
server's open connections every 2 ms during the load, and compares them with the resident set
before the server started. What the design allows: the centre variable (one copy of the
model) and, per open same-host connection, one shared-memory segment of two model copies (the
update half and the reply half); nothing per commit.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import running_server

from distkeras import algorithms

WORKERS, COMMITS, PARAMS = 32, 10, 1_000_000
MB = 1_000_000
MODEL = PARAMS * 4  # bytes of one float32 copy of the model
SEGMENT = 2 * MODEL  # one connection's shared segment: update half + reply half
# what else the server may hold while loaded: thread stacks, malloc arenas, history records,
# socket objects (32 connections); far below one model copy per connection (128 MB) or per
# commit (1.3 GB)
SLACK = 48 * MB
PAGE = os.sysconf("SC_PAGE_SIZE")


def resident() -> int:
    """Bytes resident in this process now (anonymous, file and shared mappings)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


class Sampler(threading.Thread):
    """Resident memory above ``baseline`` and the server's open connections, sampled together
    every 2 ms: the peak growth, the most connections at once, and the largest growth beyond
    one segment per connection then open."""

    def __init__(self, server, baseline: int):
        super().__init__(daemon=True, name="memory-sampler")
        self.server, self.baseline = server, baseline
        self.done = threading.Event()
        self.samples = 0
        self.peak = 0
        self.peak_connections = 0
        self.excess = -(1 << 62)

    def run(self) -> None:
        while not self.done.is_set():
            before = len(self.server._connections)
            grown = resident() - self.baseline
            # a connection that closed meanwhile may still have been mapped: count it
            open_now = max(before, len(self.server._connections))
            self.peak = max(self.peak, grown)
            self.peak_connections = max(self.peak_connections, open_now)
            self.excess = max(self.excess, grown - SEGMENT * open_now)
            self.samples += 1
            self.done.wait(0.002)

    def wait_for_samples(self, count: int, timeout: float = 30.0) -> None:
        target, deadline = self.samples + count, time.monotonic() + timeout
        while self.samples < target and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.samples >= target, "the memory sampler stopped sampling"


@pytest.mark.timeout(300)
def test_thirty_two_workers_lose_no_commit_and_memory_stays_bounded():
    script = os.path.join(os.path.dirname(__file__), "load_client.py")
    gc.collect()
    baseline = resident()
    with running_server(algorithms.DOWNPOUR(), np.zeros(PARAMS), num_workers=WORKERS) as (
            server, layout, token):
        sampler = Sampler(server, baseline)
        sampler.start()
        host, port = server.address
        procs = [subprocess.Popen([sys.executable, script, host, str(port), token.hex(),
                                   str(k), str(COMMITS), str(PARAMS)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for k in range(WORKERS)]
        try:
            # every worker connected and pulled: 32 connections open at once
            ready = [p.stdout.readline().strip() for p in procs]
            assert ready == ["ready"] * WORKERS, [p.stderr.read()[-2000:] for p in procs
                                                  if p.poll() is not None][:1]
            sampler.wait_for_samples(3)
            started = time.monotonic()
            for p in procs:  # all at once
                p.stdin.write("go\n")
                p.stdin.flush()
            outputs = [p.communicate(timeout=240) for p in procs]
            elapsed = time.monotonic() - started
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            sampler.done.set()
            sampler.join(timeout=10)
        assert [p.returncode for p in procs] == [0] * WORKERS, outputs[0][1][-2000:]
        replies = [out.split() for out, _ in outputs]
        counted = sum(int(count) for count, _ in replies)
        assert counted == WORKERS * COMMITS
        assert {transport for _, transport in replies} == {"shm"}  # same host: segments
        assert server.clock == counted  # no lost commit, none applied twice
        # every one of the 1M weights got every commit's +1, once
        assert np.all(server.center == np.float32(counted)), \
            np.flatnonzero(server.center != np.float32(counted))[:10]
        assert set(server.history.summary()) == set(range(WORKERS))
    gc.collect()
    left = resident() - baseline
    print(f"{WORKERS} workers, {counted} commits of {PARAMS:,} parameters in {elapsed:.1f}s; "
          f"server resident memory: peak {sampler.peak / MB:.0f} MB above the baseline with "
          f"{sampler.peak_connections} connections open at once, at most "
          f"{sampler.excess / MB:.0f} MB beyond one {SEGMENT // MB} MB segment per open "
          f"connection, {left / MB:.0f} MB after the workers left "
          f"({sampler.samples} samples)")
    assert sampler.peak_connections == WORKERS
    # the documented bound: the centre plus one segment per open connection, at every sample
    assert sampler.excess <= MODEL + SLACK, f"{sampler.excess / MB:.0f} MB"
    assert sampler.peak <= MODEL + WORKERS * SEGMENT + SLACK, f"{sampler.peak / MB:.0f} MB"
    # the segments are unmapped when their connections end: nothing kept per worker
    assert left <= MODEL + SLACK, f"{left / MB:.0f} MB"
    assert [t.name for t in threading.enumerate() if t.name.startswith("distkeras-ps")] == []
