"""The gateway settings: what every call needs from the ``firered`` connection, resolved once."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp
from airflow.providers.common.compat.sdk import mask_secret

from airflow_provider_firered.exceptions import FireRedValidationError
from airflow_provider_firered.gateway.connection_extras import (
    DEFAULT_GATEWAY,
    DEFAULT_MAX_DOWNLOAD_BYTES,
    DEFAULT_REQUEST_TIMEOUT,
    MAX_HOST_CHARS,
    clip,
    parse_extras,
    retry_policy,
)
from airflow_provider_firered.utils.retry import RetryPolicy
from airflow_provider_firered.utils.urls import http_url_parts

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airflow.sdk import Connection

__all__ = [
    "CONN_TYPE",
    "DEFAULT_GATEWAY",
    "DEFAULT_MAX_DOWNLOAD_BYTES",
    "DEFAULT_REQUEST_TIMEOUT",
    "KEY_HEADER",
    "GatewaySettings",
    "is_loopback_host",
    "url_host",
    "url_origin",
]

log = logging.getLogger(__name__)

KEY_HEADER = "Ocp-Apim-Subscription-Key"
#: The only connection type the hook reads.
CONN_TYPE = "firered"
#: The longest gateway URL accepted in the connection's host field.
MAX_GATEWAY_URL_CHARS = 2048


@dataclass(frozen=True)
class GatewaySettings:
    """
    Everything a call needs from the connection, resolved once per hook.

    :param base_url: the gateway root, without a trailing slash.
    :param api_key: the subscription key (never shown in repr).
    :param retry: the retry policy.
    :param request_timeout: seconds allowed for one HTTP exchange.
    :param max_download_bytes: the largest media file accepted.
    :param allow_private_media_hosts: download media from loopback, private, link-local or metadata
        addresses too (off by default; a gateway on such an address allows it for itself).
    :param resend_submit_on_5xx: send a submit again after a 5xx/408 answer, at the risk of paying
        twice (off by default: only a 429 or a connection that never opened is sent again).
    :param allow_http_host: the one non-loopback gateway host allowed over plain http, if any.
    """

    base_url: str
    api_key: str = field(repr=False)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    allow_private_media_hosts: bool = False
    resend_submit_on_5xx: bool = False
    allow_http_host: str | None = None

    @property
    def origin(self) -> tuple[str, str, int | None]:
        """Scheme, host and port of the gateway: the only origin the key is sent to."""
        return url_origin(self.base_url)

    def is_gateway_url(self, url: str) -> bool:
        """Return whether ``url`` is on the gateway's own origin."""
        return url_origin(url) == self.origin

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Return the documented request headers, key included: for gateway URLs only."""
        return {**self.base_headers, **(extra or {})}

    @cached_property
    def base_headers(self) -> Mapping[str, str]:
        """The documented request headers, built once (a triggerer sends them with every poll)."""
        return MappingProxyType(
            {"Content-Type": "application/json", "Cache-Control": "no-cache", KEY_HEADER: self.api_key}
        )

    @cached_property
    def client_timeout(self) -> aiohttp.ClientTimeout:
        """The aiohttp timeout of one status read."""
        return aiohttp.ClientTimeout(total=self.request_timeout)

    @classmethod
    def from_connection(cls, conn: Connection) -> GatewaySettings:
        """
        Read the gateway root, the key and the extras from an Airflow connection.

        Every check runs here, before anything is sent: the connection type, the key, the extras (a
        blank form field means its default) and the gateway's scheme.

        :param conn: a connection of type ``firered``.
        :raises FireRedValidationError: naming the field and what it allows (never showing the key).
        """
        _check_type(conn)
        api_key = _api_key(conn)
        extras = parse_extras(conn.extra_dejson)
        base_url = _gateway_root(conn.host, conn.schema, conn.port)
        _check_transport(base_url, extras["allow_http_host"])
        return cls(
            base_url=base_url,
            api_key=api_key,
            retry=retry_policy(extras),
            request_timeout=extras["request_timeout"],
            max_download_bytes=extras["max_download_bytes"],
            allow_private_media_hosts=extras["allow_private_media_hosts"],
            resend_submit_on_5xx=extras["resend_submit_on_5xx"],
            allow_http_host=extras["allow_http_host"],
        )


def _check_type(conn: Connection) -> None:
    if conn.conn_type != CONN_TYPE:
        raise FireRedValidationError(
            f"connection {conn.conn_id!r} type",
            f"must be {CONN_TYPE!r} (FireRed Image Edit), got {clip(conn.conn_type)}: "
            f"the hook sends its password as the FireRed key only from a {CONN_TYPE!r} connection",
        )


def _api_key(conn: Connection) -> str:
    """Return the key without surrounding whitespace; refuse one with a control or non-ASCII character."""
    raw = conn.password or ""
    key = raw.strip()
    field_name = f"connection {conn.conn_id!r} password"
    if not key:
        raise FireRedValidationError(field_name, "must hold the FireRed API key; it is empty")
    mask_secret(key)
    if not all("!" <= char <= "~" for char in key):
        # The key itself is never quoted: only what kind of character is wrong.
        raise FireRedValidationError(
            field_name,
            "must be the FireRed API key in printable ASCII without spaces; it contains a space, a "
            "control or a non-ASCII character (check what was pasted)",
        )
    return key


def _check_transport(base_url: str, allow_http_host: str | None) -> None:
    """Https for every gateway but loopback, unless the connection names the one http host it allows."""
    scheme, host, _ = url_origin(base_url)
    if scheme == "https" or is_loopback_host(host):
        return
    if allow_http_host is not None and host == allow_http_host:
        log.warning(
            "The FireRed gateway %s is reached over plain http (allowed by the connection extra "
            "allow_http_host): the API key travels in clear text and answers can be forged.",
            host,
        )
        return
    raise FireRedValidationError(
        "connection host",
        f"must be an https:// gateway URL for {clip(host)}: plain http sends the key in clear text. Only "
        "loopback (127.0.0.0/8, ::1, localhost) may use http, or the host named in the connection extra "
        "allow_http_host",
    )


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    host = host.lower().rstrip(".").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _gateway_root(host: str | None, schema: str | None, port: int | None) -> str:
    host = (host or "").strip() or DEFAULT_GATEWAY
    if len(host) > MAX_GATEWAY_URL_CHARS:
        raise FireRedValidationError(
            "connection host",
            f"must be an http(s) gateway URL of at most {MAX_GATEWAY_URL_CHARS} characters, got {len(host)}",
        )
    url = host if "://" in host else f"{schema or 'https'}://{host}"
    parts = http_url_parts(url)
    if parts is None or not parts.hostname:
        raise FireRedValidationError("connection host", f"must be an http(s) gateway URL, got {clip(host)}")
    if len(parts.hostname) > MAX_HOST_CHARS:
        raise FireRedValidationError(
            "connection host",
            f"must name a host of at most {MAX_HOST_CHARS} characters, got {clip(parts.hostname)}",
        )
    if parts.username or parts.password:
        raise FireRedValidationError("connection host", "must not embed credentials; put the key in password")
    netloc = parts.netloc
    if port and parts.port is None:
        netloc = f"{netloc}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path}".rstrip("/")


def url_origin(url: str) -> tuple[str, str, int | None]:
    """
    Return the origin of ``url``: its scheme, host and port (the scheme's default when not given).

    :param url: an http(s) URL.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


def url_host(url: str) -> str:
    """
    Return the host of ``url`` for messages: never the full URL, which may carry credentials.

    :param url: a URL.
    """
    return urlsplit(url).hostname or "unknown host"
