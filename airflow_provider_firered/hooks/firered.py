"""Hook for the FireRed Image Edit gateway: submit edits, read job status, download outputs."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import glob
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import aiohttp
import requests
from airflow.providers.common.compat.sdk import ObjectStoragePath, mask_secret
from airflow.providers.http.hooks.http import HttpHook
from requests_toolbelt.adapters.socket_options import TCPKeepAliveAdapter
from urllib3.exceptions import NewConnectionError

from airflow_provider_firered.exceptions import (
    FireRedApiError,
    FireRedConnectionError,
    FireRedDownloadError,
    FireRedError,
    FireRedResponseError,
    FireRedSubmitUncertainError,
    FireRedValidationError,
)
from airflow_provider_firered.hooks import loop_shared
from airflow_provider_firered.options import STATUS_PATH, validate_edit
from airflow_provider_firered.results import JobStatus, JobStatusResult, SubmitResult
from airflow_provider_firered.retry import RetryPolicy, parse_retry_after

if TYPE_CHECKING:
    from types import TracebackType

    from airflow.sdk import Connection

log = logging.getLogger(__name__)

DEFAULT_GATEWAY = "https://gateway.pixazo.ai"
KEY_HEADER = "Ocp-Apim-Subscription-Key"
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
#: Media types accepted from the CDN: images, and the generic type the reference shows.
DOWNLOAD_MEDIA_TYPES = ("image/", "application/octet-stream")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$")
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class GatewaySettings:
    """
    Everything a call needs from the connection, resolved once per hook.

    :param base_url: the gateway root, without a trailing slash.
    :param api_key: the subscription key (never shown in repr).
    :param retry: the retry policy.
    :param request_timeout: seconds allowed for one HTTP exchange.
    :param max_download_bytes: the largest media file accepted.
    """

    base_url: str
    api_key: str = field(repr=False)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES

    @property
    def origin(self) -> tuple[str, str, int | None]:
        """Scheme, host and port of the gateway: the only origin the key is sent to."""
        return _origin(self.base_url)

    def is_gateway_url(self, url: str) -> bool:
        """Whether ``url`` is on the gateway's own origin."""
        return _origin(url) == self.origin

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
        )


class FireRedHook(HttpHook):
    """
    Interact with the FireRed Image Edit gateway.

    The connection's ``host`` is the gateway root (``https://gateway.pixazo.ai`` when empty; a full
    ``http://127.0.0.1:PORT`` is accepted for a local emulator) and its ``password`` the subscription
    key. Optional extras: ``request_timeout`` (seconds), ``max_download_bytes``, and the retry
    settings ``retry_max_attempts``, ``retry_initial_wait``, ``retry_max_wait``, ``retry_multiplier``,
    ``retry_jitter``, ``retry_max_retry_after``, ``retry_max_elapsed``.

    The key is sent only to the gateway's own origin: never to image, media or redirect URLs, nor to
    a ``polling_url`` on another host. Use it as an async context manager in triggers: the hooks in
    one event loop then share one aiohttp session (kept-alive connections, no key on it), given back
    on exit.

    :param firered_conn_id: the :ref:`FireRed connection <howto/connection:firered>` id.
    :param retry_policy: overrides the retry policy read from the connection.
    """

    conn_name_attr = "firered_conn_id"
    default_conn_name = "firered_default"
    conn_type = "firered"
    hook_name = "FireRed Image Edit"
    default_host = DEFAULT_GATEWAY

    def __init__(
        self, firered_conn_id: str = default_conn_name, *, retry_policy: RetryPolicy | None = None
    ) -> None:
        # HttpHook would build a requests keep-alive adapter here; only the worker path needs one
        # (see _session), and a triggerer builds thousands of these hooks.
        super().__init__(method="GET", http_conn_id=firered_conn_id, tcp_keep_alive=False)
        self.firered_conn_id = firered_conn_id
        self._retry_override = retry_policy
        self._settings: GatewaySettings | None = None
        self._async_session: aiohttp.ClientSession | None = None
        self._shares_session = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(firered_conn_id={self.firered_conn_id!r})"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Connection form for Airflow 3.0/3.1 (3.2+ reads ``conn-fields`` from provider info)."""
        return {
            "hidden_fields": ["schema", "port", "login"],
            "relabeling": {"host": "Gateway URL", "password": "API key"},
            "placeholders": {
                "host": DEFAULT_GATEWAY,
                "password": "Ocp-Apim-Subscription-Key",
                "extra": '{"request_timeout": 30, "retry_max_attempts": 6}',
            },
        }

    # -- settings -------------------------------------------------------------------------------

    @property
    def settings(self) -> GatewaySettings:
        """The resolved connection (looked up once per hook)."""
        if self._settings is None:
            self._use_settings(GatewaySettings.from_connection(self.get_connection(self.firered_conn_id)))
        return self._settings  # type: ignore[return-value]

    async def aget_settings(self) -> GatewaySettings:
        """
        The resolved connection, looked up without blocking the event loop.

        Waits starting in the same loop within a minute reuse one lookup (see ``loop_shared``).
        """
        if self._settings is None:
            self._use_settings(await loop_shared.cached_settings(self.firered_conn_id, self._aresolve))
        return self._settings  # type: ignore[return-value]

    async def _aresolve(self) -> GatewaySettings:
        from asgiref.sync import sync_to_async

        conn = await self._aget_connection()
        # from_connection masks the key, and mask_secret talks to the triggerer's supervisor with a
        # blocking call that Airflow 3.0 refuses on the event loop's thread: run it in a worker thread.
        return await sync_to_async(GatewaySettings.from_connection)(conn)

    async def _aget_connection(self) -> Connection:
        aget = getattr(super(), "aget_connection", None)
        if aget is not None:  # Airflow 3.1+
            return await aget(self.firered_conn_id)
        from asgiref.sync import sync_to_async

        return await sync_to_async(self.get_connection)(self.firered_conn_id)

    def _use_settings(self, settings: GatewaySettings) -> None:
        if self._retry_override is not None:
            settings = GatewaySettings(
                base_url=settings.base_url,
                api_key=settings.api_key,
                retry=self._retry_override,
                request_timeout=settings.request_timeout,
                max_download_bytes=settings.max_download_bytes,
            )
        self._settings = settings
        self.base_url = settings.base_url
        self._base_url_initialized = True

    # -- sync (workers) ---------------------------------------------------------------------------

    @cached_property
    def _session(self) -> requests.Session:
        # One pooled session per hook; it carries no key: the key is added per gateway request.
        session = requests.Session()
        # HttpHook's default TCP keep-alive (idle 120 s, 20 probes, 30 s apart).
        adapter = TCPKeepAliveAdapter(idle=120, count=20, interval=30)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def get_conn(
        self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None
    ) -> requests.Session:
        """Return the hook's pooled ``requests`` session (no credentials are set on it)."""
        return self._session

    def submit_edit(
        self,
        model: str,
        prompt: str,
        images: Sequence[str],
        parameters: Mapping[str, Any] | None = None,
        *,
        webhook_url: str | None = None,
        webhook_mode: str | None = None,
    ) -> SubmitResult:
        """
        Validate and submit an edit; return the gateway's ``202`` answer.

        Bad input raises :class:`FireRedValidationError` before any request is made.

        :param model: ``firered-image-edit`` or ``firered-image-edit-v1-1``.
        :param prompt: the edit instruction.
        :param images: input image URLs (http or https).
        :param parameters: the model's documented options, by their API names.
        :param webhook_url: optional https URL the gateway calls back (``X-Webhook-URL``).
        :param webhook_mode: ``terminal`` (default at the gateway) or ``sync`` (``X-Webhook-Mode``).
        """
        request = validate_edit(
            model, prompt, images, parameters, webhook_url=webhook_url, webhook_mode=webhook_mode
        )
        settings = self.settings
        self.log.info(
            "Submitting a %s edit with %d image(s) to %s",
            model,
            len(request.body[request.model.image_field]),
            settings.base_url,
        )
        status, data = settings.retry.retrying()(
            self._gateway_call, "POST", request.model.submit_path, body=request.body, headers=request.headers
        )
        result = SubmitResult.from_json(data, status)
        self._check_polling_url(result)
        self.log.info("Submitted: request_id=%s status=%s", result.request_id, result.status.value)
        return result

    def get_status(self, request_id: str) -> JobStatusResult:
        """
        Read a job's status (retrying transient failures).

        :param request_id: the id returned by :meth:`submit_edit`.
        """
        path = status_path(request_id)

        def read() -> JobStatusResult:
            # Parsed inside the retried call: an answer without a status is retried like a 503.
            status, data = self._gateway_call("GET", path, request_id=request_id)
            return self._parse_status(data, request_id, status)

        return self.settings.retry.retrying()(read)

    def test_connection(self) -> tuple[bool, str]:
        """
        Check the gateway and the key without submitting a paid job.

        It reads the status of a request id that cannot exist: the gateway checks the key first, so
        ``401``/``403`` means a wrong key and ``404`` means the key was accepted.
        """
        try:
            settings = self.settings
            self._gateway_call("GET", status_path("firered-connection-test"))
        except FireRedApiError as err:
            if err.status_code == 404:
                return True, f"Connection OK: the gateway at {settings.base_url} accepted the API key."
            if err.status_code in (401, 403):
                return (
                    False,
                    f"The gateway rejected the API key (HTTP {err.status_code}: {err.message or err.error}).",
                )
            return False, str(err)
        except FireRedError as err:
            return False, f"Cannot use the gateway: {err}"
        return True, f"Connection OK: the gateway at {settings.base_url} answered."

    def _gateway_call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> tuple[int, Any]:
        settings = self.settings
        url = settings.base_url + path
        try:
            response = self._session.request(
                method,
                url,
                json=body,
                headers=settings.headers(headers),
                timeout=settings.request_timeout,
                allow_redirects=False,  # a redirect could carry the key to another host
            )
            content = response.content
        except requests.RequestException as err:
            if method == "POST" and not _never_sent(err):
                raise FireRedSubmitUncertainError(_host(url), type(err).__name__) from None
            raise FireRedConnectionError(_host(url), type(err).__name__, request_id=request_id) from None
        return response.status_code, parse_gateway_answer(
            response.status_code, response.headers, content, method=method, request_id=request_id
        )

    def _check_polling_url(self, result: SubmitResult) -> None:
        if result.polling_url and not self.settings.is_gateway_url(result.polling_url):
            self.log.warning(
                "Ignoring polling_url on another host (%s): status is read from the gateway itself, "
                "which keeps the API key on the gateway host",
                _host(result.polling_url),
            )

    def _parse_status(self, data: Any, request_id: str, http_status: int) -> JobStatusResult:
        result = JobStatusResult.from_json(data, request_id, http_status)
        if result.status is JobStatus.UNKNOWN:
            self.log.warning(
                "Job %s reports an undocumented status %r; treating it as still running",
                request_id,
                result.raw_status,
            )
        return result

    # -- downloads ---------------------------------------------------------------------------------

    def download(
        self,
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

        :param url: the media URL (CDN).
        :param destination: the target file: a local path, an ``ObjectStoragePath`` or a URL such as
            ``s3://bucket/key.png``.
        :param max_bytes: the largest accepted body; defaults to the connection's ``max_download_bytes``.
        :return: the destination, as a string.
        """
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise FireRedValidationError("url", f"must be an http(s) URL, got {url!r}")
        settings = self.settings
        limit = max_bytes or settings.max_download_bytes
        target = as_target(destination)
        fetch = settings.retry.retrying()
        if isinstance(target, Path):
            # A temp file beside the target, then an atomic rename: readers never see a partial file.
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            os.close(fd)
            try:
                fetch(self._fetch_to_file, url, Path(tmp_name), limit, settings.request_timeout)
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
                fetch(self._fetch_to_file, url, part, limit, settings.request_timeout)
                # Object stores publish an object only once its upload completes.
                with contextlib.suppress(OSError, NotImplementedError):
                    target.parent.mkdir(parents=True, exist_ok=True)  # needed for file://, a no-op on buckets
                with part.open("rb") as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
        self.log.info("Downloaded %s to %s", url, target)
        return str(target)

    def _fetch_to_file(self, url: str, part: Path, limit: int, timeout: float) -> None:
        try:
            # No headers: the key is never sent to media URLs, and the session holds none.
            with self._session.get(url, stream=True, timeout=timeout) as response:
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
            raise FireRedDownloadError(
                url, f"transfer failed ({type(err).__name__})", retryable=True
            ) from None
        if expected is not None and size != expected:
            raise FireRedDownloadError(url, f"truncated: got {size} of {expected} bytes", retryable=True)

    # -- async (triggers) --------------------------------------------------------------------------

    async def aget_status(self, request_id: str) -> JobStatusResult:
        """
        Read a job's status over aiohttp, retrying transient failures without blocking the loop.

        :param request_id: the job id.
        """
        path = status_path(request_id)
        settings = await self.aget_settings()

        async def read() -> JobStatusResult:
            status, data = await self._agateway_get(settings, path, request_id)
            return self._parse_status(data, request_id, status)

        return await settings.retry.acall(read)

    async def _agateway_get(self, settings: GatewaySettings, path: str, request_id: str) -> tuple[int, Any]:
        url = settings.base_url + path
        session = self._get_async_session()
        try:
            async with session.get(
                url, headers=settings.base_headers, allow_redirects=False, timeout=settings.client_timeout
            ) as response:
                content = await response.read()
                return response.status, parse_gateway_answer(
                    response.status, response.headers, content, method="GET", request_id=request_id
                )
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            raise FireRedConnectionError(_host(url), type(err).__name__, request_id=request_id) from None

    def _get_async_session(self) -> aiohttp.ClientSession:
        if self._async_session is None or self._async_session.closed:
            self._async_session = aiohttp.ClientSession()
        return self._async_session

    async def aclose(self) -> None:
        """Close the hook's aiohttp session, or give back the loop's shared one."""
        session, self._async_session = self._async_session, None
        if self._shares_session:
            self._shares_session = False
            await loop_shared.release_session()
        elif session is not None:
            await session.close()

    async def __aenter__(self) -> FireRedHook:
        """Use the event loop's shared aiohttp session (see ``loop_shared``) until exit."""
        if not self._shares_session:
            await self.aclose()
            self._async_session = loop_shared.acquire_session()
            self._shares_session = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def status_path(request_id: str) -> str:
    """The status endpoint path for ``request_id``, which is checked to be a plain id first."""
    if not isinstance(request_id, str):
        raise FireRedValidationError("request_id", f"must be a string, got {request_id!r}")
    return _status_path(request_id)


@functools.lru_cache(maxsize=8192)  # a trigger asks for the same path at every poll
def _status_path(request_id: str) -> str:
    if not _REQUEST_ID.match(request_id):
        raise FireRedValidationError(
            "request_id", f"must be a gateway request id (letters, digits, '._:-'), got {request_id!r}"
        )
    return STATUS_PATH.format(request_id=quote(request_id, safe=""))


def parse_gateway_answer(
    status: int, headers: Mapping[str, str], content: bytes, *, method: str, request_id: str | None
) -> Any:
    """
    Turn a gateway answer into JSON data, or raise the matching :class:`FireRedError`.

    :param status: the HTTP status.
    :param headers: the answer's headers (``Retry-After`` is read from them).
    :param content: the raw body.
    :param method: the request method; a malformed answer to a GET is retryable, to a POST not
        (posting again could pay twice).
    :param request_id: the job concerned, for messages.
    """
    data: Any = None
    try:
        data = json.loads(content) if content else None
        decoded = True
    except ValueError:
        decoded = False
    if 300 <= status < 400:
        raise FireRedApiError(
            status,
            "Redirect not followed",
            f"the gateway redirected to {_host(headers.get('Location', ''))}; "
            "the API key is only sent to the gateway host",
            request_id=request_id,
        )
    if status >= 400:
        error = data.get("error") if isinstance(data, dict) else None
        message = data.get("message") if isinstance(data, dict) else None
        if not error and not message and content:
            message = content[:200].decode("utf-8", "replace")
        raise FireRedApiError(
            status,
            str(error) if error else None,
            str(message) if message else None,
            request_id=request_id,
            retry_after=parse_retry_after(headers.get("Retry-After")),
        )
    if not decoded or data is None:
        raise FireRedResponseError(
            status,
            f"answer is not JSON: {content[:120].decode('utf-8', 'replace')!r}",
            request_id=request_id,
            retryable=method == "GET",
        )
    return data


def check_media_type(url: str, content_type: str | None) -> None:
    """Refuse a media answer that is not an image (an HTML error page, say)."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if not kind.startswith(DOWNLOAD_MEDIA_TYPES):
        raise FireRedDownloadError(url, f"unexpected Content-Type {content_type!r}; expected an image")


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


def _never_sent(err: requests.RequestException) -> bool:
    """Whether a failed request surely never reached the server, so sending it again is safe."""
    if isinstance(err, requests.ConnectTimeout):
        return True
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return isinstance(err, requests.ConnectionError) and isinstance(reason, NewConnectionError)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


def _host(url: str) -> str:
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
