"""Random and mutated frames against a live server while a real worker trains.

The server must never crash, never allocate more than the model's size for a frame, never
apply a frame that failed a check, and the good worker's result must be exactly what its own
commits make.
"""

from __future__ import annotations

import socket
import struct
import threading
import tracemalloc

import numpy as np
import pytest
from conftest import running_server
from helpers import GoodWorker, closed_by_server, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distkeras import algorithms, protocol
from distkeras.parameter_server import ServerConfig
from distkeras.workers import ServerLink

pytestmark = pytest.mark.timeout(600)

PARAMS = 64
STATS = {"examples": 0, "frames": 0}


@pytest.fixture(scope="module")
def live():
    config = ServerConfig(handshake_timeout=1.0, frame_timeout=1.0, max_connections=64)
    with running_server(algorithms.DOWNPOUR(), np.zeros(PARAMS), num_workers=2,
                        config=config) as (server, layout, token):
        # the newest attempt there is: a fuzzed handshake carries the token, and one whose
        # worker byte became 0 (about 0.4 per run of 1,000 examples) takes partition 0 over
        # from an older or equal attempt, fencing the good worker, as the server must
        good = GoodWorker(server, layout, token, attempt=2**32 - 1)
        good.start()
        yield server, layout, token, good
        good.stop.set()
        good.join(timeout=30)


def hello(token, layout, worker=1):
    return protocol.HELLO.pack(protocol.MAGIC, protocol.VERSION, 0, token, layout.digest(),
                               worker, 0, 0, layout.num_params)


def mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    buffer = bytearray(data)
    for position, value in flips:
        if buffer:
            buffer[position % len(buffer)] = value
    return bytes(buffer[:cut] if cut is not None else buffer)


nan_payload = np.full(PARAMS, np.nan, dtype="<f4").tobytes()
sizes = st.sampled_from([0, 4, PARAMS * 4 - 4, PARAMS * 4, PARAMS * 4 + 4, 1 << 31, 1 << 62])
# every op code but FAIL: an authenticated FAIL stops the run, as it is meant to
headers = st.builds(
    lambda op, flags, epoch, samples, cursor, loss, size: protocol.REQUEST.pack(
        op, flags, epoch, samples, cursor, 0, loss, size),
    st.integers(0, 9).filter(lambda op: op != protocol.Op.FAIL), st.integers(0, 255),
    st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1),
    st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=True), sizes)
frame = st.tuples(headers, st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)),
                                    max_size=6), st.one_of(st.none(), st.integers(0, 400)))
attack = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=600)),
    st.tuples(st.just("hello"), st.lists(st.tuples(st.integers(0, 91), st.integers(0, 255)),
                                         min_size=1, max_size=4),
              st.one_of(st.none(), st.integers(0, 92))),
    st.tuples(st.just("frames"), st.lists(frame, min_size=1, max_size=4)),
)


def deliver(server, payload: bytes) -> None:
    sock = socket.create_connection(server.address, timeout=5)
    try:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the server may close first: that is a pass
    assert closed_by_server(sock, timeout=5)
    sock.close()


@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(attack)
def test_fuzzed_connections_never_hurt_the_server_or_the_training(live, case):
    server, layout, token, _ = live
    kind = case[0]
    if kind == "bytes":
        data = case[1]
    elif kind == "hello":
        data = mutate(hello(token, layout), case[1], case[2])
    else:
        data = hello(token, layout)
        for header, flips, cut in case[1]:
            size_at = protocol.REQUEST.size - 8  # the payload size is the header's last field
            body = header + (nan_payload if struct.unpack_from("<Q", header, size_at)[0] else b"")
            data += mutate(body, [(protocol.REQUEST.size + p, v) for p, v in flips], cut)
            STATS["frames"] += 1
    deliver(server, data)
    STATS["examples"] += 1
    assert server.error is None


def test_after_the_fuzzing_every_good_commit_counts_once_and_nothing_else(live):
    server, layout, token, good = live
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    for i in range(100):  # oversized claims and garbage, measured for allocation
        deliver(server, hello(token, layout) + protocol.request(
            protocol.Op.COMMIT, samples=1, cursor=0, nbytes=(1 << 40) + i))
    peak = tracemalloc.get_traced_memory()[1] - baseline
    tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, f"fuzzing allocated {peak} bytes on the server"
    good.stop.set()
    good.join(timeout=30)
    assert good.error is None, good.error
    assert server.clock == good.commits
    np.testing.assert_array_equal(server.center, np.full(PARAMS, good.commits, np.float32))
    # the server still serves a newcomer (the newest attempt number: a fuzzed handshake may
    # have claimed partition 1 with a high one, and an older attempt would be fenced)
    link = ServerLink(server.address, token, layout, worker=1, attempt=2**32 - 1)
    np.testing.assert_array_equal(link.pull(), server.center)
    link.bye()

    def server_threads():
        return [t.name for t in threading.enumerate() if t.name.startswith("distkeras-ps-")]

    # every fuzz connection's thread ends (the newcomer's too): only the acceptor is left
    assert wait_for(lambda: server_threads() == ["distkeras-ps-accept"]), server_threads()
    print(f"fuzzed {STATS['examples']} connections, {STATS['frames']} frames; "
          f"peak allocation {peak} bytes")
