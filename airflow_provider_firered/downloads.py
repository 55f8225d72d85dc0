"""
Media downloads: output names, atomic writes to local paths and object storage, and the checks that
keep a hostile CDN answer harmless.

Every media URL, and every redirect target, is checked before a connection opens: http(s) only, and a
host whose every address is public (see :func:`address_kind`). The connection then goes to the address
that was checked, so a name cannot resolve to another address between the check and the connect. Each
exchange has a wall-clock limit, enforced while connecting and reading. A body is saved only when its
first bytes are a PNG, JPEG, WebP or GIF image.
"""

from __future__ import annotations

import contextlib
import contextvars
import glob
import http.cookiejar
import ipaddress
import logging
import os
import posixpath
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urljoin, urlsplit

import requests
from airflow.providers.common.compat.sdk import ObjectStoragePath
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from airflow_provider_firered.exceptions import (
    FireRedDownloadError,
    FireRedResponseError,
    FireRedValidationError,
)
from airflow_provider_firered.options import MAX_NUM_IMAGES
from airflow_provider_firered.responses import check_media_type, status_path

if TYPE_CHECKING:
    from airflow_provider_firered.connection import GatewaySettings
    from airflow_provider_firered.hooks.firered import FireRedHook

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
#: The only extensions an output file gets, by media type; anything else is saved as ``.bin``.
EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}
#: Redirects followed per download, each target checked like the first URL.
MAX_REDIRECTS = 5
#: CDN statuses worth another try besides 5xx: a timeout and rate limiting.
_RETRYABLE_CDN_STATUSES = frozenset({408, 429})
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
        """The policy of a connection: its ``allow_private_media_hosts`` extra and its gateway's host."""
        return cls(
            allow_local=_is_local_host(urlsplit(settings.base_url).hostname or ""),
            allow_private=settings.allow_private_media_hosts,
        )

    def refusal(self, kind: str | None) -> str | None:
        """Why an address of ``kind`` (see :func:`address_kind`) is refused, or ``None`` if allowed."""
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
    Classify an IP address: ``None`` for a public one, else ``"cloud metadata"``, ``"loopback"``,
    ``"link-local"``, ``"private"`` or ``"reserved"`` (multicast, unspecified, shared, documentation...).
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


class _HostRefused(Exception):
    """A media host resolved to an address the policy refuses (raised before connecting)."""


def checked_addresses(host: str, port: int, policy: MediaHostPolicy) -> list[tuple[int, str]]:
    """
    Resolve ``host`` once and return its ``(family, address)`` pairs if every one is allowed.

    :raises _HostRefused: when any address is refused (a name with one private address among public
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
            raise _HostRefused(f"refused media host {shown}, a {kind} address: {reason}")
        if (family, address) not in addresses:
            addresses.append((family, address))
    return addresses


# -- one exchange: the policy and the wall-clock limit, seen by the connections it opens -------------


@dataclass
class _Exchange:
    policy: MediaHostPolicy
    timeout: float
    deadline: float
    expired: bool = False
    _sockets: list[socket.socket] = field(default_factory=list)
    _timer: threading.Timer | None = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def start(self) -> None:
        """At the deadline, shut every watched socket down: a read blocked on a dripping server returns."""
        self._timer = threading.Timer(max(self.remaining(), 0.0), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        self._sockets.append(sock)

    def _expire(self) -> None:
        self.expired = True
        # Socket objects, never bare descriptors: a closed one cannot hit a reused descriptor.
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


_EXCHANGE: contextvars.ContextVar[_Exchange | None] = contextvars.ContextVar("firered_media_exchange")
_STRICT = MediaHostPolicy()


@contextlib.contextmanager
def _exchange(policy: MediaHostPolicy, timeout: float) -> Iterator[_Exchange]:
    exchange = _Exchange(policy, timeout, time.monotonic() + timeout)
    exchange.start()
    token = _EXCHANGE.set(exchange)
    try:
        yield exchange
    finally:
        exchange.close()
        _EXCHANGE.reset(token)


def _open_checked(conn: HTTPConnection) -> socket.socket:
    """Open the socket of ``conn`` to an address that passed the current exchange's policy."""
    exchange = _EXCHANGE.get(None)
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
        exchange = _EXCHANGE.get(None)
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
    A session for CDN downloads: no key, nothing from the environment (``.netrc``, proxy variables),
    no cookies kept, unencoded bodies asked for, and connections only to checked addresses.
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


# -- downloading ---------------------------------------------------------------------------------


def download(
    session: requests.Session,
    settings: GatewaySettings,
    url: str,
    destination: str | os.PathLike[str] | ObjectStoragePath,
    *,
    max_bytes: int | None = None,
    suffix_from_content: bool = False,
) -> str:
    """
    Download a media URL to a local path or an ``ObjectStoragePath``, atomically.

    The body is streamed to a temporary file (checked against ``max_bytes``, the announced length, the
    media type and the image signature of its first bytes, within the connection's ``request_timeout``
    of wall-clock time) and only then moved, or uploaded, to ``destination``, so a failed download never
    leaves a partial file behind (and a completed one removes what a killed earlier download of the
    same local target left). No credentials are sent. Failures that another try cannot fix (not an
    image, too large, a refused host, a CDN 4xx) raise a non-retryable :class:`FireRedDownloadError`.

    :param session: a session from :func:`new_media_session` (it carries no credentials).
    :param settings: the gateway settings (size limit, timeout, retry policy, media host policy).
    :param url: the media URL (CDN).
    :param destination: the target file: a local path, an ``ObjectStoragePath`` or a URL such as
        ``s3://bucket/key.png``.
    :param max_bytes: the largest accepted body; defaults to the connection's ``max_download_bytes``.
    :param suffix_from_content: replace the destination's extension by the one of the image found in
        the body (``.png``, ``.jpg``, ``.webp`` or ``.gif``).
    :return: the destination written, as a string.
    """
    if not isinstance(url, str) or urlsplit(url).scheme.lower() not in ("http", "https"):
        raise FireRedValidationError("url", f"must be an http(s) URL, got {url!r}")
    limit = max_bytes or settings.max_download_bytes
    policy = MediaHostPolicy.for_settings(settings)
    retrying = settings.retry.retrying()

    def fetch(part: Path) -> str:
        return str(retrying(_fetch_to_file, session, url, part, limit, settings.request_timeout, policy))

    target = as_target(destination)
    if isinstance(target, Path):
        written = _download_local(fetch, target, suffix_from_content)
    else:
        written = _download_remote(fetch, target, suffix_from_content)
    log.info("Downloaded %s to %s", url, written)
    return written


def _download_local(fetch: Callable[[Path], str], target: Path, suffix_from_content: bool) -> str:
    # A temp file beside the target, then an atomic rename: readers never see a partial file.
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        suffix = fetch(Path(tmp_name))
        final = target.with_suffix(suffix) if suffix_from_content else target
        os.replace(tmp_name, final)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    # A try killed mid-download (a lost worker) cannot clean up after itself: its partial
    # file for this target is stale once the target is complete.
    for name in {target.name, final.name}:
        for stale in target.parent.glob(f".{glob.escape(name)}.*.part"):
            stale.unlink(missing_ok=True)
    return str(final)


def _download_remote(
    fetch: Callable[[Path], str], target: ObjectStoragePath, suffix_from_content: bool
) -> str:
    with tempfile.TemporaryDirectory(prefix="firered-") as tmp:
        part = Path(tmp) / "download.part"
        suffix = fetch(part)
        final = target.with_suffix(suffix) if suffix_from_content else target
        # Object stores publish an object only once its upload completes.
        with contextlib.suppress(OSError, NotImplementedError):
            final.parent.mkdir(parents=True, exist_ok=True)  # needed for file://, a no-op on buckets
        with part.open("rb") as src, final.open("wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
    return str(final)


def _fetch_to_file(
    session: requests.Session, url: str, part: Path, limit: int, timeout: float, policy: MediaHostPolicy
) -> str:
    """One try: follow checked redirects, save the body to ``part``; return the image's extension."""
    with _exchange(policy, timeout) as exchange:
        try:
            return _follow(session, url, part, limit, exchange)
        except _HostRefused as err:
            raise FireRedDownloadError(url, str(err)) from None
        except requests.RequestException as err:
            if exchange.expired:
                raise _too_slow(url, exchange) from None
            if isinstance(err, requests.exceptions.ChunkedEncodingError):
                raise FireRedDownloadError(url, "truncated: the body ended early", retryable=True) from None
            reason = f"transfer failed ({type(err).__name__})"
            raise FireRedDownloadError(url, reason, retryable=True) from None


def _too_slow(url: str, exchange: _Exchange) -> FireRedDownloadError:
    reason = f"took longer than the {exchange.timeout:g}s request_timeout of the connection"
    return FireRedDownloadError(url, reason, retryable=True)


def _follow(session: requests.Session, url: str, part: Path, limit: int, exchange: _Exchange) -> str:
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        if exchange.remaining() <= 0:
            raise _too_slow(url, exchange)
        response = session.get(current, stream=True, timeout=exchange.remaining(), allow_redirects=False)
        try:
            if not response.is_redirect:
                return _save(response, url, part, limit, exchange)
            current = _redirect_target(url, current, response.headers["Location"])
        finally:
            response.raw.close()  # never back to the pool: every exchange opens a checked, watched socket
            response.close()
    raise FireRedDownloadError(url, f"more than {MAX_REDIRECTS} redirects")


def _redirect_target(url: str, current: str, location: str) -> str:
    target = urljoin(current, location)
    scheme = urlsplit(target).scheme.lower()
    if scheme not in ("http", "https") or not urlsplit(target).hostname:
        raise FireRedDownloadError(url, f"redirected to a non-http(s) URL {target!r}")
    if urlsplit(current).scheme.lower() == "https" and scheme == "http":
        raise FireRedDownloadError(url, "redirected from https to plain http")
    log.info("Media URL redirected to %s", urlsplit(target).hostname)
    return target


def _save(response: requests.Response, url: str, part: Path, limit: int, exchange: _Exchange) -> str:
    status = response.status_code
    if status >= 300:
        retryable = status >= 500 or status in _RETRYABLE_CDN_STATUSES
        raise FireRedDownloadError(url, f"HTTP {status}", retryable=retryable)
    check_media_type(url, response.headers.get("Content-Type"))
    expected = _content_length(response.headers)
    if expected is not None and expected > limit:
        raise FireRedDownloadError(url, f"{expected} bytes exceeds the {limit}-byte limit")
    size = 0
    head = b""
    suffix: str | None = None
    with part.open("wb") as out:
        # Decoded bytes count against the limit (what lands on disk); the announced length is
        # compared with the bytes on the wire, so a CDN that compresses anyway is still read right.
        for chunk in response.iter_content(_CHUNK):
            if exchange.remaining() < 0:
                raise _too_slow(url, exchange)
            size += len(chunk)
            if size > limit:
                raise FireRedDownloadError(url, f"body exceeds the {limit}-byte limit")
            if suffix is None and len(head) < _SIGNATURE_BYTES:
                head += chunk[: _SIGNATURE_BYTES - len(head)]
                if len(head) >= _SIGNATURE_BYTES:
                    suffix = _image_suffix(url, head)
            out.write(chunk)
    if exchange.expired:  # the watchdog shut the socket: what looked like the end was the deadline
        raise _too_slow(url, exchange)
    received = response.raw.tell()
    if expected is not None and received != expected:
        raise FireRedDownloadError(url, f"truncated: got {received} of {expected} bytes", retryable=True)
    return suffix or _image_suffix(url, head)


#: Image signatures: the first bytes of every format an output file may have.
_SIGNATURE_BYTES = 12


def image_suffix(head: bytes) -> str | None:
    """The extension of the image whose first bytes are ``head``, or ``None`` if it is none we save."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    return None


def _image_suffix(url: str, head: bytes) -> str:
    suffix = image_suffix(head)
    if suffix is None:
        raise FireRedDownloadError(url, "the body is not a PNG, JPEG, WebP or GIF image")
    return suffix


def _content_length(headers: Mapping[str, str]) -> int | None:
    try:
        return int(headers["Content-Length"])
    except (KeyError, ValueError):
        return None


# -- targets ---------------------------------------------------------------------------------------


def as_target(
    destination: str | os.PathLike[str] | ObjectStoragePath, *, field_name: str = "destination"
) -> Path | ObjectStoragePath:
    """
    A local ``Path`` for plain paths and ``file://`` URLs, an ``ObjectStoragePath`` for other URLs.

    ``file:///x`` and ``file://localhost/x`` are the local path ``/x``; a ``file://`` URL naming
    another host is refused.

    :param destination: a path, a URL or an ``ObjectStoragePath``.
    :param field_name: the name used in errors.
    """
    if isinstance(destination, ObjectStoragePath):
        return destination
    text = os.fspath(destination)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc.lower() not in ("", "localhost"):
            raise FireRedValidationError(
                field_name, f"a file:// URL must name no host or localhost, got {parts.netloc!r}"
            )
        return Path(unquote(parts.path))
    if "://" in text and scheme:
        return ObjectStoragePath(text)
    return Path(text)


def output_name(request_id: str, index: int, media_type: str | None) -> str:
    """
    ``<request_id>_<index><ext>``: the request id checked to be a plain gateway id, the extension
    from :data:`EXTENSIONS` by media type, else ``.bin``. Nothing comes from the media URL.

    :param request_id: the id that was asked for.
    :param index: the output's position among the media URLs.
    :param media_type: the answer's ``media_type``.
    """
    status_path(request_id)  # raises unless the id is letters, digits and '._:-', starting alphanumeric
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise FireRedValidationError("index", f"must be a non-negative integer, got {index!r}")
    kind = (media_type or "").split(";")[0].strip().lower()
    return f"{request_id}_{index}{EXTENSIONS.get(kind, '.bin')}"


def check_inside(
    target: Path | ObjectStoragePath, base: Path | ObjectStoragePath, *, field_name: str = "output_dir"
) -> None:
    """
    Refuse ``target`` unless it lies inside ``base``, both resolved (symlinks, ``..``).

    :raises FireRedValidationError: naming ``field_name``.
    """
    if isinstance(target, Path) and isinstance(base, Path):
        inside = Path(os.path.realpath(target)).is_relative_to(os.path.realpath(base))
    elif isinstance(target, ObjectStoragePath) and isinstance(base, ObjectStoragePath):
        root = posixpath.normpath("/" + base.path)
        path = posixpath.normpath("/" + target.path)
        inside = target.protocol == base.protocol and path.startswith(root.rstrip("/") + "/")
    else:
        inside = False
    if not inside:
        raise FireRedValidationError(field_name, f"refusing to write {target}: it is not inside {base}")


def download_outputs(
    hook: FireRedHook,
    result: dict[str, Any],
    output_dir: str | os.PathLike[str] | ObjectStoragePath | None,
    *,
    max_outputs: int | None = MAX_NUM_IMAGES,
) -> list[str]:
    """
    Download every media URL of a completed job into ``output_dir`` (local path or object storage URL).

    Files are named ``<request_id>_<index><ext>``, the extension that of the image found in the body,
    and each is checked to lie inside ``output_dir`` before anything is written.

    :param hook: the hook whose media session and connection settings are used.
    :param result: the job's result (``request_id``, ``media_urls``, ``media_type``).
    :param output_dir: where to save; nothing is downloaded without it.
    :param max_outputs: the most media URLs the edit asked for (see
        :func:`airflow_provider_firered.options.expected_outputs`); an answer listing more is a bad
        answer, refused whether or not anything is downloaded. ``None`` for no bound.
    :return: the paths written, in media order.
    """
    request_id = result["request_id"]
    urls = list(result["media_urls"])
    if max_outputs is not None and len(urls) > max_outputs:
        raise FireRedResponseError(
            200,
            f"the completed job lists {len(urls)} media URLs, more than the {max_outputs} the edit asked for",
            request_id=request_id,
        )
    if not output_dir:
        return []
    base = as_target(output_dir, field_name="output_dir")
    paths = []
    for index, url in enumerate(urls):
        target = base / output_name(request_id, index, result.get("media_type"))
        check_inside(target, base)
        paths.append(hook.download(url, target, suffix_from_content=True))
    return paths
