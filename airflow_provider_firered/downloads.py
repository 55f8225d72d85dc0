"""Media downloads: output names, atomic writes to local paths and object storage, size and type checks."""

from __future__ import annotations

import contextlib
import glob
import logging
import mimetypes
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from airflow.providers.common.compat.sdk import ObjectStoragePath

from airflow_provider_firered.exceptions import FireRedDownloadError, FireRedValidationError
from airflow_provider_firered.responses import check_media_type

if TYPE_CHECKING:
    from airflow_provider_firered.connection import GatewaySettings
    from airflow_provider_firered.hooks.firered import FireRedHook

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}


def new_media_session() -> requests.Session:
    """A session for CDN downloads: it carries no key."""
    return requests.Session()


def download(
    session: requests.Session,
    settings: GatewaySettings,
    url: str,
    destination: str | os.PathLike[str] | ObjectStoragePath,
    *,
    max_bytes: int | None = None,
) -> str:
    """
    Download a media URL to a local path or an ``ObjectStoragePath``, atomically.

    The body is streamed to a temporary file (checked against ``max_bytes``, the announced
    length and the media type) and only then moved, or uploaded, to ``destination``, so a
    failed download never leaves a partial file behind (and a completed one removes what a
    killed earlier download of the same local target left). No credentials are sent.

    :param session: the pooled session to use (it carries no credentials).
    :param settings: the gateway settings (size limit, timeout, retry policy).
    :param url: the media URL (CDN).
    :param destination: the target file: a local path, an ``ObjectStoragePath`` or a URL such as
        ``s3://bucket/key.png``.
    :param max_bytes: the largest accepted body; defaults to the connection's ``max_download_bytes``.
    :return: the destination, as a string.
    """
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        raise FireRedValidationError("url", f"must be an http(s) URL, got {url!r}")
    limit = max_bytes or settings.max_download_bytes
    target = as_target(destination)
    fetch = settings.retry.retrying()
    if isinstance(target, Path):
        # A temp file beside the target, then an atomic rename: readers never see a partial file.
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        os.close(fd)
        try:
            fetch(_fetch_to_file, session, url, Path(tmp_name), limit, settings.request_timeout)
            os.replace(tmp_name, target)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
        # A try killed mid-download (a lost worker) cannot clean up after itself: its partial
        # file for this target is stale once the target is complete.
        for stale in target.parent.glob(f".{glob.escape(target.name)}.*.part"):
            stale.unlink(missing_ok=True)
    else:
        with tempfile.TemporaryDirectory(prefix="firered-") as tmp:
            part = Path(tmp) / "download.part"
            fetch(_fetch_to_file, session, url, part, limit, settings.request_timeout)
            # Object stores publish an object only once its upload completes.
            with contextlib.suppress(OSError, NotImplementedError):
                target.parent.mkdir(parents=True, exist_ok=True)  # needed for file://, a no-op on buckets
            with part.open("rb") as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
    log.info("Downloaded %s to %s", url, target)
    return str(target)


def _fetch_to_file(session: requests.Session, url: str, part: Path, limit: int, timeout: float) -> None:
    try:
        # No headers: the key is never sent to media URLs, and the session holds none.
        with session.get(url, stream=True, timeout=timeout) as response:
            if response.status_code >= 400:
                raise FireRedDownloadError(
                    url, f"HTTP {response.status_code}", retryable=response.status_code >= 500
                )
            check_media_type(url, response.headers.get("Content-Type"))
            expected = _content_length(response.headers)
            if expected is not None and expected > limit:
                raise FireRedDownloadError(url, f"{expected} bytes exceeds the {limit}-byte limit")
            size = 0
            with part.open("wb") as out:
                for chunk in response.iter_content(_CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise FireRedDownloadError(url, f"body exceeds the {limit}-byte limit")
                    out.write(chunk)
    except requests.exceptions.ChunkedEncodingError:
        raise FireRedDownloadError(url, "truncated: the body ended early", retryable=True) from None
    except requests.RequestException as err:
        raise FireRedDownloadError(url, f"transfer failed ({type(err).__name__})", retryable=True) from None
    if expected is not None and size != expected:
        raise FireRedDownloadError(url, f"truncated: got {size} of {expected} bytes", retryable=True)


def _content_length(headers: Mapping[str, str]) -> int | None:
    try:
        return int(headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def as_target(destination: str | os.PathLike[str] | ObjectStoragePath) -> Path | ObjectStoragePath:
    """A local ``Path`` for plain paths and ``file://`` URLs, an ``ObjectStoragePath`` for other URLs."""
    if isinstance(destination, ObjectStoragePath):
        return destination
    text = os.fspath(destination)
    scheme = urlsplit(text).scheme
    if "://" in text and scheme not in ("", "file"):
        return ObjectStoragePath(text)
    return Path(text.removeprefix("file://"))


def output_name(request_id: str, index: int, media_type: str | None, url: str) -> str:
    """``<request_id>_<index><ext>``, the extension taken from the media type, else from the URL."""
    ext = _EXTENSIONS.get((media_type or "").lower()) or PurePosixPath(urlsplit(url).path).suffix
    if not ext and media_type:
        ext = mimetypes.guess_extension(media_type) or ""
    return f"{request_id}_{index}{ext or '.bin'}"


def download_outputs(
    hook: FireRedHook, result: dict[str, Any], output_dir: str | os.PathLike[str] | None
) -> list[str]:
    """
    Download every media URL of a completed job into ``output_dir`` (local path or object storage URL).

    :return: the paths written, in media order.
    """
    if not output_dir:
        return []
    base = as_target(output_dir)
    return [
        hook.download(url, base / output_name(result["request_id"], index, result.get("media_type"), url))
        for index, url in enumerate(result["media_urls"])
    ]
