"""Parameter-server load: commits/s and latency as the number of workers grows 1 -> 32.

Why: an asynchronous run on a cluster has many workers committing into one server thread
pool on the driver. This bench drives a real ``ParameterServer`` (DOWNPOUR rule, 1M float32
parameters by default) on this host with 1, 2, 4, 8, 16 and 32 concurrent client processes
(the client processes of ``bench/ps_throughput.py``, on the shared-memory payload path that
workers beside the driver get; ``transport`` says what their links used), checks that no
commit is lost (server count = clients x calls) and reports commits/s, p50/p99 latency and how
far the bench process's resident memory (the server lives in it) rose above its level before
that configuration's server started: its peak during the run, from the kernel's high-water
mark reset at the start (``distkeras.memory.PeakRSS``), not the process-lifetime peak.

    .venv/bin/python bench/ps_load.py --out bench/out/ps_load.jsonl
    .venv/bin/python bench/ps_load.py --workers 1,4 --iters 20          # a quick check
"""

from __future__ import annotations

import argparse

from _common import emit, log, machine_info, utc_now
from ps_throughput import ClientPool, run_config

from distkeras.memory import PeakRSS, rss

MB = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4,8,16,32")
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--iters", type=int, default=50, help="timed commits per worker")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    pool = ClientPool(max(counts))
    try:
        for workers in counts:
            log(f"ps_load: {workers} workers x {args.iters} commits of {args.params:,} params")
            baseline = rss()
            meter = PeakRSS().start()
            stats = run_config(pool, args.params, workers, args.iters, args.warmup, 1)
            peak = meter.stop()
            expected = workers * (args.iters + args.warmup)
            growth_mb = (peak - baseline) / MB if peak and baseline else None
            emit({"bench": "ps_load", "utc": utc_now(), **machine_info(),
                  "params": args.params, "workers": workers, "iters_per_worker": args.iters,
                  "transport": stats["transport"],
                  "commits_per_s": stats["round_trips_per_s"],
                  "latency_p50_s": stats["rt_p50_s"], "latency_p99_s": stats["rt_p99_s"],
                  "latency_mean_s": stats["rt_mean_s"],
                  "server_commits": stats["server_commits"], "expected_commits": expected,
                  "lost_commits": expected - stats["server_commits"],
                  "server_rss_growth_mb": growth_mb,
                  "server_peak_rss_mb": peak / MB if peak else None}, args.out)
    finally:
        pool.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
