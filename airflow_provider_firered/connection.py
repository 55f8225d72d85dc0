"""The gateway settings: what every call needs from the ``firered`` connection, resolved once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from airflow.providers.common.compat.sdk import mask_secret

from airflow_provider_firered.exceptions import FireRedValidationError
from airflow_provider_firered.retry import RetryPolicy

if TYPE_CHECKING:
    from airflow.sdk import Connection

DEFAULT_GATEWAY = "https://gateway.pixazo.ai"
KEY_HEADER = "Ocp-Apim-Subscription-Key"
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024


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
    """

    base_url: str
    api_key: str = field(repr=False)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    allow_private_media_hosts: bool = False
    resend_submit_on_5xx: bool = False

    @property
    def origin(self) -> tuple[str, str, int | None]:
        """Scheme, host and port of the gateway: the only origin the key is sent to."""
        return url_origin(self.base_url)

    def is_gateway_url(self, url: str) -> bool:
        """Whether ``url`` is on the gateway's own origin."""
        return url_origin(url) == self.origin

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The documented request headers, key included: for gateway URLs only."""
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
        """Read the gateway root, the key and the tuning extras from an Airflow connection."""
        base_url = _gateway_root(conn.host, conn.schema, conn.port)
        if not conn.password:
            raise FireRedValidationError(
                f"connection {conn.conn_id!r} password", "must hold the FireRed API key; it is empty"
            )
        mask_secret(conn.password)
        extras = conn.extra_dejson or {}
        return cls(
            base_url=base_url,
            api_key=conn.password,
            retry=RetryPolicy.from_extras(extras),
            request_timeout=_positive(extras, "request_timeout", DEFAULT_REQUEST_TIMEOUT),
            max_download_bytes=int(_positive(extras, "max_download_bytes", DEFAULT_MAX_DOWNLOAD_BYTES)),
            allow_private_media_hosts=extras.get("allow_private_media_hosts") in (True, "true", "True"),
            resend_submit_on_5xx=extras.get("resend_submit_on_5xx") in (True, "true", "True"),
        )


def _gateway_root(host: str | None, schema: str | None, port: int | None) -> str:
    host = (host or "").strip() or DEFAULT_GATEWAY
    url = host if "://" in host else f"{schema or 'https'}://{host}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FireRedValidationError("connection host", f"must be an http(s) gateway URL, got {host!r}")
    if parts.username or parts.password:
        raise FireRedValidationError("connection host", "must not embed credentials; put the key in password")
    netloc = parts.netloc
    if port and parts.port is None:
        netloc = f"{netloc}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path}".rstrip("/")


def url_origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


def url_host(url: str) -> str:
    return urlsplit(url).hostname or "unknown host"


def _positive(extras: Mapping[str, Any], key: str, default: float) -> float:
    value = extras.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FireRedValidationError(
            f"connection extra {key}", f"must be a positive number, got {value!r}"
        ) from None
    if number <= 0:
        raise FireRedValidationError(f"connection extra {key}", f"must be a positive number, got {value!r}")
    return number
