"""Where a worker spills its partition, and the clean-up that leaves no spill file behind.

A task spills into one of the executor's local directories (``SPARK_LOCAL_DIRS``, which Spark
gives its Python workers: the directories of ``spark.local.dir``; the temp directory
elsewhere), in a directory named after the run, the partition, the process and the host:
``distkeras-spill.<run>.<partition>.<pid>.<host>``. The task removes it when it ends or fails.
A task that is killed cannot (Spark ends a cancelled task's Python worker with SIGKILL), so
every task first removes what a predecessor left: the directories of an earlier attempt of
its own partition in this run, and those of processes on this host that no longer exist.
Spark itself deletes its local directories when the executor stops.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile

PREFIX = "distkeras-spill"


def local_dirs() -> list[str]:
    """The executor's local directories, else the temp directory."""
    dirs = [d for d in os.environ.get("SPARK_LOCAL_DIRS", "").split(",") if d.strip()]
    return dirs or [tempfile.gettempdir()]


def run_id(token: bytes) -> str:
    """A name for one training run, derived from its secret token without revealing it."""
    return hashlib.sha256(b"distkeras-spill:" + token).hexdigest()[:12]


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a zombie counts until it is reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def sweep(run: str, partition: int, dirs: list[str] | None = None) -> list[str]:
    """Remove the spill directories an earlier attempt of ``partition`` of ``run`` left, and
    those of dead processes on this host; return what was removed."""
    host, removed = socket.gethostname(), []
    for root in dirs if dirs is not None else local_dirs():
        try:
            names = os.listdir(root)
        except OSError:
            continue
        for name in names:
            parts = name.split(".", 4)
            if parts[0] != PREFIX or len(parts) != 5 or not parts[3].isdigit():
                continue
            _, other_run, other_partition, pid, other_host = parts
            if int(pid) == os.getpid() and other_host == host:
                continue  # this process's own (a task of it still running)
            predecessor = other_run == run and other_partition == str(partition)
            if predecessor or (other_host == host and not process_alive(int(pid))):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
                removed.append(os.path.join(root, name))
    return removed


class SpillDir:
    """A task's spill directory: swept for leftovers at once, created on first use, removed
    by :meth:`close` (also as a context manager)."""

    def __init__(self, run: str, partition: int, dirs: list[str] | None = None):
        dirs = dirs if dirs is not None else local_dirs()
        self.swept = sweep(run, partition, dirs)
        root = dirs[partition % len(dirs)]  # spread partitions over the executor's disks
        self.path = os.path.join(root, f"{PREFIX}.{run}.{partition}.{os.getpid()}."
                                       f"{socket.gethostname()}")

    def file(self, name: str) -> str:
        """The path of a new file ``name`` in the directory (created now, private)."""
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        return os.path.join(self.path, name)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> SpillDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

