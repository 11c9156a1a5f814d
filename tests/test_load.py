"""32 worker processes against one parameter server with a 1M-parameter model."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import running_server

from distkeras import algorithms

WORKERS, COMMITS, PARAMS = 32, 10, 1_000_000


@pytest.mark.timeout(300)
def test_thirty_two_workers_lose_no_commit_and_memory_stays_bounded():
    script = os.path.join(os.path.dirname(__file__), "load_client.py")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with running_server(algorithms.DOWNPOUR(), np.zeros(PARAMS), num_workers=WORKERS) as (
            server, layout, token):
        host, port = server.address
        procs = [subprocess.Popen([sys.executable, script, host, str(port), token.hex(),
                                   str(k), str(COMMITS), str(PARAMS)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for k in range(WORKERS)]
        outputs = [p.communicate(timeout=240) for p in procs]
        assert [p.returncode for p in procs] == [0] * WORKERS, outputs[0][1][-2000:]
        counted = sum(int(out.strip()) for out, _ in outputs)
        assert counted == WORKERS * COMMITS
        assert server.clock == counted  # no lost commit, none applied twice
        np.testing.assert_array_equal(server.center[:5], np.full(5, counted, np.float32))
        assert set(server.history.summary()) == set(range(WORKERS))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # per connection the server maps one 8 MB shared segment; well under 1 GB in all
    grown = peak - before
    print(f"{WORKERS} workers, {counted} commits of {PARAMS:,} parameters; server process "
          f"peak RSS grew by {grown:.0f} MB")
    assert grown < 1024
    assert [t.name for t in threading.enumerate() if t.name.startswith("distkeras-ps")] == []
