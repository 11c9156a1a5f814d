"""Shared memory on a /dev/shm too small for the model; run by tests/test_shared_memory.py.

Meant to run inside a private mount namespace with a tiny tmpfs on /dev/shm (1 MiB), as in

    unshare --mount --propagation private sh -c \
        'mount -t tmpfs -o size=1m tmpfs /dev/shm && exec python tests/shm_script.py'

Each scenario prints one line ``<name> <result>`` and the files it left in /dev/shm; the
process exits 0 when it gets to the end. A segment too big for the tmpfs used to be created
sparse and the first write into it killed the process with SIGBUS (exit -7 / 135).
"""

from __future__ import annotations

import glob
import sys

import numpy as np

from distkeras import algorithms, protocol
from distkeras.parameter_server import ParameterServer, ServerConfig
from distkeras.shared_memory import SHM_DIR, Segment
from distkeras.workers import ServerLink

LARGE = 2 * 1024 * 1024  # 2M float32: 8 MiB per vector, 16 MiB segment, on a 1 MiB tmpfs
SMALL = 1000  # 8 kB segment: fits


def leftovers() -> int:
    return len(glob.glob(f"{SHM_DIR}/distkeras-*"))


def report(name: str, result: str) -> None:
    print(f"{name} {result} leftover {leftovers()}", flush=True)


def create(num_params: int) -> str:
    segment = Segment.create(num_params)
    if segment is None:
        return "none"
    segment.close()
    return "made"


def train(num_params: int) -> str:
    """One real server and one ServerLink with shared memory on: pull, commit, check."""
    rng = np.random.default_rng(num_params)
    center = rng.standard_normal(num_params).astype(np.float32)
    layout = protocol.Layout.of([center])
    token = protocol.new_token()
    server = ParameterServer(center.copy(), layout, algorithms.DOWNPOUR(), 1, token,
                             config=ServerConfig())
    server.start()
    try:
        link = ServerLink(server.address, token, layout, worker=0, shared_memory=True)
        transport = "tcp" if link.segment is None else "shm"
        pulled = link.pull()
        assert np.array_equal(pulled, center), "pulled centre differs from the server's"
        delta = rng.standard_normal(num_params).astype(np.float32)
        after = np.array(link.commit_and_pull(delta))
        link.bye()
        expected = center + delta
        assert np.array_equal(after, expected), "centre did not move by exactly the update"
        assert np.array_equal(server.center, expected), "server centre is not centre + update"
    finally:
        server.stop()
    return transport


def main(scenarios: list[str]) -> int:
    for scenario in scenarios:
        what, size = scenario.split(":")
        num_params = {"large": LARGE, "small": SMALL}[size]
        result = create(num_params) if what == "create" else f"transport {train(num_params)}"
        report(scenario, result)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["create:large", "train:large", "train:small"]))
