"""The shared-memory fast path: no SIGBUS on a small /dev/shm, and attach maps only our own
segments. The /dev/shm-too-small tests run tests/shm_script.py in a private mount namespace
with a 1 MiB tmpfs on /dev/shm (root and util-linux ``unshare`` needed; skipped otherwise)."""

from __future__ import annotations

import errno
import functools
import glob
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distkeras import shared_memory
from distkeras.protocol import DTYPE
from distkeras.shared_memory import SHM_DIR, Segment

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "shm_script.py"
NUM_PARAMS = 1000
SIZE = 2 * NUM_PARAMS * DTYPE.itemsize  # a segment holds two float32 vectors
MOUNT_FAILED = 97


# ---- /dev/shm too small for the model: a private 1 MiB tmpfs --------------------------------
@functools.lru_cache(maxsize=1)
def namespace_unavailable() -> str | None:
    """Why a private mount namespace with a tmpfs cannot be made here (None: it can)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root to mount a private tmpfs on /dev/shm"
    if shutil.which("unshare") is None:
        return "needs util-linux unshare"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
        capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"cannot mount a tmpfs in a private mount namespace: {probe.stderr.strip()}"
    return None


def run_on_tiny_shm(*scenarios: str) -> tuple[int, list[str], str]:
    """tests/shm_script.py with ``scenarios`` on a 1 MiB /dev/shm of its own."""
    reason = namespace_unavailable()
    if reason:
        pytest.skip(reason)
    inner = (f"mount -t tmpfs -o size=1m tmpfs /dev/shm || exit {MOUNT_FAILED}; "
             'exec "$0" "$@"')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner,
         sys.executable, str(SCRIPT), *scenarios],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode == MOUNT_FAILED:
        pytest.skip(f"cannot mount a tmpfs on /dev/shm: {done.stderr.strip()}")
    return done.returncode, done.stdout.splitlines(), done.stderr


def outcome(lines: list[str], scenario: str) -> str | None:
    for line in lines:
        if line.startswith(scenario + " "):
            return line[len(scenario) + 1:]
    return None


def describe(rc: int, lines: list[str], stderr: str) -> str:
    return f"exit {rc} (-7 / 135 is SIGBUS)\nstdout: {lines}\nstderr tail: {stderr[-2000:]}"


def test_create_on_a_full_dev_shm_returns_none_and_leaves_no_file():
    rc, lines, stderr = run_on_tiny_shm("create:large", "create:small")
    assert rc == 0, describe(rc, lines, stderr)
    # 16 MiB cannot be reserved on a 1 MiB tmpfs: no segment, and no file left behind
    assert outcome(lines, "create:large") == "none leftover 0", describe(rc, lines, stderr)
    # the failed attempt gave its space back: a segment that fits is still made
    assert outcome(lines, "create:small") == "made leftover 0", describe(rc, lines, stderr)


def test_model_too_big_for_dev_shm_trains_over_tcp_instead_of_sigbus():
    rc, lines, stderr = run_on_tiny_shm("train:large")
    assert rc == 0, describe(rc, lines, stderr)
    assert outcome(lines, "train:large") == "transport tcp leftover 0", \
        describe(rc, lines, stderr)
    assert lines[-1] == "done"


def test_model_that_fits_keeps_shared_memory_after_a_fallback():
    rc, lines, stderr = run_on_tiny_shm("train:large", "train:small")
    assert rc == 0, describe(rc, lines, stderr)
    assert outcome(lines, "train:large") == "transport tcp leftover 0", \
        describe(rc, lines, stderr)
    assert outcome(lines, "train:small") == "transport shm leftover 0", \
        describe(rc, lines, stderr)


# ---- create: nothing left in /dev/shm on any failure path -----------------------------------
needs_dev_shm = pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason=f"no {SHM_DIR} here")


def ours() -> set[str]:
    return set(glob.glob(f"{SHM_DIR}/distkeras-*"))


@needs_dev_shm
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EOPNOTSUPP])
def test_create_returns_none_and_unlinks_when_space_cannot_be_reserved(monkeypatch, code):
    calls = []

    def fallocate(fd, offset, length):
        calls.append((offset, length))
        raise OSError(code, os.strerror(code))

    before = ours()
    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    segment = Segment.create(NUM_PARAMS)
    if segment is not None:
        segment.close()
    assert segment is None
    assert calls == [(0, SIZE)]
    assert ours() == before


@needs_dev_shm
def test_create_unlinks_when_the_map_fails(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    before = ours()
    monkeypatch.setattr(shared_memory.mmap, "mmap", refuse)
    try:
        assert Segment.create(NUM_PARAMS) is None
        assert ours() == before
    finally:
        for path in ours() - before:  # what a broken create left behind
            if os.stat(path).st_size == SIZE:
                os.unlink(path)


# ---- attach maps only the server's own segments ---------------------------------------------
@pytest.fixture
def made():
    """Makes files (or links) of a given size; removes every one of them afterwards."""
    paths = []

    def make(path, size=SIZE):
        path = str(path)
        paths.append(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        return path

    make.paths = paths
    yield make
    for path in paths:
        if os.path.lexists(path):
            os.unlink(path)


def segment_name() -> str:
    return f"distkeras-{secrets.token_hex(16)}"


@needs_dev_shm
@pytest.mark.parametrize("where", ["elsewhere", "dotdot"])
def test_attach_refuses_a_path_outside_dev_shm(made, tmp_path, where):
    path = made(tmp_path / segment_name())
    if where == "dotdot":  # starts with /dev/shm/ but resolves elsewhere
        path = f"{SHM_DIR}/{os.path.relpath(path, SHM_DIR)}"
    assert os.path.exists(path)
    assert Segment.attach(path, NUM_PARAMS) is None


@needs_dev_shm
@pytest.mark.parametrize("name", [
    "distkeras-" + "a" * 31,
    "distkeras-" + "a" * 33,
    "distkeras-" + "A" * 32,
    "distkeras-" + "g" * 32,
    "distkeras-" + "a" * 31 + "\n",
    "distkeras_" + "a" * 32,
    "segment-" + "a" * 32,
], ids=["short", "long", "upper", "not-hex", "newline", "underscore", "other-prefix"])
def test_attach_refuses_a_name_the_server_never_makes(made, name):
    path = made(f"{SHM_DIR}/{name}")
    assert Segment.attach(path, NUM_PARAMS) is None


@needs_dev_shm
def test_attach_refuses_a_symlink_named_like_a_segment(made):
    real = Segment.create(NUM_PARAMS)
    assert real is not None
    try:
        link = f"{SHM_DIR}/{segment_name()}"
        made.paths.append(link)
        os.symlink(real.path, link)
        assert Segment.attach(link, NUM_PARAMS) is None
        # the segment itself is accepted, and is the same memory as the server's
        mapped = Segment.attach(real.path, NUM_PARAMS)
        assert mapped is not None
        try:
            mapped.to_server[:] = np.arange(NUM_PARAMS, dtype=np.float32)
            assert np.array_equal(real.to_server, np.arange(NUM_PARAMS, dtype=np.float32))
        finally:
            mapped.close()
    finally:
        real.close()
    assert not os.path.exists(real.path)


@needs_dev_shm
@pytest.mark.parametrize("size", [0, SIZE - DTYPE.itemsize, SIZE + DTYPE.itemsize, 2 * SIZE])
def test_attach_refuses_a_file_of_the_wrong_size(made, size):
    path = made(f"{SHM_DIR}/{segment_name()}", size)
    assert Segment.attach(path, NUM_PARAMS) is None
    assert os.stat(path).st_size == size  # and leaves it as it was


@needs_dev_shm
def test_attach_refuses_something_that_is_not_a_regular_file(made):
    path = f"{SHM_DIR}/{segment_name()}"
    made.paths.append(path)
    os.mkfifo(path, 0o600)
    assert Segment.attach(path, NUM_PARAMS) is None


def test_attach_refuses_an_empty_path_and_no_params():
    assert Segment.attach("", NUM_PARAMS) is None
    assert Segment.attach(f"{SHM_DIR}/{segment_name()}", 0) is None


def test_a_new_segment_is_owner_only():
    segment = Segment.create(NUM_PARAMS)
    if segment is None:
        pytest.skip(f"no room in {SHM_DIR}")
    try:
        mode = os.stat(segment.path).st_mode
        assert mode & 0o777 == 0o600
    finally:
        segment.close()
