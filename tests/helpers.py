"""Helpers shared by several test modules: import them from here, never from another test
module (``from helpers import mlp, accuracy``). Fixtures every module gets for free live in
conftest.py; what is here is imported by name."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hosts import wait_for_log  # noqa: F401 - one log-waiting helper for every cluster test

from distkeras.workers import ServerLink

# the MNIST training bar (tests/test_training.py): held-out accuracy within TOLERANCE of
# model.fit with the same optimizer, BATCH size and EPOCHS. 4 points: in a full run of the
# suite (both backends) the asynchronous trainers reached 0.888-0.914 against model.fit's
# 0.907-0.909, so a 3-point bar passed AEASGD by 0.9 of a point, about one binomial standard
# deviation of a 1,000-digit held-out set; a trainer that does not train stays far below.
EPOCHS = 5
BATCH = 32
TOLERANCE = 0.04


def mlp(seed=1, hidden=64):
    """The MNIST digits classifier of the training tests: 784 -> hidden (relu) -> 10 (softmax),
    its initial weights fixed by ``seed``."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((784,)), keras.layers.Dense(hidden, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def accuracy(model, x, y):
    """Fraction of the rows of ``x`` whose predicted class is the integer label in ``y``."""
    return float((model.predict(x, verbose=0, batch_size=500).argmax(axis=1) == y).mean())


def one_hot(labels, classes=10):
    """Integer class labels as one-hot rows, as Keras' categorical losses want them."""
    import keras

    return keras.utils.to_categorical(labels, classes)


@pytest.fixture(scope="module")
def reference_accuracy(digits):
    """Held-out accuracy of plain ``model.fit`` with the training tests' settings."""
    import keras

    x, y, xt, yt = digits
    model = mlp()
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, keras.utils.to_categorical(y, 10), batch_size=BATCH, epochs=EPOCHS, verbose=0)
    return accuracy(model, xt, yt)


def shift_layer(package):
    """A custom Keras layer class (adds ``by`` to its input) registered under ``package``;
    defined in a function, so it travels to the workers by value, as a notebook's would."""
    import keras

    @keras.saving.register_keras_serializable(package=package)
    class Shift(keras.layers.Layer):
        def __init__(self, by=0.0, **kwargs):
            super().__init__(**kwargs)
            self.by = by

        def call(self, inputs):
            return inputs + self.by

        def get_config(self):
            return {**super().get_config(), "by": self.by}

    return Shift


def server_threads() -> list[str]:
    """Names of the parameter-server threads still running (none once training is over)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("distkeras-ps")]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---- a well-behaved worker next to hostile peers (the protocol and fuzz tests) -------------
class GoodWorker(threading.Thread):
    """Commits +1 to every weight, over and over, until told to stop."""

    def __init__(self, server, layout, token, attempt: int = 0):
        super().__init__(daemon=True)
        self.link = ServerLink(server.address, token, layout, worker=0, attempt=attempt)
        self.commits = 0
        self.error = None
        self.stop = threading.Event()

    def run(self):
        try:
            ones = np.ones(self.link.layout.num_params, dtype=np.float32)
            self.link.pull()
            while not self.stop.is_set() or self.commits < 20:
                self.link.samples = 1
                self.link.commit_and_pull(ones)
                self.commits += 1
                time.sleep(0.002)
            self.link.bye()
        except Exception as error:  # noqa: BLE001 - reported by the test
            self.error = error


def closed_by_server(sock, timeout=10.0):
    """True once the server has closed ``sock`` (reads EOF or reset within ``timeout``)."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def wait_for(condition, timeout=30.0, interval=0.01):
    """Poll ``condition()`` until it is true or ``timeout`` seconds have passed; returns its
    last value (synchronise on the state expected, not on a sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# ---- a Spark standalone cluster in separate processes (pip pyspark's spark-class) ----------
def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def group_alive(pgid: int) -> list[int]:
    """Pids of live (not zombie) processes in process group ``pgid``."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry.name))
    return alive


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group we started (the JVM and whatever it launched), then KILL."""
    pgid = process.pid  # start_new_session: the group id is the leader's pid
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        if not group_alive(pgid):
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.3)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def cluster_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a cluster's daemons and of a driver subprocess: this interpreter for
    the Python workers, loopback addresses, nothing of this test session's own gateway."""
    env = dict(os.environ)
    for key in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "SPARK_HOME"):
        env.pop(key, None)
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               SPARK_LOCAL_IP="127.0.0.1", SPARK_WORKER_DIR=str(tmp_path / "work"),
               SPARK_LOCAL_DIRS=str(tmp_path / "local"), TF_CPP_MIN_LOG_LEVEL="2")
    return env


@contextlib.contextmanager
def standalone_cluster(tmp_path: Path, cores: int = 2, memory: str = "2g",
                       worker_opts: str = ""):
    """A Spark standalone master and one worker (``SPARK_WORKER_OPTS=worker_opts``, e.g. the
    worker's resources), each in its own process group; yields the master's URL. Every
    process is stopped when the block ends, and the block fails if one is left running."""
    import pyspark

    spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
    env = cluster_env(tmp_path)
    processes: list[subprocess.Popen] = []

    def launch(name: str, *args: str, **extra: str) -> subprocess.Popen:
        with open(tmp_path / f"{name}.log", "wb") as out:
            process = subprocess.Popen([str(spark_class), *args], env={**env, **extra},
                                       stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd=tmp_path,
                                       start_new_session=True)
        processes.append(process)
        return process

    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    try:
        master = launch("master", "org.apache.spark.deploy.master.Master", "--host",
                        "127.0.0.1", "--port", str(port), "--webui-port", str(free_port()))
        wait_for_log(tmp_path / "master.log", "I have been elected leader", master, 120)
        (tmp_path / "work0").mkdir(exist_ok=True)
        worker = launch("worker", "org.apache.spark.deploy.worker.Worker", url, "--host",
                        "127.0.0.1", "--cores", str(cores), "--memory", memory,
                        "--webui-port", str(free_port()), "--work-dir", str(tmp_path / "work0"),
                        SPARK_WORKER_OPTS=worker_opts)
        wait_for_log(tmp_path / "worker.log", "Successfully registered with master", worker,
                     120)
        yield url
    finally:
        for process in reversed(processes):
            stop_group(process)
    leftovers = {p.pid: group_alive(p.pid) for p in processes}
    assert not any(leftovers.values()), f"processes left running: {leftovers}"


def spill_leftovers(spark) -> list[str]:
    """Spill directories of distkeras workers in the executor's local directories (asked of
    a task: Spark gives its Python workers ``SPARK_LOCAL_DIRS``); none once training ended."""
    import glob

    from distkeras.spill import PREFIX

    dirs = spark.sparkContext.parallelize([0], 1).map(
        lambda _: os.environ.get("SPARK_LOCAL_DIRS", "")).collect()[0]
    return [path for root in dirs.split(",") if root
            for path in glob.glob(os.path.join(root, PREFIX + "*"))]


def rounds_of(commits):
    """The rounds of a synchronous run, read from its history: a worker's k-th commit belongs
    to round k (its commit_and_pull returns only once round k is applied, and a worker that
    leaves never comes back). Asserts what the server promises about them: it records a
    round's commits together when it applies the round, so the records come round by round,
    and no commit of round k + 1 arrived (its record's time) before every commit of round k
    had. Returns the records of each round."""
    seen = Counter()
    rounds = []
    for record in commits:
        k = seen[record.worker]
        seen[record.worker] += 1
        assert k >= len(rounds) - 1, f"worker {record.worker}'s commit {k} was recorded in round " \
                                     f"{len(rounds) - 1}"
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(record)
    for k, (earlier, later) in enumerate(zip(rounds, rounds[1:])):
        assert max(r.time for r in earlier) <= min(r.time for r in later), \
            f"a commit of round {k + 1} arrived before round {k} was complete"
    return rounds


def commits_after_stop(history) -> Counter:
    """Per worker, the commits the server applied after the driver stopped the run early
    (``history.stopped_early``): at most one each, a commit already on its way."""
    stopped = history.stopped_early
    assert stopped is not None, "the run was not stopped early"
    return Counter(r.worker for r in history.records[stopped["records"]:] if r.committed)
