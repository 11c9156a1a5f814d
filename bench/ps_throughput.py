"""Parameter-server throughput: commit-and-pull round trips on one host.

Why: every exchange of an asynchronous trainer (DOWNPOUR, AGN, ADAG, DynSGD) is one
``commit_and_pull``: the worker sends its whole update as one float32 buffer and receives the
whole centre variable back. This bench measures that round trip against a real
:class:`distkeras.ParameterServer` on 127.0.0.1, for several model sizes and numbers of
concurrent clients, over both payload paths a worker can get (``--transport``): the
shared-memory segment the server offers a worker on its own host ("shm", what every worker
on ``local[N]`` uses) and the socket ("tcp", what a worker on another host uses; here
``ServerLink(..., shared_memory=False)`` over loopback). Each row reports the transport the
clients' links actually used (``link.transport``): "tcp" also when shared memory was asked
for and the server could not offer it. The yardstick is the cheapest thing one could do with
the same buffer: a numpy copy (``np.copyto``) of it. The target of the issue is a round trip
at most 10 times a numpy copy of the same buffer for models of 1M parameters and more.

Each client is a separate Python process (as Spark tasks are), started once with
``subprocess`` and driven over its stdin/stdout with JSON lines (no pickle); it opens a
``workers.ServerLink`` (with or without shared memory), does warm-up round trips, waits
until every client is ready, then times N ``link.commit_and_pull(update)`` calls, reports
its link's transport and says ``bye``. The server runs
``algorithms.DOWNPOUR()`` with ``num_workers`` = number of clients.

Run (from the repository root; the default run measures both transports and takes several
minutes on 2 cores)::

    .venv/bin/python bench/ps_throughput.py
    .venv/bin/python bench/ps_throughput.py --params 10000,1000000 --clients 1,2 --iters 50
    .venv/bin/python bench/ps_throughput.py --transport tcp
    .venv/bin/python bench/ps_throughput.py --out bench/out/ps_throughput.jsonl

One JSON line per (params, transport, clients) goes to stdout (and is appended to ``--out``);
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _common import emit, log, machine_info, utc_now

TARGET_RATIO = 10.0  # round trip <= 10 x numpy copy ...
TARGET_MIN_PARAMS = 1_000_000  # ... for models of this size and above
TRANSPORTS = ("shm", "tcp")  # what --transport asks the clients' links for


def make_layout(num_params: int, arrays: int) -> Any:
    """A layout of ``arrays`` float32 vectors adding up to ``num_params`` parameters."""
    from distkeras import protocol

    arrays = max(1, min(int(arrays), int(num_params)))
    base, extra = divmod(int(num_params), arrays)
    sizes = [base + (1 if i < extra else 0) for i in range(arrays)]
    return protocol.Layout.of([np.zeros(size, dtype=np.float32) for size in sizes])


def auto_iters(nbytes: int, budget: float, lo: int = 10, hi: int = 2000) -> int:
    """Timed round trips per client: about ``budget`` bytes sent, within [lo, hi]."""
    return int(min(hi, max(lo, round(budget / max(nbytes, 1)))))


def numpy_copy_seconds(num_params: int, reps: int | None = None) -> tuple[float, int]:
    """Median seconds of ``np.copyto`` of a float32 vector into a preallocated one."""
    src = np.random.default_rng(0).standard_normal(num_params, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch the pages once: no page faults in the timed copies
    if reps is None:
        reps = int(min(1000, max(9, 4e8 // max(src.nbytes, 1))))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), reps


# ---- client process -------------------------------------------------------------------------
def client_main() -> None:
    """Serve run requests from the parent over stdin/stdout (JSON lines) until 'exit'."""
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not break the protocol
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from distkeras.workers import ServerLink

    def send(message: dict[str, Any]) -> None:
        proto.write(json.dumps(message) + "\n")
        proto.flush()

    send({"hello": os.getpid()})
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "exit":
            break
        try:
            send(client_run(request, ServerLink, send))
        except Exception as error:  # reported to the parent, which stops the bench
            send({"error": f"{type(error).__name__}: {error}"})


def client_run(request: dict[str, Any], link_class: type,
               send: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Connect, warm up, say ready, wait for 'go', time the round trips, say bye."""
    layout = make_layout(request["num_params"], request["arrays"])
    address = (request["host"], int(request["port"]))
    link = link_class(address, bytes.fromhex(request["token"]), layout,
                      worker=int(request["worker"]),
                      shared_memory=bool(request.get("shared_memory", True)))
    try:
        transport = link.transport  # what the handshake gave: "shm" or "tcp"
        update = np.full(layout.num_params, 1e-7, dtype=np.float32)
        link.pull()  # a worker pulls before its first commit
        for _ in range(int(request["warmup"])):
            link.commit_and_pull(update)
        send({"ready": True})
        go = json.loads(sys.stdin.readline() or "{}")
        if go.get("cmd") != "go":
            raise RuntimeError(f"expected 'go' from the parent, got {go!r}")
        durations = []
        start = time.time()
        for _ in range(int(request["iters"])):
            t0 = time.perf_counter()
            link.commit_and_pull(update)
            durations.append(time.perf_counter() - t0)
        end = time.time()
        link.bye()
        return {"durations": durations, "start": start, "end": end, "transport": transport}
    finally:
        link.close()


# ---- parent -------------------------------------------------------------------------------
class ClientPool:
    """``size`` client processes, started once and reused for every configuration."""

    def __init__(self, size: int) -> None:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        command = [sys.executable, os.path.abspath(__file__), "--client"]
        self.procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True, bufsize=1, env=env) for _ in range(size)]
        for proc in self.procs:
            self.receive(proc)  # the hello: imports done

    def send(self, proc: subprocess.Popen, message: dict[str, Any]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(message) + "\n")
        proc.stdin.flush()

    def receive(self, proc: subprocess.Popen) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"client process {proc.pid} exited (code {proc.poll()})")
        message = json.loads(line)
        if "error" in message:
            raise RuntimeError(f"client process {proc.pid}: {message['error']}")
        return message

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    self.send(proc, {"cmd": "exit"})
                    assert proc.stdin is not None
                    proc.stdin.close()
                except OSError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_config(pool: ClientPool, num_params: int, clients: int, iters: int, warmup: int,
               arrays: int, shared_memory: bool = True) -> dict[str, Any]:
    """One server, ``clients`` concurrent clients; pooled round-trip statistics.

    ``shared_memory``: whether the clients ask for the shared-memory payload path; the
    ``transport`` returned is what their links actually used ("shm", "tcp", or "mixed"
    when they differ; ``transports`` lists each client's)."""
    from distkeras import algorithms, protocol
    from distkeras.parameter_server import ParameterServer

    layout = make_layout(num_params, arrays)
    token = protocol.new_token()
    center = np.zeros(layout.num_params, dtype=protocol.DTYPE)
    server = ParameterServer(center, layout, algorithms.DOWNPOUR(), num_workers=clients,
                             token=token, bind_host="127.0.0.1")
    procs = pool.procs[:clients]
    try:
        server.start()
        host, port = server.address
        for worker, proc in enumerate(procs):
            pool.send(proc, {"cmd": "run", "host": host, "port": port, "token": token.hex(),
                             "num_params": num_params, "arrays": arrays, "worker": worker,
                             "warmup": warmup, "iters": iters,
                             "shared_memory": bool(shared_memory)})
        for proc in procs:
            pool.receive(proc)  # ready: connected and warmed up
        for proc in procs:
            pool.send(proc, {"cmd": "go"})
        results = [pool.receive(proc) for proc in procs]
    finally:
        server.stop()
    if server.error:
        raise RuntimeError(f"parameter server error: {server.error}")
    durations = np.concatenate([np.asarray(r["durations"], dtype=np.float64) for r in results])
    elapsed = max(r["end"] for r in results) - min(r["start"] for r in results)
    per_client_mean = [float(np.mean(r["durations"])) for r in results]
    round_trips = int(durations.size)
    transports = [str(r["transport"]) for r in results]
    return {
        "transport": transports[0] if len(set(transports)) == 1 else "mixed",
        "transports": transports,
        "round_trips": round_trips,
        "elapsed_s": elapsed,
        "round_trips_per_s": round_trips / elapsed,
        "round_trips_per_s_per_client": round_trips / elapsed / clients,
        "rt_mean_s": float(durations.mean()),
        "rt_p50_s": float(np.percentile(durations, 50)),
        "rt_p99_s": float(np.percentile(durations, 99)),
        "rt_min_s": float(durations.min()),
        "rt_mean_s_slowest_client": max(per_client_mean),
        "mb_per_s": round_trips * 2 * layout.nbytes / elapsed / 1e6,
        "server_commits": len(server.history.commits),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="10000,1000000,10000000",
                        help="comma list of model sizes in float32 parameters")
    parser.add_argument("--clients", default="1,2,4",
                        help="comma list of concurrent client processes")
    parser.add_argument("--iters", type=int, default=None,
                        help="timed round trips per client (default: about --budget-mb of "
                             "payload per client, between 10 and 2000)")
    parser.add_argument("--budget-mb", type=float, default=4000.0,
                        help="payload per client and configuration when --iters is not given")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed round trips per client first (default: iters/10, >= 2)")
    parser.add_argument("--transport", choices=("shm", "tcp", "both"), default="both",
                        help="payload path the clients ask for: shared memory (as workers on "
                             "the server's host), the socket (as workers on another host), or "
                             "both, one row each (default)")
    parser.add_argument("--arrays", type=int, default=1,
                        help="number of arrays the layout splits the parameters into")
    parser.add_argument("--copy-reps", type=int, default=None,
                        help="repetitions of the numpy copy (default: by size, 9 to 1000)")
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _int_list(text: str) -> list[int]:
    return [int(float(item)) for item in text.split(",") if item.strip()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client:
        client_main()
        return 0
    sizes, counts = _int_list(args.params), _int_list(args.clients)
    transports = TRANSPORTS if args.transport == "both" else (args.transport,)
    if not sizes or not counts or min(sizes) < 1 or min(counts) < 1:
        raise SystemExit("--params and --clients need positive integers")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    info = machine_info()
    started = time.time()
    log(f"ps_throughput: starting {max(counts)} client process(es)")
    pool = ClientPool(max(counts))
    log(f"ps_throughput: clients ready in {time.time() - started:.1f}s")
    try:
        for num_params in sizes:
            nbytes = num_params * 4
            copy_s, copy_reps = numpy_copy_seconds(num_params, args.copy_reps)
            iters = args.iters or auto_iters(nbytes, args.budget_mb * 1e6)
            warmup = args.warmup if args.warmup is not None else max(2, iters // 10)
            for requested, clients in [(t, c) for t in transports for c in counts]:
                log(f"ps_throughput: {num_params:,} params, {requested}, {clients} client(s), "
                    f"{warmup} warm-up + {iters} timed round trips each")
                stats = run_config(pool, num_params, clients, iters, warmup, args.arrays,
                                   shared_memory=requested == "shm")
                if stats["transport"] != requested:
                    log(f"ps_throughput: asked for {requested}, the links used "
                        f"{stats['transports']}")
                ratio = stats["rt_p50_s"] / copy_s
                record = {
                    "bench": "ps_throughput",
                    "params": num_params,
                    "clients": clients,
                    "payload_bytes": nbytes,
                    "arrays": args.arrays,
                    "algorithm": "DOWNPOUR",
                    "transport_requested": requested,
                    "transport": stats["transport"],  # what the links used: shm or tcp
                    "client_kind": "process",
                    "warmup": warmup,
                    "iters_per_client": iters,
                    **stats,
                    "numpy_copy_s": copy_s,
                    "numpy_copy_reps": copy_reps,
                    "numpy_copy_gb_per_s": nbytes / copy_s / 1e9,
                    "ratio": ratio,
                    "ratio_mean": stats["rt_mean_s"] / copy_s,
                    "target_ratio": TARGET_RATIO,
                    "meets_target": (ratio <= TARGET_RATIO
                                     if num_params >= TARGET_MIN_PARAMS else None),
                    **info,
                    "utc": utc_now(),
                }
                emit(record, args.out)
    finally:
        pool.close()
    log(f"ps_throughput: done in {time.time() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
