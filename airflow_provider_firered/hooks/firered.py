"""Hook for the FireRed Image Edit gateway: submit edits, read job status, download outputs."""

from __future__ import annotations

import dataclasses
import logging
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

import requests
from airflow.providers.common.compat.sdk import BaseHook
from requests_toolbelt.adapters.socket_options import TCPKeepAliveAdapter

from airflow_provider_firered.exceptions import FireRedApiError, FireRedError
from airflow_provider_firered.gateway.connection import (
    DEFAULT_GATEWAY,
    KEY_HEADER,
    GatewaySettings,
    url_host,
)
from airflow_provider_firered.gateway.http import PreparedGet, agateway_get, gateway_call, submit_once
from airflow_provider_firered.gateway.options import MAX_NUM_IMAGES, EditRequest, validate_edit
from airflow_provider_firered.gateway.results import JobStatus, JobStatusResult, SubmitResult, status_path
from airflow_provider_firered.media import downloads
from airflow_provider_firered.media.hosts import new_media_session
from airflow_provider_firered.utils import loop_shared
from airflow_provider_firered.version_compat import aget_connection

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping, Sequence
    from types import TracebackType

    import aiohttp
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    from airflow_provider_firered.utils.retry import RetryPolicy

__all__ = ["DEFAULT_GATEWAY", "KEY_HEADER", "FireRedHook", "GatewaySettings"]

#: TCP keep-alive of the worker's session (the defaults of Airflow's ``HttpHook``): idle seconds before
#: the first probe, probes before the connection is dropped, and seconds between probes.
TCP_KEEP_ALIVE = {"idle": 120, "count": 20, "interval": 30}


class _StatusGet(NamedTuple):
    """The status GET a hook last built: for this request id, from these settings, at this path."""

    request_id: str
    settings: GatewaySettings
    path: str
    get: PreparedGet


class FireRedHook(BaseHook):
    """
    Interact with the FireRed Image Edit gateway.

    The connection's ``host`` is the gateway root (``https://gateway.pixazo.ai`` when empty; a full
    ``http://127.0.0.1:PORT`` is accepted for a local emulator) and its ``password`` the subscription
    key. The optional extras (timeouts, sizes, retries, trusted hosts) are declared once in
    :data:`airflow_provider_firered.gateway.connection_extras.EXTRAS`, which generates the connection form
    and the README's extras table; a blank extra means its default.

    The key is sent only to the gateway's own origin: never to image, media or redirect URLs, nor to
    a ``polling_url`` on another host. Use it as an async context manager in triggers: the hooks in
    one event loop then share one aiohttp session (kept-alive connections, no key on it), given back
    on exit.

    It extends ``BaseHook``, not ``HttpHook``: every exchange is its own (bounded, key on the gateway's
    origin only, no redirect followed), so ``HttpHook``'s ``run`` would only be a way around them.

    :param firered_conn_id: the id of a ``firered`` connection.
    :param retry_policy: overrides the retry policy read from the connection.
    :param request_log_level: the level of the lines logged for each submit and download (INFO);
        the batch operator logs them at DEBUG and writes one line per wave.
    """

    conn_name_attr = "firered_conn_id"
    default_conn_name = "firered_default"
    conn_type = "firered"
    hook_name = "FireRed Image Edit"

    def __init__(
        self,
        firered_conn_id: str = default_conn_name,
        *,
        retry_policy: RetryPolicy | None = None,
        request_log_level: int = logging.INFO,
    ) -> None:
        super().__init__()
        self.firered_conn_id = firered_conn_id
        #: The level of the lines logged per submit and per download; a batch of thousands logs them
        #: at DEBUG and writes one line per wave instead.
        self.request_log_level = request_log_level
        self._retry_override = retry_policy
        self._settings: GatewaySettings | None = None
        self._async_session: aiohttp.ClientSession | None = None
        #: The status GET last sent, reused by the next poll of the same request.
        self._status_get: _StatusGet | None = None
        self._shares_session = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(firered_conn_id={self.firered_conn_id!r})"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Return the connection form for Airflow 3.0/3.1 (3.2+ reads ``conn-fields`` from provider info)."""
        from airflow_provider_firered.gateway.connection_extras import legacy_field_behaviour

        return legacy_field_behaviour()

    # -- settings -------------------------------------------------------------------------------

    @property
    def settings(self) -> GatewaySettings:
        """Return the resolved connection (looked up once per hook)."""
        if self._settings is None:
            return self.refresh_settings()
        return self._settings

    async def aget_settings(self) -> GatewaySettings:
        """
        Return the resolved connection, looked up without blocking the event loop.

        Waits starting in the same loop within a minute reuse one lookup (see ``loop_shared``).
        """
        if self._settings is None:
            return self._use_settings(await loop_shared.cached_settings(self.firered_conn_id, self._aresolve))
        return self._settings

    def refresh_settings(self) -> GatewaySettings:
        """Look the connection up afresh (a rotated key, a moved gateway) and use it from now on."""
        return self._use_settings(GatewaySettings.from_connection(self.get_connection(self.firered_conn_id)))

    async def arefresh_settings(self) -> GatewaySettings:
        """
        Look the connection up afresh, past the event loop's cache, and use it from now on.

        For a wait whose key the gateway refused (``401``/``403``): the key may have been rotated
        since the wait started. Waits refused together share one lookup, and waits starting later
        get the new settings too.

        :return: the new settings.
        """
        return self._use_settings(
            await loop_shared.cached_settings(self.firered_conn_id, self._aresolve, refresh=True)
        )

    async def _aresolve(self) -> GatewaySettings:
        from asgiref.sync import sync_to_async

        conn = await aget_connection(self, self.firered_conn_id)
        # from_connection masks the key, and mask_secret talks to the triggerer's supervisor with a
        # blocking call that Airflow 3.0 refuses on the event loop's thread: run it in a worker thread.
        return await sync_to_async(GatewaySettings.from_connection)(conn)

    def _use_settings(self, settings: GatewaySettings) -> GatewaySettings:
        """Use ``settings`` from now on (with the overriding retry policy, if any); return them."""
        if self._retry_override is not None:
            settings = dataclasses.replace(settings, retry=self._retry_override)
        self._settings = settings
        return settings

    # -- sync (workers) ---------------------------------------------------------------------------

    @cached_property
    def _session(self) -> requests.Session:
        # One pooled session per hook, built on first use (a triggerer builds thousands of hooks and
        # never uses it); it carries no key: the key is added per gateway request.
        session = requests.Session()
        adapter = TCPKeepAliveAdapter(**TCP_KEEP_ALIVE)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def get_conn(self) -> requests.Session:
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
        retry: bool = True,
    ) -> SubmitResult:
        """
        Validate and submit an edit; return the gateway's ``202`` answer.

        Bad input raises :class:`FireRedValidationError` before any request is made; the edit is then
        sent by :meth:`submit_request`.

        :param model: ``firered-image-edit`` or ``firered-image-edit-v1-1``.
        :param prompt: the edit instruction.
        :param images: input image URLs (http or https).
        :param parameters: the model's documented options, by their API names.
        :param webhook_url: optional https URL the gateway calls back (``X-Webhook-URL``).
        :param webhook_mode: ``terminal`` (default at the gateway) or ``sync`` (``X-Webhook-Mode``).
        :param retry: see :meth:`submit_request`.
        """
        request = validate_edit(
            model, prompt, images, parameters, webhook_url=webhook_url, webhook_mode=webhook_mode
        )
        return self.submit_request(request, retry=retry)

    def submit_request(self, request: EditRequest, *, retry: bool = True) -> SubmitResult:
        """
        Submit an edit that :func:`~airflow_provider_firered.gateway.options.validate_edit` built.

        The request is sent as it is, not validated again. A submit is paid, so it is sent again only
        when the gateway surely did not take it: a ``429``, or a connection that never opened
        (refused, connect timeout, failed TLS handshake). Any other failure after it left (``5xx``,
        ``408``, a reset, a timeout, a malformed ``2xx``) raises :class:`FireRedSubmitUncertainError`
        without retrying, unless the connection extra ``resend_submit_on_5xx`` asks to send it again
        after a ``5xx``/``408`` answer.

        :param request: the validated edit.
        :param retry: False raises a ``429`` (or a connection that never opened) at once instead of
            waiting to send again: for a caller with other work to do meanwhile (a batch's next wave).
        :return: the gateway's ``202`` answer.
        """
        settings = self.settings
        self.log.log(
            self.request_log_level,
            "Submitting a %s edit with %d image(s) to %s",
            request.model.model_id,
            len(request.body[request.model.image_field]),
            settings.base_url,
        )
        if retry:
            result = settings.retry.call(submit_once, self._session, settings, request)
        else:
            result = submit_once(self._session, settings, request)
        self._check_polling_url(result)
        self.log.log(
            self.request_log_level,
            "Submitted: request_id=%s status=%s",
            result.request_id,
            result.status.value,
        )
        return result

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
            status, data = gateway_call(self._session, self.settings, "GET", path, request_id=request_id)
            return self._parse_status(data, request_id, status)

        used = self.settings
        try:
            return used.retry.call(read)
        except FireRedApiError as err:
            if err.status_code not in (401, 403) or not _changed(used, self.refresh_settings()):
                raise
        self.log.info(
            "The gateway refused the key; reading %s again with the connection looked up afresh", request_id
        )
        return self.settings.retry.call(read)

    def test_connection(self) -> tuple[bool, str]:
        """
        Check the gateway and the key without submitting a paid job.

        It reads the status of a request id that cannot exist: the gateway checks the key first, so
        ``401``/``403`` means a wrong key and ``404`` means the key was accepted.
        """
        try:
            settings = self.settings
            gateway_call(self._session, settings, "GET", status_path("firered-connection-test"))
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
        Download a media URL to a local path or an ``ObjectStoragePath``, atomically.

        See :func:`airflow_provider_firered.media.downloads.download`. No credentials are sent; the host
        and every redirect target must be public unless the gateway itself is local or the connection
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
            log_level=self.request_log_level,
        )

    def download_outputs(
        self,
        result: Mapping[str, Any],
        output_dir: str | os.PathLike[str] | ObjectStoragePath | None,
        *,
        max_outputs: int | None = MAX_NUM_IMAGES,
        session: requests.Session | None = None,
    ) -> list[str]:
        """
        Download every media URL of a completed job into ``output_dir``.

        See :func:`airflow_provider_firered.media.downloads.download_outputs`.

        :param result: the job's result (``request_id``, ``media_urls``, ``media_type``).
        :param output_dir: a local folder or an object storage URL; nothing is downloaded without it.
        :param max_outputs: the most media URLs the edit asked for (``None``: no bound).
        :param session: a media session of the calling thread's own, for downloads that run in several
            threads; the hook's otherwise.
        :return: the paths written, in media order.
        """
        return downloads.download_outputs(
            session or self._media_session,
            self.settings,
            result,
            output_dir,
            max_outputs=max_outputs,
            log_level=self.request_log_level,
        )

    @cached_property
    def _media_session(self) -> requests.Session:
        # Media downloads get their own session: no credentials, proxies, cookies or unchecked hosts.
        return new_media_session()

    # -- async (triggers) --------------------------------------------------------------------------

    async def aget_status(self, request_id: str) -> JobStatusResult:
        """
        Read a job's status over aiohttp, retrying transient failures without blocking the loop.

        :param request_id: the job id.
        """
        settings = self._settings
        if settings is None:
            settings = await self.aget_settings()
        prepared = self._status_get
        if prepared is None or prepared.request_id != request_id or prepared.settings is not settings:
            # Built once per wait (and again after a lookup afresh): a trigger reads one job's status.
            path = status_path(request_id)
            prepared = _StatusGet(request_id, settings, path, PreparedGet.build(settings, path))
            self._status_get = prepared
        path, target = prepared.path, prepared.get

        async def read() -> JobStatusResult:
            status, data = await agateway_get(
                self._get_async_session(), settings, path, request_id, prepared=target
            )
            return self._parse_status(data, request_id, status)

        return await settings.retry.acall(read)

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


def _changed(old: GatewaySettings, new: GatewaySettings) -> bool:
    """Whether a fresh lookup gave another key or gateway (reading again with it may succeed)."""
    return (old.api_key, old.base_url) != (new.api_key, new.base_url)
