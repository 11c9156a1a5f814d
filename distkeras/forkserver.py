"""A process that imports the workers' backend while the JVM starts, then becomes their daemon.

Why: a local session's Python workers fork from a daemon that imported the Keras backend's
library (:mod:`distkeras.daemon`), but Spark starts that daemon only once its JVM is up and
the first Python task runs: the import (about 5 s for TensorFlow on two cores) then begins
after the JVM's start (about 4 s) and a session's first ``train()`` waits for it. A fork
server, started by :func:`distkeras.local_session` before the JVM, imports the library
meanwhile. When Spark starts its daemon (``python -m distkeras.daemon``), that process hands
the fork server its standard streams, environment, arguments and working directory over a
Unix socket (:func:`hand_over`); the fork server forks a child that takes them on and runs
PySpark's daemon loop, and exits. The process Spark started stays as the daemon's stand-in:
it forwards Spark's SIGTERM (and SIGINT) to the real daemon and exits when it does. Spark's
other signal to its daemon, closing its standard input, reaches the real daemon directly.

Only what an interpreter fixes at its start must agree: the executable, its prefix and
version, and ``PYTHONHASHSEED`` (Spark gives its workers one); the fork server says them
before anything is handed over, and a daemon that finds any different imports the library
itself, as does one that finds no fork server. A fork server serves once, and leaves after
:data:`DEFAULT_IDLE_S` unused, on SIGTERM, or once the driver has exited. The socket lives
in a directory only this user can enter, and the fork server serves only a peer of its own
user; what crosses it is JSON and file descriptors.
"""

from __future__ import annotations

import array
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from .daemon import PRELOAD_ENV, UNCLAIMED_ENV, preload
from .spill import process_alive

#: the environment variable (``spark.executorEnv``) naming the fork server's socket
SOCKET_ENV = "DISTKERAS_FORK_SERVER"
#: seconds a fork server waits for Spark's daemon before it exits unused
DEFAULT_IDLE_S = 300.0
#: how long a daemon waits for a fork server that is still importing
DEFAULT_WAIT_S = 120.0
_HEADER = struct.Struct("!I")
_STREAMS = (0, 1, 2)
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


# ---- the driver's side --------------------------------------------------------------------
def start(modules: str, python: str = sys.executable, idle_s: float = DEFAULT_IDLE_S) -> str:
    """Start a fork server that imports ``modules`` (comma-separated) in ``python``; return
    its socket's path, for :data:`SOCKET_ENV` in the daemon's environment."""
    folder = tempfile.mkdtemp(prefix="distkeras-fork-")  # 0700: this user only
    path = os.path.join(folder, "socket")
    env = {**os.environ, PRELOAD_ENV: modules, "PYTHONUNBUFFERED": "YES",
           # what SparkContext gives its Python workers, fixed when an interpreter starts
           "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0")}
    # listening before this returns: a daemon that comes while the server imports waits
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(8)
        process = subprocess.Popen(
            [python, "-m", "distkeras.forkserver", path, str(listener.fileno()), str(idle_s),
             str(os.getpid())], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            pass_fds=(listener.fileno(),), start_new_session=True)
    threading.Thread(target=process.wait, name="distkeras-fork-server", daemon=True).start()
    return path


# ---- the fork server ----------------------------------------------------------------------
def serve(path: str, listening: int, idle_s: float, driver: int) -> None:
    """Import the preload, then fork one daemon for the first peer that asks on the socket
    ``listening`` (bound to ``path``); give up after ``idle_s`` or once this process's
    parent is no longer ``driver`` (the driver exited, even before this one started)."""
    listener = socket.socket(fileno=listening)
    signal.signal(signal.SIGTERM, _exit_cleanly)  # the folder goes with a stopped server too
    try:
        preload(os.environ.get(PRELOAD_ENV, ""))
        hello = json.dumps(_interpreter()).encode()
        deadline = time.monotonic() + idle_s
        while time.monotonic() < deadline and os.getppid() == driver:
            if not select.select([listener], [], [], 1.0)[0]:
                continue
            conn, _ = listener.accept()
            with conn:
                if _peer_uid(conn) != os.getuid():
                    continue
                try:
                    conn.settimeout(30.0)
                    _send(conn, hello)
                    request, streams = _receive(conn)
                except (OSError, ValueError):
                    continue  # the daemon went its own way (see hand_over)
                if os.fork() == 0:
                    listener.close()
                    _become_daemon(conn, request, streams)  # never returns
                for fd in streams:
                    os.close(fd)
                return
    finally:
        listener.close()
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def _exit_cleanly(_signum, _frame) -> None:
    sys.exit(0)


def _become_daemon(conn: socket.socket, request: dict, streams: list[int]) -> None:
    """In the fork server's child: take on the daemon's streams and environment, say the
    pid, and run PySpark's daemon loop."""
    code = 1
    try:
        for target, fd in zip(_STREAMS, streams):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ.pop(SOCKET_ENV, None)
        os.environ[UNCLAIMED_ENV] = "1"
        paths = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:0] = [p for p in paths if p not in sys.path]
        sys.argv = list(request["argv"])
        _send(conn, json.dumps({"pid": os.getpid()}).encode())
        conn.close()
        from pyspark.daemon import manager

        manager()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # noqa: BLE001 - nothing above this frame may run in the child
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


# ---- the daemon's side ----------------------------------------------------------------------
def hand_over(path: str, wait_s: float = DEFAULT_WAIT_S) -> int | None:
    """Hand this process's streams, environment and arguments to the fork server at
    ``path``; return the pid of the daemon it forked, or None when there is none to take
    them (this process then runs the daemon itself). Spark's stop signals stay blocked
    from the hand-over until :func:`stand_in` passes them on.

    Raises:
        OSError, ValueError: The fork server took the streams but did not say its daemon's
            pid.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    served = None
    try:
        served = _hand_over(path, wait_s)
    finally:
        if served is None:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    return served


def _hand_over(path: str, wait_s: float) -> int | None:
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(wait_s)  # the fork server says hello once it has imported
        conn.connect(path)
        hello = json.loads(_recv(conn))
    except (OSError, ValueError):
        return None
    with conn:
        if hello != _interpreter():
            return None
        request = json.dumps({"env": dict(os.environ), "argv": sys.argv,
                              "cwd": os.getcwd()}).encode()
        conn.settimeout(30.0)
        conn.sendmsg([_HEADER.pack(len(request)) + request],
                      [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", _STREAMS))])
        return int(json.loads(_recv(conn))["pid"])


def stand_in(pid: int) -> None:
    """Stand in for the daemon ``pid`` as the process Spark started: pass Spark's stop
    signals on, and return once the daemon has exited."""
    try:
        handle = os.pidfd_open(pid)
    except (AttributeError, OSError):
        handle = None

    def forward(signum, _frame):
        try:
            if handle is not None:
                signal.pidfd_send_signal(handle, signum)
            else:
                os.kill(pid, signum)
        except OSError:
            pass
        os._exit(0)

    for signum in _STOP_SIGNALS:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # one that came runs now
    while True:
        if handle is not None:
            if select.select([handle], [], [], 5.0)[0]:
                return
        elif not process_alive(pid):
            return
        else:
            time.sleep(1.0)


# ---- plumbing -------------------------------------------------------------------------------
def _interpreter() -> dict:
    """What a process fixes when its interpreter starts and the daemon's must share."""
    return {"executable": sys.executable, "prefix": sys.prefix, "version": sys.version,
            "hashseed": os.environ.get("PYTHONHASHSEED")}


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _send(conn: socket.socket, payload: bytes) -> None:
    conn.sendall(_HEADER.pack(len(payload)) + payload)


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ValueError("the peer closed the connection")
        data += chunk
    return data


def _recv(conn: socket.socket) -> bytes:
    (size,) = _HEADER.unpack(_recv_exactly(conn, _HEADER.size))
    return _recv_exactly(conn, size)


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """The daemon's request and the three stream descriptors sent with its first bytes."""
    fds = array.array("i")
    data, ancillary, _flags, _addr = conn.recvmsg(
        _HEADER.size, socket.CMSG_SPACE(len(_STREAMS) * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    streams = list(fds)
    try:
        if len(streams) != len(_STREAMS):
            raise ValueError(f"expected {len(_STREAMS)} descriptors, got {len(streams)}")
        data += _recv_exactly(conn, _HEADER.size - len(data))
        (size,) = _HEADER.unpack(data)
        return json.loads(_recv_exactly(conn, size)), streams
    except BaseException:
        for fd in streams:
            os.close(fd)
        raise


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
    sys.stderr.flush()
    os._exit(0)  # not the interpreter's slow shutdown of what the preload imported
