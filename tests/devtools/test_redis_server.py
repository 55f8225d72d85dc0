"""
The throwaway Redis server of ``firered_devtools.redis_server``: a real server on 127.0.0.1 only,
answering only with its password, gone with its files after ``stop()``.
"""

from __future__ import annotations

import os
import socket

import pytest
from firered_devtools import redis_server as redis_module
from firered_devtools.processes import alive
from firered_devtools.redis_server import RedisServer, RedisUnavailable

from tests.devtools.servers import listening, started

# The Celery and S3 deployment is installed and tested on the newest Airflow only (`make`).
pytestmark = [pytest.mark.timeout(120), pytest.mark.newest]


def _started() -> RedisServer:
    return started(RedisServer, RedisUnavailable, "Redis")


def test_round_trip_on_loopback_then_nothing_left() -> None:
    server = _started()
    try:
        assert server.url == f"redis://:{server.password}@127.0.0.1:{server.port}/0"
        assert server.ping()
        assert server.command("SET", "firered", "value") == b"+OK"
        assert server.command("GET", "firered") == b"$5"  # a bulk string of 5 bytes follows
        # Without the password nothing is answered but an error.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            assert sock.recv(64).startswith(b"-NOAUTH")
        pid, root = server.pid, server.root
        assert pid is not None
        assert root is not None
        assert listening(pid) == [f"127.0.0.1:{server.port}"]
        if os.geteuid() == 0:  # never as root
            assert os.stat(f"/proc/{pid}").st_uid != 0
    finally:
        server.stop()
    assert not alive(pid)
    assert not root.exists()
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", server.port), timeout=2),
    ):
        pass
    server.stop()  # a second stop is harmless


def test_missing_server_without_root_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_module, "find_server", lambda: None)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(RedisUnavailable, match="'redis-server' package"):
        redis_module.ensure_server()
