"""Checkpoints: written atomically (a crash mid-write leaves the previous one readable), and
on a timer (``checkpoint_seconds``) as well as every N commits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import running_server
from helpers import GoodWorker, wait_for

from distkeras import algorithms, checkpoint, protocol
from distkeras.parameter_server import ServerConfig

pytestmark = pytest.mark.timeout(300)

PARAMS = 4_000_000  # 16 MB: long enough to write that reads and a kill land mid-write

# writes checkpoints of a uniform centre (0, 1, 2, ...) in a loop, saying when each is done
WRITER = r'''
import sys
import numpy as np
from distkeras import checkpoint
path, size, digest = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
for value in range(10**6):
    checkpoint.save(path, np.full(size, value, np.float32), value, {0: value}, 1, digest)
    print(value, flush=True)
'''


def test_readers_during_writes_and_after_a_kill_see_whole_checkpoints(tmp_path):
    path = str(tmp_path / "run.npz")
    layout = protocol.Layout.of([np.zeros(PARAMS, np.float32)])

    def whole() -> int:
        saved = checkpoint.load(path, layout)  # the previous or the last one, never torn
        assert saved.center.min() == saved.center.max() == saved.clock
        assert saved.cursors == {0: saved.clock}
        return saved.clock

    for delay in (0.4, 0.9):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, path, str(PARAMS),
                                   layout.digest().hex()], stdout=subprocess.PIPE, text=True)
        try:
            writer.stdout.readline()  # one checkpoint is complete
            seen, until = set(), time.monotonic() + delay
            while time.monotonic() < until:  # read while later ones are being written
                seen.add(whole())
            assert len(seen) >= 2, "the reader never saw a newer checkpoint"
        finally:
            writer.send_signal(signal.SIGKILL)  # ... and die in the middle of one
            writer.wait(30)
        whole()


def test_checkpoint_seconds_saves_on_a_timer_without_checkpoint_every(tmp_path):
    path = str(tmp_path / "timed.npz")
    config = ServerConfig(checkpoint_path=path, checkpoint_seconds=0.3)
    with running_server(algorithms.DOWNPOUR(), np.zeros(10), config=config) as \
            (server, layout, token):
        worker = GoodWorker(server, layout, token)
        worker.start()
        try:
            assert wait_for(lambda: os.path.exists(path), timeout=30), "no timed checkpoint"
            first = checkpoint.load(path, layout).clock
            assert wait_for(lambda: checkpoint.load(path, layout).clock > first, timeout=30)
        finally:
            worker.stop.set()
            worker.join(30)
        assert worker.error is None
        later = checkpoint.load(path, layout)
        assert later.center[0] == later.clock  # each commit adds 1 to every weight
