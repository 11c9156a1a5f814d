"""One load-test worker: ``python load_client.py HOST PORT TOKEN WORKER COMMITS PARAMS``.
Commits +1 to every weight COMMITS times (pulling after each), then says bye."""

import sys

import numpy as np

from distkeras import protocol
from distkeras.workers import ServerLink

host, port, token, worker, commits, params = sys.argv[1:7]
layout = protocol.Layout.of([np.zeros(int(params), np.float32)])
link = ServerLink((host, int(port)), bytes.fromhex(token), layout, worker=int(worker))
ones = np.ones(int(params), np.float32)
link.pull()  # a worker pulls before its first commit
for _ in range(int(commits)):
    link.samples = 1
    link.commit_and_pull(ones)
link.bye()
print(commits, flush=True)
