"""Memory sizes and the resident memory of this process: what ``worker_memory`` is written in,
and how a task measures what it really used.

A Spark Python worker serves many tasks one after the other, so the process-lifetime peak
(``ru_maxrss``) says nothing about one task. :class:`PeakRSS` measures from the task's start:
on Linux it resets the kernel's high-water mark (``/proc/self/clear_refs``) and reads it back,
which misses no peak however short; where that is refused it samples ``/proc/self/statm``.

Pure Python: no numpy, Spark or Keras.
"""

from __future__ import annotations

import os
import re
import threading

#: the default ``worker_memory``: bytes of training rows a worker holds before it spills
WORKER_MEMORY = "1g"

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(value: int | str, name: str = "size") -> int:
    """Bytes in ``value``: an int, or a string as Spark writes memory (``"512m"``, ``"1g"``,
    ``"1.5GiB"``; binary units). Raises ValueError naming ``name`` for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number of bytes or a size like '1g', got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f"{name} must be a number of bytes or a size like '512m' or '1g', "
                             f"got {value!r}")
        size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size < 1:
        raise ValueError(f"{name} must be at least 1 byte, got {value!r}")
    return size


def format_size(size: float) -> str:
    """``size`` bytes for people: ``"1.5 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - the loop returns


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss() -> int | None:
    """Resident bytes of this process now (None where ``/proc`` is not there)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def _high_water_mark() -> int | None:
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # "5": reset the peak RSS to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class PeakRSS:
    """The peak resident memory of this process from :meth:`start` on.

    ``peak`` is exact where the kernel's high-water mark can be reset, else the largest of
    samples taken every ``interval`` seconds; None where neither can be had (not Linux)."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self._exact = False
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PeakRSS:
        self._exact = _reset_high_water_mark() and _high_water_mark() is not None
        if not self._exact and rss() is not None:
            self._sampled = rss() or 0
            self._thread = threading.Thread(target=self._sample, name="distkeras-rss",
                                            daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._sampled = max(self._sampled, rss() or 0)

    @property
    def peak(self) -> int | None:
        if self._exact:
            return _high_water_mark()
        now = rss()
        if now is None:
            return None
        self._sampled = max(self._sampled, now)
        return self._sampled

    def stop(self) -> int | None:
        """End the sampling (if any) and return the peak."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self.peak
