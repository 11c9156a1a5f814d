"""Reaching the parameter server from another machine, the parts that need no second host:
a worker that cannot connect fails in seconds saying what to change, and only a peer on the
server's own host is offered shared memory (tests/test_hosts.py runs the rest across real
network namespaces)."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from conftest import running_server
from helpers import free_port

from distkeras import algorithms, protocol
from distkeras.parameter_server import ServerConfig
from distkeras.shared_memory import is_local_address
from distkeras.workers import ServerLink

pytestmark = pytest.mark.timeout(60)


def test_a_worker_that_cannot_connect_fails_in_seconds_naming_address_and_setting():
    port = free_port()  # nothing listens there: every attempt is refused
    layout = protocol.Layout.of([np.zeros(3, np.float32)])
    began = time.monotonic()
    with pytest.raises(ConnectionError) as caught:
        ServerLink(("127.0.0.1", port), protocol.new_token(), layout, worker=1)
    assert time.monotonic() - began < 16
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "worker 1" in message
    assert "spark.driver.host" in message and "server_host" in message


def test_only_addresses_of_this_host_count_as_local():
    assert is_local_address("127.0.0.1")
    assert is_local_address("::ffff:127.0.0.1")
    assert not is_local_address("198.18.255.254")  # nobody's address in a test run


def test_the_server_listens_on_the_configured_port():
    port = free_port()
    with running_server(algorithms.DOWNPOUR(), np.zeros(4), config=ServerConfig(port=port)) \
            as (server, _, _):
        assert server.address[1] == port
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass

