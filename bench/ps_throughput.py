"""Parameter-server throughput: commit-and-pull round trips, same host and across hosts.

Why: every exchange of an asynchronous trainer (DOWNPOUR, AGN, ADAG, DynSGD) is one
``commit_and_pull``: the worker sends its whole update as one float32 buffer and receives the
whole centre variable back. This bench measures that round trip against a real
:class:`distkeras.ParameterServer` running in the bench process, for several model sizes and
numbers of concurrent clients, over the three paths a worker can be on (``--transport``):

* ``shm``: a worker on the server's host (every worker on ``local[N]``) with the
  shared-memory segment the server offers it; only headers cross the socket (127.0.0.1).
* ``tcp``: a worker on the server's host that uses the socket anyway
  (``ServerLink(..., shared_memory=False)`` over loopback 127.0.0.1).
* ``cross-host``: the clients run on another "host", a Linux network namespace on a bridge
  with its own empty /dev/shm (``tests/hosts.py``: :class:`HostNetwork`); the server binds
  the bridge's address in the root namespace and the clients reach it by TCP over the
  bridge (a veth pair, MTU 1500), as a worker on another machine does. They ask for shared
  memory, as every worker does, and the server offers none to a peer not on its host. Needs
  root and iproute2; where it cannot run it is skipped with the reason on stderr (and left
  out of the default set). Every namespace, link and process it makes is removed on exit,
  Ctrl-C and SIGTERM included; ``hosts.sweep()`` removes what a killed run left.

Each row reports the transport the clients' links actually used (``link.transport``: "tcp"
also when shared memory was asked for and the server did not offer it, as for every
cross-host client) and the ``placement`` of the clients ("same-host" or "cross-host").

Two yardsticks, measured in the same run:

* a numpy copy (``np.copyto``) of the same buffer: the cheapest thing one could do with it.
  Target: a round trip at most 10 times that copy for models of 1M parameters and more
  (``ratio``, ``meets_target``).
* for the socket paths (``tcp``, ``cross-host``), a raw-socket echo of the same bytes: a plain
  TCP server thread in the bench process (on the server's address) reads ``params * 4`` bytes
  into a preallocated buffer and writes them back with ``sendall``; one client process in
  the same place as the real clients (the same namespace for cross-host) times the round
  trips (``sendall`` of a preallocated buffer, ``recv_into`` a preallocated one; both
  sockets ``TCP_NODELAY``). That is the floor of moving the payload both ways over that path
  in Python, with nothing of the parameter server (headers, checks, the apply, the copies).
  Target of the issue: a commit-and-pull round trip at 1M float32 parameters within 1.5 times
  the echo (``ratio_to_echo``; ``meets_echo_target`` on the rows with at least 1M parameters,
  one client and a socket path).

Each client is a separate Python process (as Spark tasks are), started once with
``subprocess`` and driven over its stdin/stdout with JSON lines (no pickle on any socket or
pipe); it opens a ``workers.ServerLink`` (with or without shared memory), does warm-up round
trips, waits until every client is ready, then times N ``link.commit_and_pull(update)``
calls, reports its link's transport and says ``bye``. The server runs
``algorithms.DOWNPOUR()`` with ``num_workers`` = number of clients.

Run (from the repository root; the default run measures every transport available and takes
several minutes on 2 cores; cross-host needs root)::

    .venv/bin/python bench/ps_throughput.py
    .venv/bin/python bench/ps_throughput.py --params 10000,1000000 --clients 1 --iters 30
    .venv/bin/python bench/ps_throughput.py --transport tcp,cross-host --clients 1
    .venv/bin/python bench/ps_throughput.py --out bench/out/ps_throughput.jsonl

``--transport`` takes a comma list of ``shm``, ``tcp``, ``cross-host``, or ``both`` (shm and
tcp) or ``all`` (the default: the three, cross-host only where it can run). One JSON line per
(params, transport, clients) goes to stdout (and is appended to ``--out``); progress goes to
stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _common import emit, log, machine_info, utc_now

TARGET_RATIO = 10.0  # round trip <= 10 x numpy copy ...
TARGET_MIN_PARAMS = 1_000_000  # ... for models of this size and above
TARGET_ECHO_RATIO = 1.5  # round trip <= 1.5 x the raw-socket echo (1 client, >= 1M params)
# --transport: the path of the clients; the transport their links ask for; where they run
TRANSPORTS = ("shm", "tcp", "cross-host")
ASKS_SHARED = {"shm": True, "tcp": False, "cross-host": True}  # as a real worker there would
EXPECTED = {"shm": "shm", "tcp": "tcp", "cross-host": "tcp"}  # what the link should get
PLACEMENT = {"shm": "same-host", "tcp": "same-host", "cross-host": "cross-host"}
SOCKET_PATHS = ("tcp", "cross-host")  # the payload crosses a socket: an echo floor is measured
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops us, in order
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
            if request["cmd"] == "echo":
                send(client_echo(request))
            else:
                send(client_run(request, ServerLink, send))
        except Exception as error:  # reported to the parent, which stops the bench
            send({"error": f"{type(error).__name__}: {error}"})


def client_echo(request: dict[str, Any]) -> dict[str, Any]:
    """Raw-socket echo: send ``nbytes``, receive them back; time each round trip."""
    from distkeras.protocol import recv_exact  # what the parameter server's peers use

    nbytes = int(request["nbytes"])
    out = np.full(nbytes // 4, 1e-7, dtype=np.float32)  # the same bytes a commit carries
    inbox = np.empty_like(out)
    out_view, in_view = memoryview(out).cast("B"), memoryview(inbox).cast("B")
    sock = socket.create_connection((request["host"], int(request["port"])), timeout=60)
    try:
        sock.settimeout(None)  # plain blocking socket
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(int(request["warmup"])):
            sock.sendall(out_view)
            recv_exact(sock, in_view)
        durations = []
        for _ in range(int(request["iters"])):
            t0 = time.perf_counter()
            sock.sendall(out_view)
            recv_exact(sock, in_view)
            durations.append(time.perf_counter() - t0)
    finally:
        sock.close()
    return {"durations": durations}


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
    """``size`` client processes, started once and reused for every configuration.

    ``wrap`` turns a command into the one that runs it where the clients live (on another
    host: ``HostNetwork.command``); the pids stay the clients' own."""

    def __init__(self, size: int, wrap: Callable[[list[str]], list[str]] | None = None) -> None:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        command = [sys.executable, os.path.abspath(__file__), "--client"]
        if wrap is not None:
            command = wrap(command)
        self.procs: list[subprocess.Popen] = []
        try:
            for _ in range(size):
                self.procs.append(subprocess.Popen(command, stdin=subprocess.PIPE,
                                                   stdout=subprocess.PIPE, text=True,
                                                   bufsize=1, env=env))
            for proc in self.procs:
                self.receive(proc)  # the hello: imports done
        except BaseException:
            self.close()
            raise

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
                proc.kill()  # by pid: only the processes this pool started
                proc.wait()


class EchoServer:
    """A plain TCP echo on ``host`` in a thread of the bench process: ``rounds`` times, read
    ``nbytes`` into a preallocated buffer and write them back."""

    def __init__(self, host: str, nbytes: int, rounds: int) -> None:
        self.nbytes, self.rounds = nbytes, rounds
        self.listener = socket.create_server((host, 0))
        self.listener.settimeout(60)
        self.address = self.listener.getsockname()[:2]
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, name="echo", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        from distkeras.protocol import recv_exact

        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(None)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                view = memoryview(bytearray(self.nbytes))
                for _ in range(self.rounds):
                    recv_exact(conn, view)
                    conn.sendall(view)
        except BaseException as error:  # noqa: BLE001 - reported by close()
            self.error = error

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.close()
        self.thread.join(timeout=30)
        if self.error is not None:
            raise RuntimeError(f"echo server: {self.error!r}")


def echo_seconds(pool: ClientPool, host: str, nbytes: int, iters: int,
                 warmup: int) -> dict[str, Any]:
    """Raw-socket echo of ``nbytes`` each way between ``host`` (a thread here) and the
    pool's first client: median, min and p99 seconds of a round trip."""
    server = EchoServer(host, nbytes, warmup + iters)
    try:
        proc = pool.procs[0]
        pool.send(proc, {"cmd": "echo", "host": server.address[0], "port": server.address[1],
                         "nbytes": nbytes, "iters": iters, "warmup": warmup})
        durations = np.asarray(pool.receive(proc)["durations"], dtype=np.float64)
    finally:
        server.close()
    return {"echo_ms": float(np.median(durations)) * 1e3,
            "echo_min_ms": float(durations.min()) * 1e3,
            "echo_p99_ms": float(np.percentile(durations, 99)) * 1e3,
            "echo_iters": int(durations.size),
            "echo_mb_per_s": 2 * nbytes / float(np.median(durations)) / 1e6}


def run_config(pool: ClientPool, num_params: int, clients: int, iters: int, warmup: int,
               arrays: int, shared_memory: bool = True,
               bind_host: str = "127.0.0.1") -> dict[str, Any]:
    """One server on ``bind_host``, ``clients`` concurrent clients; pooled round-trip
    statistics.

    ``shared_memory``: whether the clients ask for the shared-memory payload path; the
    ``transport`` returned is what their links actually used ("shm", "tcp", or "mixed"
    when they differ; ``transports`` lists each client's)."""
    from distkeras import algorithms, protocol
    from distkeras.parameter_server import ParameterServer

    layout = make_layout(num_params, arrays)
    token = protocol.new_token()
    center = np.zeros(layout.num_params, dtype=protocol.DTYPE)
    server = ParameterServer(center, layout, algorithms.DOWNPOUR(), num_workers=clients,
                             token=token, bind_host=bind_host)
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


def _transports(text: str) -> tuple[str, ...]:
    """``--transport``: a comma list of paths, or ``both`` (shm, tcp) or ``all``."""
    chosen: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        names = {"both": ("shm", "tcp"), "all": TRANSPORTS}.get(item, (item,))
        for name in names:
            if name not in TRANSPORTS:
                raise argparse.ArgumentTypeError(
                    f"unknown transport {name!r}: choose from {', '.join(TRANSPORTS)}, "
                    f"both, all")
            if name not in chosen:
                chosen.append(name)
    if not chosen:
        raise argparse.ArgumentTypeError("no transport given")
    return tuple(chosen)


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
    parser.add_argument("--transport", type=_transports, default=None, metavar="LIST",
                        help="comma list of the clients' paths: shm (shared memory, same "
                             "host), tcp (the socket over loopback, same host), cross-host "
                             "(TCP over a bridge from a network namespace: another host; "
                             "needs root); 'both' = shm,tcp; default 'all': the three, "
                             "cross-host only where it can run")
    parser.add_argument("--arrays", type=int, default=1,
                        help="number of arrays the layout splits the parameters into")
    parser.add_argument("--copy-reps", type=int, default=None,
                        help="repetitions of the numpy copy (default: by size, 9 to 1000)")
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _int_list(text: str) -> list[int]:
    return [int(float(item)) for item in text.split(",") if item.strip()]


def _hosts_module() -> Any:
    """tests/hosts.py, the multi-host harness of the tests (network namespaces)."""
    folder = os.path.join(REPO, "tests")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import hosts

    return hosts


def cross_host_unavailable() -> str | None:
    """Why the cross-host path cannot run here, or None."""
    try:
        return _hosts_module().unavailable()
    except Exception as error:  # noqa: BLE001 - whatever it is, the mode is skipped
        return f"tests/hosts.py unusable: {type(error).__name__}: {error}"


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # SIGTERM: unwind, so every finally cleans up


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client:
        client_main()
        return 0
    sizes, counts = _int_list(args.params), _int_list(args.clients)
    if not sizes or not counts or min(sizes) < 1 or min(counts) < 1:
        raise SystemExit("--params and --clients need positive integers")
    transports = args.transport or TRANSPORTS
    if "cross-host" in transports:
        reason = cross_host_unavailable()
        if reason:
            log(f"ps_throughput: skipping cross-host: {reason}")
            transports = tuple(t for t in transports if t != "cross-host")
            if not transports:
                log("ps_throughput: nothing left to measure")
                return 2
    signal.signal(signal.SIGTERM, _terminate)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    info = machine_info()
    started = time.time()
    pools: dict[str, ClientPool] = {}
    bind: dict[str, str] = {}
    with contextlib.ExitStack() as stack:  # unwound in reverse: clients, then the network
        if any(PLACEMENT[t] == "same-host" for t in transports):
            log(f"ps_throughput: starting {max(counts)} client process(es) on this host")
            pool = ClientPool(max(counts))
            stack.callback(pool.close)
            for name in transports:
                if PLACEMENT[name] == "same-host":
                    pools[name], bind[name] = pool, "127.0.0.1"
        if "cross-host" in transports:
            net = _hosts_module().HostNetwork(hosts=1)
            stack.enter_context(net)
            log(f"ps_throughput: starting {max(counts)} client process(es) in namespace "
                f"{net.hosts[0].namespace} ({net.hosts[0].address}); the server binds "
                f"{net.server_host} on bridge {net.bridge}")
            pool = ClientPool(max(counts), wrap=lambda command: net.command(0, command))
            stack.callback(pool.close)
            pools["cross-host"], bind["cross-host"] = pool, net.server_host
        log(f"ps_throughput: clients ready in {time.time() - started:.1f}s")
        for num_params in sizes:
            nbytes = num_params * 4
            copy_s, copy_reps = numpy_copy_seconds(num_params, args.copy_reps)
            iters = args.iters or auto_iters(nbytes, args.budget_mb * 1e6)
            warmup = args.warmup if args.warmup is not None else max(2, iters // 10)
            for requested in transports:
                pool, host = pools[requested], bind[requested]
                echo: dict[str, Any] = {}
                if requested in SOCKET_PATHS:
                    log(f"ps_throughput: {num_params:,} params, {requested}, raw-socket echo "
                        f"on {host}, {warmup} warm-up + {iters} timed round trips")
                    echo = echo_seconds(pool, host, nbytes, iters, warmup)
                for clients in counts:
                    log(f"ps_throughput: {num_params:,} params, {requested}, {clients} "
                        f"client(s), {warmup} warm-up + {iters} timed round trips each")
                    stats = run_config(pool, num_params, clients, iters, warmup, args.arrays,
                                       shared_memory=ASKS_SHARED[requested], bind_host=host)
                    if stats["transport"] != EXPECTED[requested]:
                        log(f"ps_throughput: {requested}: expected {EXPECTED[requested]}, the "
                            f"links used {stats['transports']}")
                    emit(record(args, info, requested, host, num_params, clients, iters,
                                warmup, stats, copy_s, copy_reps, echo), args.out)
    log(f"ps_throughput: done in {time.time() - started:.1f}s")
    return 0


def record(args: argparse.Namespace, info: dict[str, Any], requested: str, host: str,
           num_params: int, clients: int, iters: int, warmup: int, stats: dict[str, Any],
           copy_s: float, copy_reps: int, echo: dict[str, Any]) -> dict[str, Any]:
    """One JSON line."""
    nbytes = num_params * 4
    ratio = stats["rt_p50_s"] / copy_s
    ratio_to_echo = stats["rt_p50_s"] * 1e3 / echo["echo_ms"] if echo else None
    echo_target = (echo and num_params >= TARGET_MIN_PARAMS and clients == 1)
    return {
        "bench": "ps_throughput",
        "params": num_params,
        "clients": clients,
        "payload_bytes": nbytes,
        "arrays": args.arrays,
        "algorithm": "DOWNPOUR",
        "mode": requested,  # the --transport path: shm, tcp or cross-host
        "placement": PLACEMENT[requested],  # where the clients ran
        "server_host": host,  # the address the server (and the echo) bound
        "transport_requested": "shm" if ASKS_SHARED[requested] else "tcp",
        "transport": stats["transport"],  # what the links used: shm or tcp
        "client_kind": "process",
        "warmup": warmup,
        "iters_per_client": iters,
        **stats,
        "rt_p50_ms": stats["rt_p50_s"] * 1e3,
        "numpy_copy_s": copy_s,
        "numpy_copy_reps": copy_reps,
        "numpy_copy_gb_per_s": nbytes / copy_s / 1e9,
        "ratio": ratio,
        "ratio_mean": stats["rt_mean_s"] / copy_s,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO if num_params >= TARGET_MIN_PARAMS else None,
        "echo_ms": echo.get("echo_ms"),
        "echo_min_ms": echo.get("echo_min_ms"),
        "echo_p99_ms": echo.get("echo_p99_ms"),
        "echo_iters": echo.get("echo_iters"),
        "echo_mb_per_s": echo.get("echo_mb_per_s"),
        "ratio_to_echo": ratio_to_echo,
        "target_ratio_to_echo": TARGET_ECHO_RATIO,
        "meets_echo_target": ratio_to_echo <= TARGET_ECHO_RATIO if echo_target else None,
        **info,
        "utc": utc_now(),
    }


if __name__ == "__main__":
    sys.exit(main())
