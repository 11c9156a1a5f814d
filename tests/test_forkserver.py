"""The fork server (distkeras.forkserver): Spark's daemon process hands its streams to a
process that imported the backend before the JVM started. Here a test plays Spark's part as
PythonWorkerFactory does (``python -m distkeras.daemon`` with piped standard streams, the
port read from its stdout, stdin closed or SIGTERM to stop it), without a JVM; the whole
chain under a real session is checked in test_local_session."""

from __future__ import annotations

import os
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import time

import pytest
from helpers import running, wait_for

from distkeras import forkserver

pytestmark = pytest.mark.timeout(120)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spark_env(path: str | None, **extra: str) -> dict[str, str]:
    """The environment Spark gives its daemon, as far as these tests need it."""
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONHASHSEED": "0", **extra}
    env.pop(forkserver.SOCKET_ENV, None)
    if path is not None:
        env[forkserver.SOCKET_ENV] = path
    return env


def launch_daemon(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distkeras.daemon", "pyspark.worker"],
                            env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def read_port(daemon: subprocess.Popen, timeout: float = 60.0) -> int:
    """What PySpark's daemon loop writes first: its port, a big-endian int."""
    assert select.select([daemon.stdout], [], [], timeout)[0], "the daemon said no port"
    data = os.read(daemon.stdout.fileno(), 4)
    assert len(data) == 4, data
    return struct.unpack("!i", data)[0]


def processes_running(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (the fork server's children keep its)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if text.encode() in cmdline.read():
                        found.append(int(entry))
            except OSError:
                pass
    return [pid for pid in found if running(pid)]


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    path = forkserver.start("json", sys.executable, idle_s=60)
    yield path
    for pid in processes_running(path):
        os.kill(pid, signal.SIGTERM)  # a fork server that still waits removes its folder
    if not wait_for(lambda: not processes_running(path), timeout=10):
        for pid in processes_running(path):
            os.kill(pid, signal.SIGKILL)
    assert not os.path.exists(os.path.dirname(path))


@pytest.mark.parametrize("stop", ["close stdin", "SIGTERM"])
def test_the_daemon_runs_in_a_child_of_the_fork_server_and_stops_as_spark_says(server, stop):
    assert stat.S_IMODE(os.stat(os.path.dirname(server)).st_mode) == 0o700
    daemon = launch_daemon(spark_env(server))
    try:
        port = read_port(daemon)
        # the fork server has served and gone; its child listens, the process Spark
        # started stands in for it
        assert wait_for(lambda: not os.path.exists(server))
        assert wait_for(lambda: len(processes_running(server)) == 1)
        served = processes_running(server)
        assert served[0] != daemon.pid
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass  # PySpark's loop accepts: it forks a worker, which finds no secret and ends
        assert wait_for(lambda: processes_running(server) == served)
        time.sleep(0.5)  # PySpark's loop ignores a SIGTERM that comes while it forks
        assert daemon.poll() is None
        if stop == "close stdin":
            daemon.stdin.close()
        else:
            daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) is not None
        assert wait_for(lambda: not processes_running(server)), "the daemon outlived Spark"
    finally:
        daemon.kill()
        daemon.wait(30)


def test_the_real_daemon_ending_ends_its_stand_in(server):
    daemon = launch_daemon(spark_env(server))
    try:
        read_port(daemon)
        assert wait_for(lambda: len(processes_running(server)) == 1)  # the server has gone
        (served,) = processes_running(server)
        os.kill(served, signal.SIGKILL)
        assert daemon.wait(30) is not None
    finally:
        daemon.kill()
        daemon.wait(30)


def test_a_daemon_with_another_hash_seed_imports_for_itself(server):
    env = spark_env(server, PYTHONHASHSEED="7")
    daemon = launch_daemon(env)
    try:
        read_port(daemon)
        # the daemon runs PySpark's loop itself; the fork server waits for a matching one
        assert os.path.exists(server)
        assert processes_running(server) and daemon.pid not in processes_running(server)
        daemon.stdin.close()
        assert daemon.wait(30) is not None
    finally:
        daemon.kill()
        daemon.wait(30)


def test_no_fork_server_means_the_daemon_imports_for_itself(tmp_path):
    missing = str(tmp_path / "socket")
    started = time.monotonic()
    assert forkserver.hand_over(missing, wait_s=30) is None
    assert time.monotonic() - started < 5
    daemon = launch_daemon(spark_env(missing))
    try:
        read_port(daemon)
        daemon.stdin.close()
        assert daemon.wait(30) is not None
    finally:
        daemon.kill()
        daemon.wait(30)


def test_an_unused_fork_server_gives_up_and_cleans_up(monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    path = forkserver.start("json", sys.executable, idle_s=1)
    assert wait_for(lambda: not os.path.exists(os.path.dirname(path)), timeout=30)
    assert not processes_running(path)


def test_a_fork_server_goes_when_its_driver_does(tmp_path):
    driver = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from distkeras import forkserver; "
         "print(forkserver.start('json', sys.executable, idle_s=600), flush=True); "
         "time.sleep(600)"],
        cwd=ROOT, env=spark_env(None), stdout=subprocess.PIPE, text=True)
    try:
        path = driver.stdout.readline().strip()
        assert wait_for(lambda: processes_running(path) != [], timeout=30)
        driver.kill()
        driver.wait(30)
        assert wait_for(lambda: not processes_running(path), timeout=30)
        assert not os.path.exists(os.path.dirname(path))
    finally:
        driver.kill()
        driver.wait(30)
