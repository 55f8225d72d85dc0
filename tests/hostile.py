"""
A small gateway and CDN that answer badly on purpose, on loopback, for the hostile-answer tests.

The emulator plays an honest gateway; this server plays a buggy or compromised one: each test routes a
path to a function that decides the answer, byte by byte if it likes (a slow drip, a body of any size,
a redirect, a forged request id). Every request is recorded, so tests can count the POSTs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Seen:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    """
    What to send back.

    :param status: the HTTP status.
    :param headers: headers to send (``Content-Length`` is added when ``body`` is bytes and none is set).
    :param body: the body, or chunks sent one after another (each may be preceded by ``drip`` seconds).
    :param drip: seconds to sleep before each chunk.
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Iterable[bytes] = b""
    drip: float = 0.0


Route = Callable[[Seen], Answer]


def _always(answer: Answer) -> Route:
    """A route giving the same answer to every request."""
    return lambda _seen: answer


class HostileServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 whose answers the test chooses per path prefix."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            # BaseHTTPRequestHandler's signature; quiet: no line per request on stderr.
            def log_message(self, format: str, *args: object) -> None:  # noqa: ARG002
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                seen = Seen(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
                with server._lock:
                    server.seen.append(seen)
                route = server._route(self.path)
                answer = route(seen) if route else Answer(404, {"Content-Type": "application/json"}, b"{}")
                self.send_response(answer.status)
                headers = dict(answer.headers)
                if isinstance(answer.body, bytes) and "Content-Length" not in headers:
                    headers["Content-Length"] = str(len(answer.body))
                if not isinstance(answer.body, bytes) and "Content-Length" not in headers:
                    headers["Connection"] = "close"
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                chunks = [answer.body] if isinstance(answer.body, bytes) else answer.body
                try:
                    for chunk in chunks:
                        if answer.drip:
                            time.sleep(answer.drip)
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                if "Connection" in headers:
                    self.close_connection = True

            do_GET = do_POST = do_HEAD = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def _route(self, path: str) -> Route | None:
        for prefix in sorted(self.routes, key=len, reverse=True):
            if path.startswith(prefix):
                return self.routes[prefix]
        return None

    def route(self, prefix: str, answer: Route | Answer) -> None:
        """Answer every request whose path starts with ``prefix`` (the longest prefix wins)."""
        self.routes[prefix] = answer if callable(answer) else _always(answer)

    def posts(self) -> int:
        """How many POSTs (paid submits) arrived."""
        with self._lock:
            return sum(1 for s in self.seen if s.method == "POST")

    def start(self) -> HostileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@contextlib.contextmanager
def serving() -> Iterator[HostileServer]:
    """A hostile gateway/CDN on loopback, stopped on exit."""
    server = HostileServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    """A fresh hostile gateway/CDN on loopback for one test."""
    with serving() as server:
        yield server


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """
    Record every outgoing connection, and refuse any outside 127.0.0.0/8 (none may leave the host).

    Modules about media hosts use it for every test: a refused host must never get as far as a connect.
    """
    attempts: list[Any] = []
    real = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        if isinstance(address, tuple) and not ipaddress.ip_address(address[0].split("%")[0]).is_loopback:
            raise ConnectionRefusedError(f"test network: {address[0]} is off limits")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts
