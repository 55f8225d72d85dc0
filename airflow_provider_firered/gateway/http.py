"""
One exchange with the gateway, over ``requests`` (workers) and aiohttp (triggers).

Each exchange is bounded in size (:data:`~airflow_provider_firered.gateway.results.MAX_ANSWER_BYTES`) and
in wall-clock time (the connection's ``request_timeout``, checked while the answer is read), follows
no redirect (it could carry the key to another host), and is turned into JSON data or a
:class:`~airflow_provider_firered.exceptions.FireRedError` by
:func:`~airflow_provider_firered.gateway.results.parse_gateway_answer`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import requests
import urllib3
from multidict import CIMultiDict, CIMultiDictProxy
from urllib3.exceptions import NewConnectionError
from yarl import URL

from airflow_provider_firered.exceptions import (
    FireRedApiError,
    FireRedConnectionError,
    FireRedResponseError,
    FireRedSubmitUncertainError,
)
from airflow_provider_firered.gateway.connection import url_host
from airflow_provider_firered.gateway.results import (
    MAX_ANSWER_BYTES,
    SubmitResult,
    answer_too_large,
    check_answer_length,
    content_length,
    parse_gateway_answer,
)
from airflow_provider_firered.utils import metrics
from airflow_provider_firered.utils.metrics import Metric

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from airflow_provider_firered.gateway.connection import GatewaySettings
    from airflow_provider_firered.gateway.options import EditRequest

#: Bytes asked for per read of a gateway answer: a read returns what has arrived, up to this.
_READ_CHUNK = 64 * 1024
#: Frames that only run while a connection is being opened (TCP connect, TLS handshake): an error
#: raised inside one of them was raised before any byte of the request was sent.
_CONNECT_FRAMES = frozenset({"_validate_conn", "_new_conn", "do_handshake"})


def gateway_call(
    session: requests.Session,
    settings: GatewaySettings,
    method: str,
    path: str,
    *,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    request_id: str | None = None,
    model: str | None = None,
) -> tuple[int, Any]:
    """
    One blocking exchange with the gateway; return its status and JSON data.

    A POST that failed after it left raises :class:`FireRedSubmitUncertainError`; one that never
    left (and any failed GET) raises a retryable :class:`FireRedConnectionError`. A GET (the gateway's
    only one is the status endpoint) counts as a status read once it has left; a ``429`` answer
    counts as rate limited.

    :param session: a session that carries no key (the key is added here, for the gateway only).
    :param settings: the gateway settings (root, key, ``request_timeout``).
    :param method: ``GET`` or ``POST``.
    :param path: the endpoint path under the gateway root.
    :param body: the JSON body of a POST.
    :param headers: request headers besides the documented ones.
    :param request_id: the job concerned, for messages.
    :param model: the model id the exchange concerns, if known: the metrics' tag.
    """
    url = settings.base_url + path
    deadline = time.monotonic() + settings.request_timeout
    try:
        response = session.request(
            method,
            url,
            json=body,
            headers=settings.headers(headers),
            timeout=settings.request_timeout,
            allow_redirects=False,
            stream=True,  # read below, bounded in size and time
        )
    except requests.RequestException as err:
        sent = not never_sent(err)
        if sent and method == "GET":
            metrics.count(Metric.STATUS_READS, model=model)
        if method == "POST" and sent:
            raise FireRedSubmitUncertainError(url_host(url), type(err).__name__) from None
        raise FireRedConnectionError(url_host(url), type(err).__name__, request_id=request_id) from None
    _answered(response.status_code, method, model)
    with response:
        try:
            check_answer_length(
                response.status_code, content_length(response.headers), method=method, request_id=request_id
            )
            content = _read_bounded(
                response, deadline, settings.request_timeout, method=method, request_id=request_id
            )
        except FireRedResponseError:
            raise  # too large: for a POST, the hook says it may have been accepted
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


def submit_once(session: requests.Session, settings: GatewaySettings, request: EditRequest) -> SubmitResult:
    """
    POST a validated edit once; return the gateway's ``202`` answer.

    Only what surely did not create a job comes out retryable: a ``429``, a connection that never
    opened, and (``resend_submit_on_5xx``) a ``5xx``/``408`` answer. Any other failure raises
    :class:`FireRedSubmitUncertainError`.

    :param session: a session that carries no key.
    :param settings: the gateway settings.
    :param request: the edit, as :func:`~airflow_provider_firered.gateway.options.validate_edit` built it.
    """
    model = request.model.model_id
    try:
        try:
            status, data = gateway_call(
                session,
                settings,
                "POST",
                request.model.submit_path,
                body=request.body,
                headers=request.headers,
                model=model,
            )
            result = SubmitResult.from_json(data, status)
        except FireRedApiError as err:
            if submit_refused(err, resend_on_5xx=settings.resend_submit_on_5xx):
                raise  # the gateway answered, and did not take the edit (or asked for a retry)
            raise FireRedSubmitUncertainError(url_host(settings.base_url), str(err)) from None
    except FireRedSubmitUncertainError:
        # Counted where a submit's fate is decided: once per submit, whatever made it uncertain.
        metrics.count(Metric.SUBMITS_UNCERTAIN, model=model)
        raise
    metrics.count(Metric.SUBMITS_SENT, model=model)
    return result


@dataclass(frozen=True)
class PreparedGet:
    """
    A gateway GET as aiohttp takes it, built once and sent at every poll of a wait.

    The URL is parsed and the headers are in aiohttp's own mapping, so that a poll parses and copies
    neither again.

    :param url: the gateway URL of the endpoint.
    :param headers: the documented request headers, key included (see ``GatewaySettings.headers``).
    :param text: the URL as text, for messages.
    """

    url: URL
    headers: CIMultiDictProxy[str] = field(repr=False)  # it holds the key
    text: str

    @classmethod
    def build(cls, settings: GatewaySettings, path: str) -> PreparedGet:
        """
        Return the GET of ``path`` under the gateway root of ``settings``.

        :param settings: the gateway settings (root and headers).
        :param path: the endpoint path under the gateway root.
        """
        url = settings.base_url + path
        return cls(URL(url), CIMultiDictProxy(CIMultiDict(settings.base_headers)), url)


async def agateway_get(
    session: aiohttp.ClientSession,
    settings: GatewaySettings,
    path: str,
    request_id: str,
    *,
    prepared: PreparedGet | None = None,
) -> tuple[int, Any]:
    """
    One GET of the gateway over aiohttp; return its status and JSON data.

    The timeout's ``total`` bounds the whole exchange, reading the body included. A failed exchange
    raises a retryable :class:`FireRedConnectionError`. It counts as a status read once it has left; a
    ``429`` answer counts as rate limited.

    :param session: a session that carries no key (see ``loop_shared``).
    :param settings: the gateway settings.
    :param path: the endpoint path under the gateway root.
    :param request_id: the job concerned, for messages.
    :param prepared: the same GET built beforehand from ``settings`` and ``path`` (a wait reuses one).
    """
    target = prepared if prepared is not None else PreparedGet.build(settings, path)
    answered = False
    try:
        async with session.get(
            target.url, headers=target.headers, allow_redirects=False, timeout=settings.client_timeout
        ) as response:
            answered = True
            _answered(response.status, "GET", None)
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
        if not answered and not isinstance(err, aiohttp.ClientConnectorError):
            metrics.count(Metric.STATUS_READS)  # it left: only a connection never opened sent nothing
        raise FireRedConnectionError(
            url_host(target.text), type(err).__name__, request_id=request_id
        ) from None


def _answered(status: int, method: str, model: str | None) -> None:
    """Count an exchange the gateway answered: a GET as a status read, a ``429`` as rate limited."""
    if method == "GET":
        metrics.count(Metric.STATUS_READS, model=model)
    if status == 429:
        metrics.count(Metric.RATE_LIMITED, model=model)


def never_sent(err: requests.RequestException) -> bool:
    """
    Return whether a failed request surely never reached the server, so sending it again is safe.

    That is when the connection was refused or timed out, or its TLS handshake failed (a plain-http
    server, a bad certificate), before any byte of the request left.
    """
    if isinstance(err, requests.ConnectTimeout):
        return True
    reason = getattr(err.args[0], "reason", None) if err.args else None
    if isinstance(err, requests.ConnectionError) and isinstance(reason, NewConnectionError):
        return True
    return isinstance(err, requests.exceptions.SSLError) and _raised_while_connecting(err)


def submit_refused(err: FireRedApiError, *, resend_on_5xx: bool) -> bool:
    """
    Return whether a submit's error answer means the gateway did not take the edit.

    Such an error is passed on as it is: retried if a ``429``, final if a ``4xx`` or a redirect.

    A ``5xx`` or ``408`` may come after the gateway queued (and charged) the job, and a ``2xx`` that
    cannot be read may be an accepted job whose id is lost: neither is sure, unless the connection
    opts in (``resend_submit_on_5xx``) to sending again after a ``5xx``/``408``.

    :param err: the error a submit's answer raised.
    :param resend_on_5xx: the connection's ``resend_submit_on_5xx``.
    """
    if isinstance(err, FireRedResponseError):
        return False
    if err.status_code == 429:
        return True
    if err.status_code == 408 or err.status_code >= 500:
        return resend_on_5xx
    return True


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


class _TooSlow(Exception):
    """The answer was not complete within the exchange's wall-clock limit."""


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
