"""Several "hosts" on one machine, for the multi-host tests and benchmarks.

Each host is a Linux network namespace with its own address on a bridge in the RFC 2544
benchmarking range (198.18.0.0/15) and its own private /dev/shm (a fresh tmpfs in a mount
namespace), running a Spark standalone worker from the pip pyspark's ``spark-class``. The
master (and the driver the caller starts) stay in the root namespace, on the bridge's
address. So a worker on a host reaches the driver only by TCP over the bridge, and cannot see
the driver's shared memory: the cross-host path of a real cluster, on one machine.

Every name this module creates carries the creating process's pid (``dkh<pid>...``); what
it created is removed when the cluster is closed, and :func:`sweep` removes what a killed
session left behind (names whose pid is dead). Only addresses of namespaces created here
are ever contacted. Needs root and iproute2: :func:`unavailable` says why it is not usable.

    with HostCluster(tmp_path, hosts=2) as cluster:
        cluster.url, cluster.driver_host   # spark://198.18.x.1:port, 198.18.x.1
        cluster.hosts[1].kill()            # SIGKILL every process of host 1

:class:`HostNetwork` makes the same bridge and namespaces without Spark, for processes of the
caller's own (``bench/ps_throughput.py`` runs its cross-host clients there).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from distkeras.spill import process_alive

PREFIX = "dkh"
NETWORK = ipaddress.ip_network("198.18.0.0/15")
_NAME = re.compile(rf"^{PREFIX}(\d+)[bnvx]\d*$")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"'ip {' '.join(args)}' failed: {done.stderr.strip()}")
    return done


def unavailable() -> str | None:
    """Why test hosts cannot be made here (for ``pytest.skip``), or None when they can."""
    if sys.platform != "linux":
        return "test hosts need Linux network namespaces"
    if os.geteuid() != 0:
        return "test hosts need root (network namespaces, a bridge, tmpfs mounts)"
    if not shutil.which("ip") or not shutil.which("unshare"):
        return "test hosts need iproute2 ('ip') and util-linux ('unshare')"
    probe = f"{PREFIX}{os.getpid()}n99"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"'ip netns add' is not permitted here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def namespace_pids(namespace: str) -> list[int]:
    """Pids of the processes whose network namespace is ``namespace``."""
    done = _ip("netns", "pids", namespace, check=False)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def kill_namespace(namespace: str, timeout: float = 30.0) -> None:
    """SIGKILL every process of ``namespace`` (a host dies); returns once they are gone."""
    deadline = time.monotonic() + timeout
    while pids := namespace_pids(namespace):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} of {namespace} survive SIGKILL")
        time.sleep(0.1)


def _ours() -> tuple[list[str], list[str]]:
    """(namespaces, links) whose names this module gives."""
    spaces = [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line]
    links = [line.split(":")[1].strip().split("@")[0]
             for line in _ip("-o", "link", "show").stdout.splitlines()]
    return [n for n in spaces if _NAME.match(n)], [n for n in links if _NAME.match(n)]


def sweep(owner: int | None = None) -> list[str]:
    """Remove namespaces (and their processes) and links of dead creators, or of ``owner``;
    returns the names removed. A session killed before it could clean up leaves them."""
    removed = []
    spaces, links = _ours()
    for name in spaces + links:
        pid = int(_NAME.match(name).group(1))
        if pid != owner and (owner is not None or process_alive(pid)):
            continue
        if name in spaces:
            kill_namespace(name)
            _ip("netns", "del", name, check=False)
        else:
            _ip("link", "del", name, check=False)
        removed.append(name)
    return removed


def _free_subnet(taken: tuple = ()) -> ipaddress.IPv4Network:
    """A /24 of 198.18.0.0/15 on no interface of this machine (other sessions' bridges)
    and not in ``taken``."""
    used = set(taken)
    for line in _ip("-o", "-4", "addr", "show").stdout.splitlines():
        address = ipaddress.ip_interface(line.split()[3])
        used.add(address.network.supernet(new_prefix=24) if address.network.prefixlen >= 24
                 else address.network)
    subnets = list(NETWORK.subnets(new_prefix=24))
    start = os.getpid() % len(subnets)
    for subnet in subnets[start:] + subnets[:start]:
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise RuntimeError("no free /24 left in 198.18.0.0/15")


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _spark_class() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / "spark-class")


def wait_for_log(path: Path, text: str, process: subprocess.Popen, timeout: float) -> None:
    """Wait until ``text`` appears in the log file ``path``; fail with the log's tail when
    ``process`` exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.3)
    log = path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"
    raise AssertionError(f"'{text}' not in {path.name} after {timeout}s:\n{log}")


def spark_env(directory: Path, local_ip: str) -> dict[str, str]:
    """Environment of a daemon or driver: this interpreter for Python workers, ``local_ip``
    as Spark's address, nothing of a calling Spark session's gateway."""
    env = dict(os.environ)
    for key in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "SPARK_HOME"):
        env.pop(key, None)
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               SPARK_LOCAL_IP=local_ip, SPARK_WORKER_DIR=str(directory / "work"),
               SPARK_LOCAL_DIRS=str(directory / "local"), TF_CPP_MIN_LOG_LEVEL="2")
    return env


def _stop(process: subprocess.Popen) -> None:
    """TERM, then KILL, the process group we started (the master JVM)."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue


class Host:
    """One test host: a network namespace, its link to the bridge, a Spark worker."""

    def __init__(self, cluster: HostNetwork, index: int, address: str):
        self.cluster, self.index, self.address = cluster, index, address
        self.namespace = f"{PREFIX}{cluster.owner}n{index}"
        self.link = f"{PREFIX}{cluster.owner}v{index}"  # the root end of its veth pair
        self.directory = cluster.directory / f"host{index}"
        self.log = self.directory / "worker0.log"
        self.starts = 0
        self.process: subprocess.Popen | None = None

    def create(self) -> None:
        """The namespace, with ``eth0`` on the bridge and only the bridge's subnet routed."""
        _ip("netns", "add", self.namespace)
        _ip("link", "add", self.link, "type", "veth", "peer", "name", f"{self.link}p")
        _ip("link", "set", f"{self.link}p", "netns", self.namespace)
        _ip("link", "set", self.link, "master", self.cluster.bridge, "up")
        inside = ("netns", "exec", self.namespace, "ip")
        _ip(*inside, "link", "set", f"{self.link}p", "name", "eth0")
        _ip(*inside, "addr", "add", f"{self.address}/{self.cluster.subnet.prefixlen}",
            "dev", "eth0")
        _ip(*inside, "link", "set", "eth0", "up")
        _ip(*inside, "link", "set", "lo", "up")

    def start(self, cores: int, memory: str) -> None:
        """Start the Spark worker in the namespace, with its own /dev/shm; wait until the
        master has it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log = self.directory / f"worker{self.starts}.log"
        self.starts += 1
        env = spark_env(self.directory, self.address)
        command = self.command([_spark_class(), "org.apache.spark.deploy.worker.Worker",
                                self.cluster.url, "--host", self.address, "--cores", str(cores),
                                "--memory", memory, "--webui-port", "0", "--work-dir",
                                str(self.directory / "work")], shm_size="1g")
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=self.directory, start_new_session=True)
        wait_for_log(self.log, "Successfully registered with master", self.process, 120)

    def command(self, argv: list[str], shm_size: str = "64m") -> list[str]:
        """``argv`` run on this host (``ip netns exec``; the process keeps its pid) with its
        own empty /dev/shm of ``shm_size``, as on another machine."""
        shell = f"mount -t tmpfs -o size={shm_size},mode=1777 dkshm /dev/shm && exec \"$@\""
        return ["ip", "netns", "exec", self.namespace, "unshare", "--mount", "--propagation",
                "private", "sh", "-c", shell, "sh", *argv]

    def alive(self) -> bool:
        """Whether its Spark worker still runs."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL every process of this host (the worker, its executors, their Python
        workers), as when the machine dies."""
        kill_namespace(self.namespace)
        if self.process is not None:
            self.process.wait(timeout=10)

    def link_down(self) -> None:
        """Cut this host off the network (its processes keep running)."""
        _ip("link", "set", self.link, "down")

    def link_up(self) -> None:
        _ip("link", "set", self.link, "up")

    def remove(self) -> None:
        self.kill()
        _ip("netns", "del", self.namespace, check=False)
        _ip("link", "del", self.link, check=False)


class HostNetwork:
    """The network of a :class:`HostCluster` without Spark: a bridge in the root namespace
    (its address is ``server_host``) and ``hosts`` namespaces on it (:class:`Host`, never
    started), for a bench or a test that runs its own processes on the hosts
    (:meth:`command`). Everything is removed on exit, passed, failed or interrupted.

        with HostNetwork(hosts=1) as net:
            server.bind((net.server_host, 0))
            subprocess.Popen(net.command(0, [sys.executable, "client.py"]))
    """

    def __init__(self, hosts: int = 1, directory: Path | None = None):
        self.owner = os.getpid()
        self.bridge = f"{PREFIX}{self.owner}b"
        self.directory = Path(directory) if directory is not None else Path.cwd()
        self.subnet: ipaddress.IPv4Network | None = None
        self.server_host = ""
        self.count = hosts
        self.hosts: list[Host] = []

    def __enter__(self) -> HostNetwork:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        sweep()  # what killed sessions left behind
        self.subnet = _free_subnet()
        addresses = list(self.subnet.hosts())
        self.server_host = str(addresses[0])
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.server_host}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index in range(self.count):
            host = Host(self, index, str(addresses[10 + index]))
            self.hosts.append(host)  # first: close() removes a half-made one too
            host.create()

    def command(self, index: int, argv: list[str]) -> list[str]:
        """``argv`` run on host ``index``, with its own empty /dev/shm (:meth:`Host.command`)."""
        return self.hosts[index].command(argv)

    def close(self) -> None:
        """Kill every process on the hosts, remove their namespaces and links, the bridge."""
        errors = []
        for host in self.hosts:
            try:
                host.remove()
            except Exception as error:  # noqa: BLE001 - remove the rest, then report
                errors.append(error)
        self.hosts = []
        _ip("link", "del", self.bridge, check=False)
        if errors:
            raise errors[0]


class HostCluster(HostNetwork):
    """A Spark standalone master on a bridge in the root namespace and ``hosts`` test hosts,
    each a worker with ``cores`` cores; everything is removed on exit, passed or failed.
    The root namespace also gets a second interface (``other_address``) that no host can
    reach, as a driver machine with several networks has."""

    def __init__(self, directory: Path, hosts: int = 2, cores: int = 1, memory: str = "1g"):
        super().__init__(hosts, directory)
        # a second interface of the driver, on a network no host has a route to
        self.other = f"{PREFIX}{self.owner}x"
        self.other_address = ""
        self.url = ""
        self.cores, self.memory = cores, memory
        self.master: subprocess.Popen | None = None

    @property
    def driver_host(self) -> str:
        """The driver's (and the master's) address: the bridge's."""
        return self.server_host

    def start(self) -> None:
        super().start()
        other = _free_subnet((self.subnet,))
        self.other_address = str(next(other.hosts()))
        _ip("link", "add", self.other, "type", "bridge")  # no ports: a stub network
        _ip("addr", "add", f"{self.other_address}/24", "dev", self.other)
        _ip("link", "set", self.other, "up")
        self.directory.mkdir(parents=True, exist_ok=True)
        port = free_port(self.driver_host)
        self.url = f"spark://{self.driver_host}:{port}"
        log = self.directory / "master.log"
        with open(log, "wb") as out:
            self.master = subprocess.Popen(
                [_spark_class(), "org.apache.spark.deploy.master.Master", "--host",
                 self.driver_host, "--port", str(port), "--webui-port", "0"],
                env=spark_env(self.directory, self.driver_host), stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.directory,
                start_new_session=True)
        wait_for_log(log, "I have been elected leader", self.master, 120)
        for host in self.hosts:
            host.start(self.cores, self.memory)

    def revive(self) -> None:
        """Start again the worker of every host that was killed."""
        for host in self.hosts:
            if not host.alive():
                host.kill()  # whatever is left of it
                host.start(self.cores, self.memory)

    def host_of(self, address: str) -> Host:
        """The host with this address (as the parameter server saw a worker)."""
        return next(h for h in self.hosts if h.address == address)

    def driver_env(self) -> dict[str, str]:
        """Environment for a driver process in the root namespace, on the bridge."""
        return spark_env(self.directory / "driver", self.driver_host)

    def close(self) -> None:
        """Remove every host (processes, namespace, link) and the bridge, the master and the
        second interface."""
        try:
            super().close()
        finally:
            if self.master is not None:
                _stop(self.master)
                self.master = None
            _ip("link", "del", self.other, check=False)


class Driver:
    """A driver process that answers requests line by line: write a line to its stdin,
    read its ``RESULT {json}`` line (``ask``); its stderr goes to a file."""

    def __init__(self, command: list[str], env: dict[str, str], directory: Path,
                 ready: str = "READY", timeout: float = 240.0):
        import queue
        import threading

        directory.mkdir(parents=True, exist_ok=True)
        self.stderr = directory / "driver.stderr"
        self.lines: queue.Queue = queue.Queue()
        with open(self.stderr, "wb") as err:
            self.process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=err, text=True,
                                            cwd=directory, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        self._expect(ready, timeout)

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _expect(self, prefix: str, timeout: float) -> str:
        import queue

        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise TimeoutError(f"no '{prefix}' from the driver in {timeout}s:\n"
                                   f"{self.tail()}") from None
            if line is None:
                raise RuntimeError(f"the driver exited ({self.process.poll()}) before "
                                   f"'{prefix}':\n{self.tail()}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def tail(self, chars: int = 4000) -> str:
        return self.stderr.read_text(errors="replace")[-chars:]

    def ask(self, request: dict, timeout: float) -> dict:
        import json

        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return json.loads(self._expect("RESULT ", timeout))

    def close(self) -> None:
        """EOF ends the driver; TERM, then KILL, its process group if it does not end."""
        try:
            self.process.stdin.close()
            self.process.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass
        _stop(self.process)
        try:  # what the driver started in its group (the py4j JVM), should it outlive it
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
