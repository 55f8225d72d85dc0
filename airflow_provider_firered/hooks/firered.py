"""Hook for the FireRed Image Edit gateway: submit edits, read job status, download outputs."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import aiohttp
import requests
import urllib3
from airflow.providers.common.compat.sdk import ObjectStoragePath
from airflow.providers.http.hooks.http import HttpHook
from requests_toolbelt.adapters.socket_options import TCPKeepAliveAdapter
from urllib3.exceptions import NewConnectionError

from airflow_provider_firered import downloads
from airflow_provider_firered.connection import (
    DEFAULT_GATEWAY,
    KEY_HEADER,
    GatewaySettings,
    url_host,
)
from airflow_provider_firered.exceptions import (
    FireRedApiError,
    FireRedConnectionError,
    FireRedError,
    FireRedResponseError,
    FireRedSubmitUncertainError,
)
from airflow_provider_firered.hooks import loop_shared
from airflow_provider_firered.options import validate_edit
from airflow_provider_firered.responses import (
    MAX_ANSWER_BYTES,
    answer_too_large,
    check_answer_length,
    parse_gateway_answer,
    status_path,
)
from airflow_provider_firered.results import JobStatus, JobStatusResult, SubmitResult
from airflow_provider_firered.retry import RetryPolicy

if TYPE_CHECKING:
    from types import TracebackType

    from airflow.sdk import Connection

__all__ = ["DEFAULT_GATEWAY", "KEY_HEADER", "FireRedHook", "GatewaySettings"]

log = logging.getLogger(__name__)


class FireRedHook(HttpHook):
    """
    Interact with the FireRed Image Edit gateway.

    The connection's ``host`` is the gateway root (``https://gateway.pixazo.ai`` when empty; a full
    ``http://127.0.0.1:PORT`` is accepted for a local emulator) and its ``password`` the subscription
    key. The optional extras (timeouts, sizes, retries, trusted hosts) are declared once in
    :data:`airflow_provider_firered.connection_extras.EXTRAS`, which generates the connection form
    and the README's extras table; a blank extra means its default.

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
        from airflow_provider_firered.connection_extras import legacy_field_behaviour

        return legacy_field_behaviour()

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

    def refresh_settings(self) -> GatewaySettings:
        """Look the connection up afresh (a rotated key, a moved gateway) and use it from now on."""
        self._use_settings(GatewaySettings.from_connection(self.get_connection(self.firered_conn_id)))
        return self._settings  # type: ignore[return-value]

    async def arefresh_settings(self) -> GatewaySettings:
        """
        Look the connection up afresh, past the event loop's cache, and use it from now on.

        For a wait whose key the gateway refused (``401``/``403``): the key may have been rotated
        since the wait started. Waits refused together share one lookup, and waits starting later
        get the new settings too.

        :return: the new settings.
        """
        self._use_settings(
            await loop_shared.cached_settings(self.firered_conn_id, self._aresolve, refresh=True)
        )
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
            settings = dataclasses.replace(settings, retry=self._retry_override)
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

        Bad input raises :class:`FireRedValidationError` before any request is made. A submit is paid,
        so it is sent again only when the gateway surely did not take it: a ``429``, or a connection
        that never opened (refused, connect timeout, failed TLS handshake). Any other failure after
        it left (``5xx``, ``408``, a reset, a timeout, a malformed ``2xx``) raises
        :class:`FireRedSubmitUncertainError` without retrying, unless the connection extra
        ``resend_submit_on_5xx`` asks to send it again after a ``5xx``/``408`` answer.

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
        result = settings.retry.retrying()(
            self._submit_once, settings, request.model.submit_path, request.body, request.headers
        )
        self._check_polling_url(result)
        self.log.info("Submitted: request_id=%s status=%s", result.request_id, result.status.value)
        return result

    def _submit_once(
        self, settings: GatewaySettings, path: str, body: Any, headers: Mapping[str, str]
    ) -> SubmitResult:
        """
        POST once. Only what surely did not create a job comes out retryable: a ``429``, a
        connection that never opened, and (``resend_submit_on_5xx``) a ``5xx``/``408`` answer.
        """
        try:
            status, data = self._gateway_call("POST", path, body=body, headers=headers)
            return SubmitResult.from_json(data, status)
        except FireRedApiError as err:
            if _submit_refused(err, settings):
                raise  # the gateway answered, and did not take the edit (or asked for a retry)
            raise FireRedSubmitUncertainError(url_host(settings.base_url), str(err)) from None

    def get_status(self, request_id: str) -> JobStatusResult:
        """
        Read a job's status (retrying transient failures).

        When the gateway refuses the key (``401``/``403``), the connection is looked up afresh once
        and, if its key or gateway changed (a rotated key), the status is read again with it.

        :param request_id: the id returned by :meth:`submit_edit`.
        """
        path = status_path(request_id)

        def read() -> JobStatusResult:
            # Parsed inside the retried call: an answer without a status is retried like a 503.
            status, data = self._gateway_call("GET", path, request_id=request_id)
            return self._parse_status(data, request_id, status)

        used = self.settings
        try:
            return used.retry.retrying()(read)
        except FireRedApiError as err:
            if err.status_code not in (401, 403) or not _changed(used, self.refresh_settings()):
                raise
        self.log.info(
            "The gateway refused the key; reading %s again with the connection looked up afresh", request_id
        )
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
        """
        One exchange with the gateway, bounded in size (:data:`MAX_ANSWER_BYTES`) and in wall-clock
        time (``request_timeout`` for the whole exchange, checked while the answer is read).

        A POST that failed after it left raises :class:`FireRedSubmitUncertainError`; one that never
        left (and any failed GET) raises a retryable :class:`FireRedConnectionError`.
        """
        settings = self.settings
        url = settings.base_url + path
        deadline = time.monotonic() + settings.request_timeout
        try:
            response = self._session.request(
                method,
                url,
                json=body,
                headers=settings.headers(headers),
                timeout=settings.request_timeout,
                allow_redirects=False,  # a redirect could carry the key to another host
                stream=True,  # read below, bounded in size and time
            )
        except requests.RequestException as err:
            if method == "POST" and not _never_sent(err):
                raise FireRedSubmitUncertainError(url_host(url), type(err).__name__) from None
            raise FireRedConnectionError(url_host(url), type(err).__name__, request_id=request_id) from None
        with response:
            try:
                check_answer_length(
                    response.status_code,
                    _content_length(response.headers),
                    method=method,
                    request_id=request_id,
                )
                content = _read_bounded(
                    response, deadline, settings.request_timeout, method=method, request_id=request_id
                )
            except FireRedResponseError:
                raise  # too large: for a POST, _submit_once says it may have been accepted
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, _TooSlow) as err:
                reason = str(err) if isinstance(err, _TooSlow) else type(err).__name__
                if method == "POST":
                    raise FireRedSubmitUncertainError(url_host(url), reason) from None
                raise FireRedConnectionError(url_host(url), reason, request_id=request_id) from None
        return response.status_code, parse_gateway_answer(
            response.status_code,
            response.headers,
            content,
            method=method,
            request_id=request_id,
            secret=settings.api_key,
        )

    def _check_polling_url(self, result: SubmitResult) -> None:
        if result.polling_url and not self.settings.is_gateway_url(result.polling_url):
            self.log.warning(
                "Ignoring polling_url on another host (%s): status is read from the gateway itself, "
                "which keeps the API key on the gateway host",
                url_host(result.polling_url),
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
        suffix_from_content: bool = False,
    ) -> str:
        """
        Download a media URL to a local path or an ``ObjectStoragePath``, atomically (see
        :func:`airflow_provider_firered.downloads.download`). No credentials are sent; the host and
        every redirect target must be public unless the gateway itself is local or the connection
        sets ``allow_private_media_hosts``; the whole exchange gets ``request_timeout`` seconds.

        :param url: the media URL (CDN).
        :param destination: the target file: a local path, an ``ObjectStoragePath`` or a URL.
        :param max_bytes: the largest accepted body; defaults to the connection's ``max_download_bytes``.
        :param suffix_from_content: give the file the extension of the image found in the body.
        :return: the destination written, as a string.
        """
        return downloads.download(
            self._media_session,
            self.settings,
            url,
            destination,
            max_bytes=max_bytes,
            suffix_from_content=suffix_from_content,
        )

    @cached_property
    def _media_session(self) -> requests.Session:
        # Media downloads get their own session: no credentials, proxies, cookies or unchecked hosts.
        return downloads.new_media_session()

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
                # The timeout's total bounds the whole exchange, reading the body included.
                content = await _aread_bounded(response, request_id)
                return response.status, parse_gateway_answer(
                    response.status,
                    response.headers,
                    content,
                    method="GET",
                    request_id=request_id,
                    secret=settings.api_key,
                )
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            raise FireRedConnectionError(url_host(url), type(err).__name__, request_id=request_id) from None

    def _get_async_session(self) -> aiohttp.ClientSession:
        if self._async_session is None or self._async_session.closed:
            self._async_session = loop_shared.new_session()
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


#: Bytes asked for per read of a gateway answer: a read returns what has arrived, up to this.
_READ_CHUNK = 64 * 1024
#: Frames that only run while a connection is being opened (TCP connect, TLS handshake): an error
#: raised inside one of them was raised before any byte of the request was sent.
_CONNECT_FRAMES = frozenset({"_validate_conn", "_new_conn", "do_handshake"})


class _TooSlow(Exception):
    """The answer was not complete within the exchange's wall-clock limit."""


def _never_sent(err: requests.RequestException) -> bool:
    """
    Whether a failed request surely never reached the server, so sending it again is safe: the
    connection was refused or timed out, or its TLS handshake failed (a plain-http server, a bad
    certificate), before any byte of the request left.
    """
    if isinstance(err, requests.ConnectTimeout):
        return True
    reason = getattr(err.args[0], "reason", None) if err.args else None
    if isinstance(err, requests.ConnectionError) and isinstance(reason, NewConnectionError):
        return True
    return isinstance(err, requests.exceptions.SSLError) and _raised_while_connecting(err)


def _raised_while_connecting(err: BaseException) -> bool:
    """Whether the error at the root of ``err`` was raised while its connection was being opened."""
    seen: set[int] = set()
    pending: list[BaseException] = [err]
    while pending:
        exc = pending.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_name in _CONNECT_FRAMES:
                return True
            tb = tb.tb_next
        pending += [a for a in exc.args if isinstance(a, BaseException)]
        pending += [
            e for e in (exc.__cause__, exc.__context__, getattr(exc, "reason", None)) if e is not None
        ]
    return False


def _submit_refused(err: FireRedApiError, settings: GatewaySettings) -> bool:
    """
    Whether a submit's error answer means the gateway did not take the edit (so the error is passed
    on as it is: retried if a ``429``, final if a ``4xx`` or a redirect).

    A ``5xx`` or ``408`` may come after the gateway queued (and charged) the job, and a ``2xx`` that
    cannot be read may be an accepted job whose id is lost: neither is sure, unless the connection
    opts in (``resend_submit_on_5xx``) to sending again after a ``5xx``/``408``.
    """
    if isinstance(err, FireRedResponseError):
        return False
    if err.status_code == 429:
        return True
    if err.status_code == 408 or err.status_code >= 500:
        return settings.resend_submit_on_5xx
    return True


def _changed(old: GatewaySettings, new: GatewaySettings) -> bool:
    """Whether a fresh lookup gave another key or gateway (reading again with it may succeed)."""
    return (old.api_key, old.base_url) != (new.api_key, new.base_url)


def _content_length(headers: Mapping[str, str]) -> int | None:
    try:
        return int(headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _read_bounded(
    response: requests.Response, deadline: float, timeout: float, *, method: str, request_id: str | None
) -> bytes:
    """
    Read a streamed answer, at most :data:`MAX_ANSWER_BYTES`, before ``deadline`` (monotonic).

    ``read1`` returns whatever has arrived, so the clock is checked after every arrival: a body
    dripped a byte at a time cannot hold the worker past the deadline by more than one read (itself
    bounded by the socket timeout).

    :param response: a response opened with ``stream=True``.
    :param deadline: when the exchange must be over, on ``time.monotonic()``'s clock.
    :param timeout: the exchange's limit in seconds, for the message.
    :param method: the request method (an oversized answer to a GET is retryable).
    :param request_id: the job concerned, for messages.
    """
    chunks: list[bytes] = []
    size = 0
    for chunk in _arrivals(response):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise answer_too_large(response.status_code, method=method, request_id=request_id)
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise _TooSlow(f"no complete answer within {timeout:g}s")
    if time.monotonic() > deadline:  # the headers alone came too slowly
        raise _TooSlow(f"no complete answer within {timeout:g}s")
    return b"".join(chunks)


def _arrivals(response: requests.Response) -> Iterator[bytes]:
    while chunk := response.raw.read1(_READ_CHUNK, decode_content=True):
        yield chunk


async def _aread_bounded(response: aiohttp.ClientResponse, request_id: str | None) -> bytes:
    """Read an aiohttp answer, refused on its ``Content-Length`` or once past :data:`MAX_ANSWER_BYTES`."""
    check_answer_length(response.status, response.content_length, method="GET", request_id=request_id)
    chunks: list[bytes] = []
    size = 0
    while chunk := await response.content.read(_READ_CHUNK):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise answer_too_large(response.status, method="GET", request_id=request_id)
        chunks.append(chunk)
    return b"".join(chunks)
