"""Helpers shared by the benchmark scripts: machine description and JSON-line output.

Each benchmark prints one JSON object per result on stdout (``json.dumps`` of a flat dict)
and, with ``--out FILE``, appends the same lines to ``FILE``. Nothing here imports Keras,
TensorFlow or Spark, so ``--help`` stays fast.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import socket
import subprocess
import sys
from typing import Any


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def source_commit() -> str | None:
    """The checkout the bench ran from: ``git describe``-style commit, ``-dirty`` when
    tracked files differ from it (a table must name the code that produced it); None
    outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short=7", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: the code, cores, platform and library versions."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "commit": source_commit(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "keras": _version("keras"),
        "tensorflow": _version("tensorflow"),
        "jax": _version("jax"),
        "torch": _version("torch"),
        "pyspark": _version("pyspark"),
        "distkeras": _version("distkeras"),
    }


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf and no numpy scalars: map them to null / plain Python numbers."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def emit(record: dict[str, Any], out: str | None = None) -> None:
    """Print ``record`` as one JSON line on stdout; append it to ``out`` when given."""
    line = json.dumps({key: _clean(value) for key, value in record.items()}, sort_keys=False)
    print(line, flush=True)
    if out:
        folder = os.path.dirname(os.path.abspath(out))
        os.makedirs(folder, exist_ok=True)
        with open(out, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def log(message: str) -> None:
    """Progress messages go to stderr so stdout stays pure JSON lines."""
    print(message, file=sys.stderr, flush=True)
