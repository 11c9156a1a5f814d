"""How soon a fresh local session's Python workers can train: the session's start, then a
two-task job whose tasks import Keras (as a training task does first).

Why: the workers' import of the backend (about 5 s of CPU for TensorFlow) is the largest fixed
cost of a first run; ``local_session`` starts it before the JVM (distkeras/forkserver.py).
This bench times what that overlap gives without a DataFrame or training in between: each
run is a fresh Python process (Keras imported before the clock, as a user's script has)
that calls ``local_session(2)`` and then runs the job. One JSON line per run: ``session_s``
(``local_session`` returned), ``ready_s`` (the job returned, from the same start), and
``job_s`` (the difference).

    .venv/bin/python bench/session_start.py --runs 3 --out bench/out/session_start.jsonl
    .venv/bin/python bench/session_start.py --no-preload
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from _common import emit, log, machine_info, utc_now

ONE_RUN = r"""
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
import distkeras

started = time.time()
spark = distkeras.local_session(2, app_name="distkeras-bench-session-start",
                                preload=sys.argv[1] == "1")
session = time.time()


def first_task(batches):
    import keras  # noqa: F401 - what a training task imports first
    yield from batches


spark.range(0, 2, 1, 2).mapInArrow(first_task, "id long").collect()
ready = time.time()
spark.stop()
print("RESULT " + json.dumps({"session_s": session - started, "ready_s": ready - started,
                              "job_s": ready - session, "backend": keras.backend.backend()}))
"""


def one_run(preload: bool) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
         os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    done = subprocess.run([sys.executable, "-c", ONE_RUN, "1" if preload else "0"], env=env,
                          capture_output=True, text=True, timeout=300, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-preload", dest="preload", action="store_false",
                        help="local_session(preload=False): each worker imports for itself")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    info = machine_info()
    for run in range(args.runs):
        log(f"session_start: run {run + 1} of {args.runs}")
        emit({"bench": "session_start", "preload": args.preload, **one_run(args.preload),
              **info, "utc": utc_now()}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
