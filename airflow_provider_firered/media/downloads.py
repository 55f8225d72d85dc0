"""
Download media to local paths and object storage, atomically, checked so a hostile CDN stays harmless.

Connections go only to hosts the connection allows (see :mod:`airflow_provider_firered.media.hosts`),
within a wall-clock limit per try. A body is saved only when its first bytes are a PNG, JPEG, WebP or
GIF image, and only once complete: a failed download leaves no partial file behind.
"""

from __future__ import annotations

import glob
import logging
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urljoin

import requests

from airflow_provider_firered.exceptions import (
    FireRedDownloadError,
    FireRedResponseError,
    FireRedValidationError,
)
from airflow_provider_firered.gateway.options import MAX_NUM_IMAGES
from airflow_provider_firered.gateway.results import check_media_type, content_length
from airflow_provider_firered.media.hosts import HostRefused, MediaExchange, MediaHostPolicy, media_exchange
from airflow_provider_firered.media.output_paths import as_target, check_inside, output_name
from airflow_provider_firered.utils import metrics
from airflow_provider_firered.utils.atomic_files import local_part, upload_whole
from airflow_provider_firered.utils.metrics import Metric
from airflow_provider_firered.utils.urls import http_url_parts, is_http_url

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Mapping

    from airflow.providers.common.compat.sdk import ObjectStoragePath

    from airflow_provider_firered.gateway.connection import GatewaySettings

__all__ = ["MAX_REDIRECTS", "download", "download_outputs", "image_suffix"]

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
#: Redirects followed per download, each target checked like the first URL.
MAX_REDIRECTS = 5
#: CDN statuses worth another try besides 5xx: a timeout and rate limiting.
_RETRYABLE_CDN_STATUSES = frozenset({408, 429})


# -- downloading ---------------------------------------------------------------------------------


def download(
    session: requests.Session,
    settings: GatewaySettings,
    url: str,
    destination: str | os.PathLike[str] | ObjectStoragePath,
    *,
    max_bytes: int | None = None,
    suffix_from_content: bool = False,
    log_level: int = logging.INFO,
) -> str:
    """
    Download a media URL to a local path or an ``ObjectStoragePath``, atomically.

    The body is streamed to a temporary file (checked against ``max_bytes``, the announced length, the
    media type and the image signature of its first bytes, within the connection's ``request_timeout``
    of wall-clock time) and only then moved, or uploaded, to ``destination``, so a failed download never
    leaves a partial file behind (and a completed one removes what a killed earlier download of the
    same local target left). No credentials are sent. Failures that another try cannot fix (not an
    image, too large, a refused host, a CDN 4xx) raise a non-retryable :class:`FireRedDownloadError`.

    :param session: a session from :func:`~airflow_provider_firered.media.hosts.new_media_session`
        (it carries no credentials).
    :param settings: the gateway settings (size limit, timeout, retry policy, media host policy).
    :param url: the media URL (CDN).
    :param destination: the target file: a local path, an ``ObjectStoragePath`` or a URL such as
        ``s3://bucket/key.png``.
    :param max_bytes: the largest accepted body; defaults to the connection's ``max_download_bytes``.
    :param suffix_from_content: replace the destination's extension by the one of the image found in
        the body (``.png``, ``.jpg``, ``.webp`` or ``.gif``).
    :param log_level: the level of the "Downloaded" line.
    :return: the destination written, as a string.
    """
    if not is_http_url(url):
        raise FireRedValidationError("url", f"must be an http(s) URL, got {url!r}")
    limit = max_bytes or settings.max_download_bytes
    policy = MediaHostPolicy.for_settings(settings)

    def fetch(part: IO[bytes]) -> str:
        return settings.retry.call(
            _fetch_to_file, session, url, part, limit, settings.request_timeout, policy
        )

    target = as_target(destination)
    if isinstance(target, Path):
        written = _download_local(fetch, target, suffix_from_content)
    else:
        written = _download_remote(fetch, target, suffix_from_content)
    log.log(log_level, "Downloaded %s to %s", url, written)
    return written


def _download_local(fetch: Callable[[IO[bytes]], str], target: Path, suffix_from_content: bool) -> str:
    # A fresh temp file beside the target, then an atomic rename: readers never see a partial file,
    # and a link planted at either name is never written through.
    with local_part(target) as part:
        suffix = fetch(part.file)
        final = target.with_suffix(suffix) if suffix_from_content else target
        part.target = final
    # A try killed mid-download (a lost worker) cannot clean up after itself: its partial
    # file for this target is stale once the target is complete.
    for name in {target.name, final.name}:
        for stale in target.parent.glob(f".{glob.escape(name)}.*.part"):
            stale.unlink(missing_ok=True)
    return str(final)


def _download_remote(
    fetch: Callable[[IO[bytes]], str], target: ObjectStoragePath, suffix_from_content: bool
) -> str:
    # The body waits in an anonymous local file until it is checked whole (its name comes from it),
    # then goes up in one upload.
    with tempfile.TemporaryFile(prefix="firered-") as part:
        suffix = fetch(part)
        final = target.with_suffix(suffix) if suffix_from_content else target
        upload_whole(final, part)
    return str(final)


def _fetch_to_file(
    session: requests.Session, url: str, part: IO[bytes], limit: int, timeout: float, policy: MediaHostPolicy
) -> str:
    """One try: follow checked redirects, save the body to ``part``; return the image's extension."""
    part.seek(0)
    part.truncate()  # what an earlier try wrote
    with media_exchange(policy, timeout) as exchange:
        try:
            return _follow(session, url, part, limit, exchange)
        except HostRefused as err:
            raise FireRedDownloadError(url, str(err)) from None
        except requests.RequestException as err:
            if exchange.expired:
                raise _too_slow(url, exchange) from None
            if isinstance(err, requests.exceptions.ChunkedEncodingError):
                raise FireRedDownloadError(url, "truncated: the body ended early", retryable=True) from None
            reason = f"transfer failed ({type(err).__name__})"
            raise FireRedDownloadError(url, reason, retryable=True) from None


def _too_slow(url: str, exchange: MediaExchange) -> FireRedDownloadError:
    reason = f"took longer than the {exchange.timeout:g}s request_timeout of the connection"
    return FireRedDownloadError(url, reason, retryable=True)


def _follow(session: requests.Session, url: str, part: IO[bytes], limit: int, exchange: MediaExchange) -> str:
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        if exchange.remaining() <= 0:
            raise _too_slow(url, exchange)
        response = session.get(current, stream=True, timeout=exchange.remaining(), allow_redirects=False)
        try:
            if not response.is_redirect:
                return _save(response, url, part, limit, exchange)
            current = redirect_target(url, current, response.headers["Location"])
        finally:
            response.raw.close()  # never back to the pool: every exchange opens a checked, watched socket
            response.close()
    raise FireRedDownloadError(url, f"more than {MAX_REDIRECTS} redirects")


def redirect_target(url: str, current: str, location: str) -> str:
    """
    Return where a redirect points, if it may be followed: an http(s) URL, never from https to http.

    :param url: the media URL first asked for (for messages).
    :param current: the URL that answered with the redirect.
    :param location: the answer's ``Location``.
    """
    target = urljoin(current, location)
    parts = http_url_parts(target)
    if parts is None:
        raise FireRedDownloadError(url, f"redirected to a non-http(s) URL {target!r}")
    if current.lower().startswith("https:") and parts.scheme == "http":
        raise FireRedDownloadError(url, "redirected from https to plain http")
    log.info("Media URL redirected to %s", parts.hostname)
    return target


def _save(response: requests.Response, url: str, out: IO[bytes], limit: int, exchange: MediaExchange) -> str:
    status = response.status_code
    if status >= 300:
        retryable = status >= 500 or status in _RETRYABLE_CDN_STATUSES
        raise FireRedDownloadError(url, f"HTTP {status}", retryable=retryable)
    check_media_type(url, response.headers.get("Content-Type"))
    expected = content_length(response.headers)
    if expected is not None and expected > limit:
        raise FireRedDownloadError(url, f"{expected} bytes exceeds the {limit}-byte limit")
    size = 0
    head = b""
    suffix: str | None = None
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
    suffix = suffix or _image_suffix(url, head)
    metrics.count(Metric.DOWNLOAD_BYTES, size)  # a whole image: a try cut short counts nothing
    return suffix


#: Image signatures: the first bytes of every format an output file may have.
_SIGNATURE_BYTES = 12


def image_suffix(head: bytes) -> str | None:
    """Return the extension of the image whose first bytes are ``head``, or ``None`` if it is none we save."""
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


def download_outputs(
    session: requests.Session,
    settings: GatewaySettings,
    result: Mapping[str, Any],
    output_dir: str | os.PathLike[str] | ObjectStoragePath | None,
    *,
    max_outputs: int | None = MAX_NUM_IMAGES,
    log_level: int = logging.INFO,
) -> list[str]:
    """
    Download every media URL of a completed job into ``output_dir`` (local path or object storage URL).

    Files are named ``<request_id>_<index><ext>``, the extension that of the image found in the body,
    and each is checked to lie inside ``output_dir`` before anything is written.

    :param session: a session from :func:`~airflow_provider_firered.media.hosts.new_media_session`,
        used by one thread at a time.
    :param settings: the gateway settings (size limit, timeout, retry policy, media host policy).
    :param result: the job's result (``request_id``, ``media_urls``, ``media_type``).
    :param output_dir: where to save; nothing is downloaded without it.
    :param max_outputs: the most media URLs the edit asked for (see
        :func:`airflow_provider_firered.gateway.options.expected_outputs`); an answer listing more is a bad
        answer, refused whether or not anything is downloaded. ``None`` for no bound.
    :param log_level: the level of the "Downloaded" lines.
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
        paths.append(download(session, settings, url, target, suffix_from_content=True, log_level=log_level))
    return paths
