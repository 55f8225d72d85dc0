"""
Check and fingerprint the items of a batch edit.

Every item is checked before anything is paid, once, and carries its validated request to the submit;
its fingerprint lets an item whose model, prompt, parameters and input images did not change reuse an
earlier run's outputs.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import requests

from airflow_provider_firered.exceptions import FireRedDownloadError, FireRedError, FireRedValidationError
from airflow_provider_firered.gateway.options import EditRequest, expected_outputs, validate_edit
from airflow_provider_firered.media.downloads import MAX_REDIRECTS, redirect_target
from airflow_provider_firered.media.hosts import (
    HostRefused,
    MediaHostPolicy,
    media_exchange,
    new_media_session,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from airflow_provider_firered.gateway.connection import GatewaySettings

#: A key names a folder: letters, digits, ``._-``, starting with a letter or digit, at most 128 long.
KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: The response headers that identify an input image's content, when the source gives them.
IDENTITY_HEADERS = ("ETag", "Last-Modified", "Content-Length")
#: Bound on the identity values kept from a HEAD answer.
_MAX_HEADER_CHARS = 256


@dataclass(frozen=True)
class BatchItem:
    """
    One checked item of a batch.

    :param index: its position in ``edits``.
    :param key: its key (output folder).
    :param model: the model it uses.
    :param prompt: its edit instruction.
    :param images: its input image URLs.
    :param parameters: its model options.
    :param request: the validated request its submit sends (built once, when the item is checked).
    :param max_outputs: the most media URLs its completed job may list
        (:func:`~airflow_provider_firered.gateway.options.expected_outputs`).
    """

    index: int
    key: str
    model: str
    prompt: str
    images: tuple[str, ...]
    parameters: Mapping[str, Any]
    request: EditRequest = field(compare=False, repr=False)
    max_outputs: int = field(default=1, compare=False)


@dataclass(frozen=True)
class InvalidItem:
    """
    An item that failed its checks: reported, never sent.

    :param index: its position in ``edits``.
    :param key: its key, or ``#<index>`` when it has no usable one.
    :param error: what is wrong, naming the field.
    """

    index: int
    key: str
    error: str


def check_items(
    edits: Any, model: str, parameters: Mapping[str, Any] | None
) -> tuple[list[BatchItem], list[InvalidItem]]:
    """
    Check every item as a single edit is checked, plus its ``key``; nothing is sent.

    A ``key`` must be a plain path segment, unique in the batch. Each valid item carries its
    validated request, so that nothing checks it again before its submit.

    :param edits: the list of items: ``{"key", "prompt", "images"}`` and optionally ``model`` and
        ``parameters``, which replace the batch's own.
    :param model: the batch's model.
    :param parameters: the batch's model options.
    :raises FireRedValidationError: when ``edits`` itself is not a list of items.
    """
    if isinstance(edits, (str, bytes)) or not isinstance(edits, (list, tuple)):
        raise FireRedValidationError("edits", f"must be a list of items, got {type(edits).__name__}")
    items: list[BatchItem] = []
    invalid: list[InvalidItem] = []
    seen: set[str] = set()
    for index, edit in enumerate(edits):
        key = edit.get("key") if isinstance(edit, dict) else None
        # An invalid item is reported under its key when that key is usable, else under its position.
        name = key if isinstance(key, str) and KEY_PATTERN.fullmatch(key) and key not in seen else f"#{index}"
        try:
            items.append(_check_item(index, edit, model, parameters, seen))
        except FireRedValidationError as err:
            invalid.append(InvalidItem(index, name, str(err)))
    return items, invalid


def _check_item(
    index: int, edit: Any, model: str, parameters: Mapping[str, Any] | None, seen: set[str]
) -> BatchItem:
    where = f"edits[{index}]"
    if not isinstance(edit, dict):
        raise FireRedValidationError(
            where, f"must be a mapping with key, prompt and images, got {type(edit).__name__}"
        )
    unknown = set(edit) - {"key", "prompt", "images", "model", "parameters"}
    if unknown:
        raise FireRedValidationError(
            f"{where}.{sorted(unknown)[0]}",
            "is not an item field (allowed: key, prompt, images, model, parameters)",
        )
    key = edit.get("key")
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key) or key in (".", ".."):
        raise FireRedValidationError(
            f"{where}.key",
            "must be a plain folder name: letters, digits, '.', '_' or '-', starting with a letter or digit, "
            f"at most 128 characters; got {key!r}",
        )
    if key in seen:
        raise FireRedValidationError(
            f"{where}.key", f"{key!r} is used by an earlier item: keys must be unique"
        )
    seen.add(key)
    item_model = edit.get("model", model)
    item_parameters = edit.get("parameters", parameters) or {}
    try:
        request = validate_edit(item_model, edit.get("prompt"), edit.get("images"), item_parameters)
    except FireRedValidationError as err:
        raise FireRedValidationError(f"{where}.{err.field}", err.message) from None
    images = tuple(request.body[request.model.image_field])
    return BatchItem(
        index,
        key,
        item_model,
        request.body["prompt"],
        images,
        dict(item_parameters),
        request,
        expected_outputs(item_model, item_parameters),
    )


# -- fingerprints ---------------------------------------------------------------------------------


def fingerprint(item: BatchItem, identities: Mapping[str, dict[str, str] | None]) -> str | None:
    """
    Return what the item's outputs depend on, as a digest.

    The digest covers the model, the prompt, the parameters and each input image's identity. None
    when an image's identity could not be read: such an item is never taken for unchanged.

    :param item: the item.
    :param identities: each image URL's identity (:func:`source_identities`).
    """
    images = [identities.get(url) for url in item.images]
    if any(identity is None for identity in images):
        return None
    material = {"model": item.model, "prompt": item.prompt, "parameters": item.parameters, "images": images}
    text = json.dumps(material, sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def source_identities(
    urls: Iterable[str],
    settings: GatewaySettings,
    *,
    threads: int = 8,
    deadline: float | None = None,
) -> dict[str, dict[str, str] | None]:
    """
    Read each image URL's identity with a HEAD request.

    An identity is the URL plus the ``ETag``, ``Last-Modified`` and ``Content-Length`` the HEAD
    answer gives, where the source gives them (the URL alone where it gives none). A source that
    cannot be asked (unreachable, an error answer, a refused host) gives None, and so does every URL
    not identified by ``deadline``: None counts as changed, so time running out only means more edits.

    The HEAD requests obey the download rules: checked hosts, checked redirects, no credentials, the
    connection's ``request_timeout``, cut to the time left before ``deadline``. No HEAD starts after
    the deadline, and the call returns at the deadline without waiting for requests still out (a
    silent host): they end at their own cut timeout.

    :param urls: the input image URLs (each asked once).
    :param settings: the connection's settings (host policy, timeout).
    :param threads: how many HEAD requests run at once.
    :param deadline: when the phase must be over, in epoch seconds (``time.time()``); None for no
        limit beyond each request's timeout.
    """
    unique = list(dict.fromkeys(urls))
    found: dict[str, dict[str, str] | None] = dict.fromkeys(unique)
    if not unique or (deadline is not None and time.time() >= deadline):
        return found
    policy = MediaHostPolicy.for_settings(settings)
    local = threading.local()

    def identify(url: str) -> dict[str, str] | None:
        timeout = settings.request_timeout
        if deadline is not None:
            left = deadline - time.time()
            if left <= 0:
                return None  # too late to start: counted as changed
            timeout = min(timeout, left)
        if not hasattr(local, "session"):
            local.session = new_media_session()
        try:
            return _head(local.session, url, policy, timeout)
        except (FireRedError, requests.RequestException, HostRefused):
            return None

    pool = ThreadPoolExecutor(
        max_workers=max(1, min(threads, len(unique))), thread_name_prefix="firered-head"
    )
    try:
        futures = {pool.submit(identify, url): url for url in unique}
        done, _late = wait(futures, timeout=None if deadline is None else max(deadline - time.time(), 0))
    finally:
        # Never wait for a HEAD stuck past the deadline; the ones not started are dropped.
        pool.shutdown(wait=deadline is None, cancel_futures=True)
    for future in done:
        found[futures[future]] = future.result()
    return found


def _head(session: requests.Session, url: str, policy: MediaHostPolicy, timeout: float) -> dict[str, str]:
    with media_exchange(policy, timeout) as exchange:
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            response = session.head(current, timeout=max(exchange.remaining(), 0.001), allow_redirects=False)
            response.close()
            if response.is_redirect:
                current = redirect_target(url, current, response.headers["Location"])
                continue
            if response.status_code >= 400:
                raise FireRedDownloadError(url, f"HTTP {response.status_code}")
            identity = {"url": url}
            for name in IDENTITY_HEADERS:
                value = response.headers.get(name)
                if value:
                    identity[name.lower()] = value[:_MAX_HEADER_CHARS]
            return identity
    raise FireRedDownloadError(url, f"more than {MAX_REDIRECTS} redirects")
