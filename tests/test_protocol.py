"""The wire: round trips, and every kind of bad frame rejected while a good worker trains."""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pytest
from conftest import running_server
from helpers import GoodWorker, closed_by_server, wait_for
from numpy.testing import assert_array_equal

from distkeras import algorithms, protocol
from distkeras.parameter_server import ServerConfig
from distkeras.workers import ServerLink, WorkerError

pytestmark = pytest.mark.timeout(120)


def multi_layer_model():
    import keras

    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu"),
                             keras.layers.BatchNormalization(), keras.layers.Dense(3)])


def test_layout_round_trip_of_a_multi_layer_model():
    weights = [(w + np.arange(w.size).reshape(w.shape)).astype(w.dtype)
               for w in multi_layer_model().get_weights()]
    layout = protocol.Layout.of(weights)
    flat = layout.flatten(weights)
    assert flat.dtype == np.dtype("<f4") and flat.size == sum(w.size for w in weights)
    for original, back in zip(weights, layout.unflatten(flat)):
        assert back.shape == original.shape and back.dtype == original.dtype
        assert_array_equal(back, original)


def test_layout_digest_tells_shapes_apart():
    a = protocol.Layout(((2, 3), (3,)), ("float32", "float32"))
    b = protocol.Layout(((3, 2), (3,)), ("float32", "float32"))
    assert a.num_params == b.num_params and a.digest() != b.digest()


@pytest.mark.parametrize("shared", [True, False], ids=["shared-memory", "socket"])
def test_model_weights_cross_the_wire_bit_for_bit(shared):
    weights = multi_layer_model().get_weights()
    layout = protocol.Layout.of(weights)
    center = layout.flatten(weights)
    rng = np.random.default_rng(1)
    with running_server(algorithms.DOWNPOUR(), center) as (server, _, token):
        server.layout, server._digest = layout, layout.digest()
        link = ServerLink(server.address, token, layout, worker=0, shared_memory=shared)
        assert (link.segment is not None) == shared
        pulled = link.pull()
        for original, back in zip(weights, layout.unflatten(pulled)):
            assert_array_equal(back, original)
        delta = rng.standard_normal(layout.num_params).astype(np.float32)
        after = link.commit_and_pull(delta)
        assert_array_equal(after, center + delta)
        link.bye()


# ---- hostile and broken peers -------------------------------------------------------------
def raw_hello(token, layout, magic=protocol.MAGIC, version=protocol.VERSION, worker=1):
    """A handshake for partition 1 (the good worker trains partition 0)."""
    return protocol.HELLO.pack(magic, version, 0, token, layout.digest(), worker, 0, 0,
                               layout.num_params)


def request(op, nbytes, samples=1):
    return protocol.request(op, samples=samples, cursor=0, nbytes=nbytes)


def open_raw(server):
    sock = socket.create_connection(server.address, timeout=10)
    return sock


def handshake(sock, token, layout, pull=True):
    """A valid handshake, then (``pull``) one pull, as a real worker starts."""
    sock.sendall(raw_hello(token, layout))
    buffer = memoryview(bytearray(max(protocol.WELCOME.size, layout.nbytes)))
    protocol.recv_exact(sock, buffer[:protocol.WELCOME.size])
    magic, status, *_ = protocol.WELCOME.unpack(buffer[:protocol.WELCOME.size])
    assert magic == protocol.MAGIC and status == protocol.Status.OK
    if pull:
        sock.sendall(protocol.request(protocol.Op.PULL))
        protocol.recv_exact(sock, buffer[:protocol.REPLY.size])
        status, _, _, size = protocol.REPLY.unpack(buffer[:protocol.REPLY.size])
        assert status == protocol.Status.OK and size == layout.nbytes
        protocol.recv_exact(sock, buffer[:size])


def wrong_magic(sock, token, layout):
    sock.sendall(raw_hello(token, layout, magic=b"HTTP"))


def wrong_version(sock, token, layout):
    sock.sendall(raw_hello(token, layout, version=99))


def wrong_token(sock, token, layout):
    sock.sendall(raw_hello(bytes(len(token)), layout))


def wrong_layout(sock, token, layout):
    other = protocol.Layout(((layout.num_params + 1,),), ("float32",))
    sock.sendall(raw_hello(token, other))


def worker_out_of_range(sock, token, layout):
    sock.sendall(raw_hello(token, layout, worker=7))


def truncated_frame(sock, token, layout):
    handshake(sock, token, layout)
    sock.sendall(request(protocol.Op.COMMIT, layout.nbytes) + b"\x00" * 8)
    sock.shutdown(socket.SHUT_WR)  # half a payload, then the peer gives up


def oversized_frame(sock, token, layout):
    handshake(sock, token, layout)
    sock.sendall(request(protocol.Op.COMMIT, 1 << 40))  # a terabyte, never allocated


def unknown_op(sock, token, layout):
    handshake(sock, token, layout)
    sock.sendall(request(77, 0))


def non_finite_update(sock, token, layout):
    handshake(sock, token, layout)
    bad = np.full(layout.num_params, np.nan, dtype=np.float32)
    sock.sendall(request(protocol.Op.COMMIT, layout.nbytes) + bad.tobytes())


def shared_flag_without_segment(sock, token, layout):
    handshake(sock, token, layout)  # raw HELLO asks for no shared memory
    sock.sendall(protocol.request(protocol.Op.PULL, flags=protocol.Flag.SHARED))


def commit_before_pull(sock, token, layout):
    handshake(sock, token, layout, pull=False)
    ones = np.ones(layout.num_params, dtype=np.float32)
    sock.sendall(request(protocol.Op.COMMIT, layout.nbytes) + ones.tobytes())


def oversized_fail_reason(sock, token, layout):
    handshake(sock, token, layout)
    sock.sendall(protocol.request(protocol.Op.FAIL, nbytes=1 << 20))


def garbage(sock, token, layout):
    sock.sendall(np.random.default_rng(5).bytes(500))


ATTACKS = [wrong_magic, wrong_version, wrong_token, wrong_layout, worker_out_of_range,
           truncated_frame, oversized_frame, unknown_op, non_finite_update,
           shared_flag_without_segment, commit_before_pull, oversized_fail_reason, garbage]


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda f: f.__name__)
def test_bad_peer_is_closed_and_the_good_worker_keeps_training(attack):
    size = 1000
    with running_server(algorithms.DOWNPOUR(), np.zeros(size), num_workers=2) as (
            server, layout, token):
        good = GoodWorker(server, layout, token)
        good.start()
        assert wait_for(lambda: good.commits > 0)  # the attack comes while it trains
        sock = open_raw(server)
        try:
            attack(sock, token, layout)
            assert closed_by_server(sock), f"{attack.__name__}: connection left open"
        finally:
            sock.close()
        good.stop.set()
        good.join(timeout=30)
        assert good.error is None, good.error
        # every good commit applied once, nothing from the bad peer
        assert server.clock == good.commits
        assert_array_equal(server.center, np.full(size, good.commits, dtype=np.float32))
        assert server.error is None


def test_shared_memory_segment_is_unlinked_after_the_first_frame():
    import glob

    before = set(glob.glob("/dev/shm/distkeras-*"))
    with running_server(algorithms.DOWNPOUR(), np.zeros(8)) as (server, layout, token):
        link = ServerLink(server.address, token, layout, worker=0)
        assert link.segment is not None
        link.pull()
        link.commit_and_pull(np.ones(8, np.float32))
        assert set(glob.glob("/dev/shm/distkeras-*")) == before
        assert_array_equal(link.pull(), np.ones(8))
        link.bye()


def test_bad_token_error_is_clear_for_a_real_client():
    with running_server(algorithms.DOWNPOUR(), np.zeros(4)) as (server, layout, _):
        with pytest.raises(WorkerError, match="authentication failed"):
            ServerLink(server.address, protocol.new_token(), layout, worker=0)


def test_slow_handshake_is_cut_off():
    config = ServerConfig(handshake_timeout=0.5)
    with running_server(algorithms.DOWNPOUR(), np.zeros(4), config=config) as (server, layout,
                                                                               token):
        sock = open_raw(server)
        hello = raw_hello(token, layout)
        started = time.monotonic()
        try:
            for i in range(10):  # one byte every 0.2 s: slower than the deadline allows
                sock.sendall(hello[i:i + 1])
                time.sleep(0.2)
        except OSError:
            pass
        assert closed_by_server(sock, timeout=5)
        assert time.monotonic() - started < 5
        sock.close()


@pytest.mark.parametrize("max_connections, num_workers, limit",
                         [(4, 1, 4), (None, 3, 4 * 3 + 8)])  # the default: 4 per worker + 8
def test_connection_flood_is_bounded(max_connections, num_workers, limit):
    # the handshake deadline outlasts the test: the connections the server takes stay open
    # (waiting for a hello), so every rejection counted is a refusal at accept
    config = ServerConfig(max_connections=max_connections, handshake_timeout=120)
    with running_server(algorithms.DOWNPOUR(), np.zeros(4), num_workers=num_workers,
                        config=config) as (server, *_):
        socks = [open_raw(server) for _ in range(limit + 8)]
        most = 0

        def all_accepted_or_refused():
            nonlocal most
            most = max(most, len(server._connections))
            return server.rejected_connections >= 8 and len(server._connections) >= limit

        try:
            assert wait_for(all_accepted_or_refused), \
                (len(server._connections), server.rejected_connections)
            assert len(server._connections) == limit and server.rejected_connections == 8
            assert most <= limit  # at no time more than max_connections
        finally:
            for s in socks:
                s.close()


def test_stop_frees_the_port_and_ends_every_thread():
    with running_server(algorithms.DOWNPOUR(), np.zeros(4)) as (server, layout, token):
        link = ServerLink(server.address, token, layout, worker=0)
        link.pull()
        port = server.address[1]
    # server stopped by the context manager while a client was still connected
    assert not [t for t in threading.enumerate() if t.name.startswith("distkeras-ps")]
    # a new server can listen on the very same port at once (connections in TIME_WAIT do not
    # block a listener that sets SO_REUSEADDR, as the server does)
    from distkeras.parameter_server import ParameterServer

    again = ParameterServer(np.zeros(4, np.float32), layout, algorithms.DOWNPOUR(), 1, token,
                            port=port).start()
    assert again.address[1] == port
    again.stop()
    with pytest.raises((OSError, WorkerError, protocol.ProtocolError)):
        link.pull()


def test_struct_sizes_are_stable():
    # part of the protocol: changing a header size must bump protocol.VERSION
    assert (protocol.HELLO.size, protocol.WELCOME.size, protocol.REQUEST.size,
            protocol.REPLY.size) == (92, 96, 48, 24)
    assert struct.calcsize("<f") == protocol.DTYPE.itemsize
