"""One load-test worker: ``python load_client.py HOST PORT TOKEN WORKER COMMITS PARAMS``.

Connects and pulls, prints ``ready`` and waits for a line on stdin (so that the test can hold
every worker connected at once), then commits +1 to every weight COMMITS times (pulling after
each), says bye and prints COMMITS and its link's transport."""

import sys

import numpy as np

from distkeras import protocol
from distkeras.workers import ServerLink

host, port, token, worker, commits, params = sys.argv[1:7]
layout = protocol.Layout.of([np.zeros(int(params), np.float32)])
link = ServerLink((host, int(port)), bytes.fromhex(token), layout, worker=int(worker))
transport = link.transport
ones = np.ones(int(params), np.float32)
link.pull()  # a worker pulls before its first commit
print("ready", flush=True)
sys.stdin.readline()  # "go": every worker is connected
for _ in range(int(commits)):
    link.samples = 1
    link.commit_and_pull(ones)
link.bye()
print(commits, transport, flush=True)
