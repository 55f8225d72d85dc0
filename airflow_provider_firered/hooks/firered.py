"""Hook for the FireRed Image Edit gateway: submit edits, read job status, download outputs."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import aiohttp
import requests
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
    FireRedSubmitUncertainError,
)
from airflow_provider_firered.hooks import loop_shared
from airflow_provider_firered.options import validate_edit
from airflow_provider_firered.responses import parse_gateway_answer, status_path
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
                raise FireRedSubmitUncertainError(url_host(url), type(err).__name__) from None
            raise FireRedConnectionError(url_host(url), type(err).__name__, request_id=request_id) from None
        return response.status_code, parse_gateway_answer(
            response.status_code, response.headers, content, method=method, request_id=request_id
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
    ) -> str:
        """
        Download a media URL to a local path or an ``ObjectStoragePath``, atomically (see
        :func:`airflow_provider_firered.downloads.download`). No credentials are sent.

        :param url: the media URL (CDN).
        :param destination: the target file: a local path, an ``ObjectStoragePath`` or a URL.
        :param max_bytes: the largest accepted body; defaults to the connection's ``max_download_bytes``.
        :return: the destination, as a string.
        """
        return downloads.download(self._media_session, self.settings, url, destination, max_bytes=max_bytes)

    @cached_property
    def _media_session(self) -> requests.Session:
        # Media downloads get their own session: no credentials, proxies or redirects from anywhere.
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
                content = await response.read()
                return response.status, parse_gateway_answer(
                    response.status, response.headers, content, method="GET", request_id=request_id
                )
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            raise FireRedConnectionError(url_host(url), type(err).__name__, request_id=request_id) from None

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


def _never_sent(err: requests.RequestException) -> bool:
    """Whether a failed request surely never reached the server, so sending it again is safe."""
    if isinstance(err, requests.ConnectTimeout):
        return True
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return isinstance(err, requests.ConnectionError) and isinstance(reason, NewConnectionError)
