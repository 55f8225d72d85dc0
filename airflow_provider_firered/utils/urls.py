"""
Decide whether a text is a plain http(s) URL: the one check for every URL a user or the network gives.

A plain URL has an ``http`` or ``https`` scheme, a host, a valid port, no whitespace or control
character and a bounded length; the callers add their own rules (credentials, https only).
"""

from __future__ import annotations

from typing import Any, TypeGuard
from urllib.parse import SplitResult, urlsplit

#: Longer URLs are refused: no real media or gateway URL comes near it.
MAX_URL_LENGTH = 4096
HTTP_SCHEMES = ("http", "https")


def http_url_parts(url: Any, schemes: tuple[str, ...] = HTTP_SCHEMES) -> SplitResult | None:
    """
    Return the parts of ``url`` if it is a plain URL with one of ``schemes`` and a host, else ``None``.

    :param url: the value to check, of any type.
    :param schemes: the schemes accepted, lower case.
    """
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH or has_space_or_control(url):
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError:
        return None
    if parts.scheme.lower() not in schemes or not parts.hostname:
        return None
    return parts


def is_http_url(url: Any) -> TypeGuard[str]:
    """
    Return whether ``url`` is a plain http(s) URL with a host.

    :param url: the value to check, of any type.
    """
    return http_url_parts(url) is not None


def has_space_or_control(text: str) -> bool:
    """
    Return whether ``text`` holds whitespace or a control character.

    :param text: the text to check.
    """
    return any(ord(c) <= 0x20 or ord(c) == 0x7F or c.isspace() for c in text)


def url_scheme(text: str) -> str | None:
    """
    Return the scheme of ``text`` written as a URL (``scheme://...``), or ``None`` for a path.

    :param text: a path or a URL, such as ``/data/x``, ``file:///data/x`` or ``s3://bucket/x``.
    """
    return urlsplit(text).scheme if "://" in text else None
