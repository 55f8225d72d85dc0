"""
Where media may be downloaded from, and connections that go only there.

Every media URL, and every redirect target, is checked before a connection opens: a host whose every
address is public (see :func:`address_kind`), unless :class:`MediaHostPolicy` allows more. The
connection then goes to the address that was checked, so a name cannot resolve to another address
between the check and the connect. Each exchange (:func:`media_exchange`) has a wall-clock limit,
enforced while connecting and reading: at the deadline its sockets are shut down.
"""

from __future__ import annotations

import contextlib
import contextvars
import http.cookiejar
import ipaddress
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow_provider_firered.gateway.connection import GatewaySettings

#: Cloud metadata endpoints: never a media host, whatever the connection allows.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: Private networks proper (RFC 1918, IPv6 unique local): a local gateway allows these for its CDN.
_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_LOCAL_KINDS = frozenset({"loopback", "private"})


# -- which hosts media may come from ----------------------------------------------------------------


@dataclass(frozen=True)
class MediaHostPolicy:
    """
    The addresses media may be downloaded from, besides public ones.

    :param allow_local: loopback and private addresses (the gateway itself is on one: a local emulator).
    :param allow_private: every non-public address except cloud metadata ones (a connection opt-in).
    """

    allow_local: bool = False
    allow_private: bool = False

    @classmethod
    def for_settings(cls, settings: GatewaySettings) -> MediaHostPolicy:
        """Return a connection's policy: its ``allow_private_media_hosts`` extra and its gateway's host."""
        return cls(
            allow_local=_is_local_host(urlsplit(settings.base_url).hostname or ""),
            allow_private=settings.allow_private_media_hosts,
        )

    def refusal(self, kind: str | None) -> str | None:
        """Return why an address of ``kind`` (see :func:`address_kind`) is refused, or ``None`` if allowed."""
        if kind is None or (kind in _LOCAL_KINDS and self.allow_local):
            return None
        if kind == "cloud metadata":
            return "cloud metadata addresses are never media hosts"
        if self.allow_private:
            return None
        hint = "set the connection extra allow_private_media_hosts to true to allow it"
        return f"media is downloaded from public addresses only ({hint})"


def address_kind(address: str) -> str | None:
    """
    Classify an IP address: ``None`` for a public one, else the kind of address it is.

    The kinds are ``"cloud metadata"``, ``"loopback"``, ``"link-local"``, ``"private"`` and
    ``"reserved"`` (multicast, unspecified, shared, documentation...).
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:  # a NAT64 gateway reaches the IPv4 address in the low 32 bits
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if any(ip in network for network in _PRIVATE_NETWORKS):
        return "private"
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified or not ip.is_global:
        return "reserved"
    return None


def _is_local_host(host: str) -> bool:
    # Names other than localhost are not resolved here: a gateway behind a private DNS name opts in
    # with allow_private_media_hosts instead.
    host = host.lower().rstrip(".").strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return address_kind(host) in _LOCAL_KINDS
    except ValueError:
        return False


class HostRefused(Exception):
    """A media host resolved to an address the policy refuses (raised before connecting)."""


def checked_addresses(host: str, port: int, policy: MediaHostPolicy) -> list[tuple[int, str]]:
    """
    Resolve ``host`` once and return its ``(family, address)`` pairs if every one is allowed.

    :raises HostRefused: when any address is refused (a name with one private address among public
        ones could be steered to it).
    :raises socket.gaierror: when the name does not resolve.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[tuple[int, str]] = []
    for family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0])
        kind = address_kind(address)
        reason = policy.refusal(kind)
        if reason is not None:
            shown = host if host == address else f"{host} (resolves to {address})"
            raise HostRefused(f"refused media host {shown}, a {kind} address: {reason}")
        if (family, address) not in addresses:
            addresses.append((family, address))
    return addresses


# -- one exchange: the policy and the wall-clock limit, seen by the connections it opens -------------


@dataclass
class MediaExchange:
    """
    One download try: the host policy its connections obey and its wall-clock limit.

    :param policy: the addresses its connections may go to.
    :param timeout: its limit in seconds, for messages.
    :param deadline: when it must be over, on ``time.monotonic()``'s clock.
    :param expired: set once the deadline passed and its sockets were shut down.
    """

    policy: MediaHostPolicy
    timeout: float
    deadline: float
    expired: bool = False
    _sockets: list[socket.socket] = field(default_factory=list)
    _timer: threading.Timer | None = None

    def remaining(self) -> float:
        """Return the seconds left before the deadline (negative once past it)."""
        return self.deadline - time.monotonic()

    def start(self) -> None:
        """At the deadline, shut every watched socket down: a read blocked on a dripping server returns."""
        self._timer = threading.Timer(max(self.remaining(), 0.0), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock`` down at the deadline."""
        self._sockets.append(sock)

    def _expire(self) -> None:
        self.expired = True
        # Socket objects, never bare descriptors: a closed one cannot hit a reused descriptor.
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop the deadline's timer (the sockets stay as they are)."""
        if self._timer is not None:
            self._timer.cancel()


_CURRENT: contextvars.ContextVar[MediaExchange | None] = contextvars.ContextVar("firered_media_exchange")
_STRICT = MediaHostPolicy()


@contextlib.contextmanager
def media_exchange(policy: MediaHostPolicy, timeout: float) -> Iterator[MediaExchange]:
    """
    Run one download try under ``policy`` and a ``timeout``-second limit.

    Connections opened by a :func:`new_media_session` in this context go only to addresses the policy
    allows.
    """
    exchange = MediaExchange(policy, timeout, time.monotonic() + timeout)
    exchange.start()
    token = _CURRENT.set(exchange)
    try:
        yield exchange
    finally:
        exchange.close()
        _CURRENT.reset(token)


def _open_checked(conn: HTTPConnection) -> socket.socket:
    """Open the socket of ``conn`` to an address that passed the current exchange's policy."""
    exchange = _CURRENT.get(None)
    try:
        addresses = checked_addresses(conn.host, conn.port or 0, exchange.policy if exchange else _STRICT)
    except socket.gaierror as err:
        raise NameResolutionError(conn.host, conn, err) from err
    timeout = conn.timeout if isinstance(conn.timeout, (int, float)) else None
    if exchange is not None:
        timeout = max(min(timeout or exchange.remaining(), exchange.remaining()), 0.001)
    error: OSError | None = None
    for _family, address in addresses:
        try:
            sock = urllib3_connection.create_connection(
                (address, conn.port),
                timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except TimeoutError as err:
            raise ConnectTimeoutError(conn, f"Connection to {conn.host} timed out") from err
        except OSError as err:
            error = err
            continue
        if exchange is not None:
            exchange.watch(sock)
        return sock
    raise NewConnectionError(conn, f"Failed to establish a new connection: {error}")


class _CheckedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _open_checked(self)


class _CheckedHTTPSConnection(HTTPSConnection):
    # Only the socket goes to the checked address: SNI and the certificate check keep the host name.
    def _new_conn(self) -> socket.socket:
        return _open_checked(self)

    def connect(self) -> None:
        super().connect()
        # TLS moves the descriptor to a new socket object: watch that one too.
        exchange = _CURRENT.get(None)
        if exchange is not None and self.sock is not None:
            exchange.watch(self.sock)


class _CheckedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class _MediaAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _CheckedHTTPPool, "https": _CheckedHTTPSPool}


def new_media_session() -> requests.Session:
    """
    Return a new session for CDN downloads, which sends nothing it was not given.

    No key, nothing from the environment (``.netrc``, proxy variables), no cookies kept, unencoded
    bodies asked for, and connections only to checked addresses.
    """
    session = requests.Session()
    session.trust_env = False
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    # A compressed body would make the size checks compare encoded and decoded lengths.
    session.headers["Accept-Encoding"] = "identity"
    adapter = _MediaAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
