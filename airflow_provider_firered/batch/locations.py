"""
Check where a DAG run's params may point: only under path or URL prefixes an admin allows.

The prefixes are listed in an Airflow Variable, so that a user who may trigger a DAG cannot make the
worker read or write wherever they like.

The catalogue example DAGs check their ``manifest`` and ``output_root`` params with it; any DAG that
takes a location from its params can do the same.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from airflow.providers.common.compat.sdk import AirflowFailException, Variable

from airflow_provider_firered.utils.urls import url_scheme

if TYPE_CHECKING:
    from collections.abc import Mapping

#: The Airflow Variable listing where a run's location params may point (a JSON list of prefixes).
ALLOWED_PREFIXES_VARIABLE = "firered_catalogue_allowed_prefixes"


def is_url(text: str) -> bool:
    """
    Return whether ``text`` is a URL other than ``file://`` (which names a local path).

    :param text: a path or a URL.
    """
    return url_scheme(text) not in (None, "file")


def _place(text: str) -> tuple[tuple[str | int | None, ...], list[str]]:
    """
    Return where ``text`` points, the way the worker will open it.

    That is its origin (``()`` for a local path; scheme, user, host and port for a URL) and its path
    segments.

    A local path is resolved (``~``, ``..`` and symlinks), as the operating system would. A URL keeps
    its path as written: a ``.`` or ``..`` segment in it is refused, since an object store takes it
    literally and a web server resolves it, so the two would disagree about where it points.
    """
    if not is_url(text):
        path = os.path.realpath(os.path.expanduser(text.removeprefix("file://")))
        return (), path.rstrip("/").split("/")
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise ValueError("its port is not a number") from None
    if not parts.scheme or not parts.hostname:
        raise ValueError("a URL needs a scheme and a host")
    segments = unquote(parts.path or "/").rstrip("/").split("/")
    if any(s in (".", "..") or "\\" in s or "\0" in s for s in segments):
        raise ValueError("its path has '.', '..', '\\' or NUL in it")
    origin = (parts.scheme.lower(), parts.username or "", parts.hostname.rstrip("."), port)
    return origin, segments


def _shown(text: str) -> str:
    """``text`` for a message: a URL's password hidden, cut at 200 characters."""
    if is_url(text):
        with contextlib.suppress(ValueError):
            parts = urlsplit(text)
            if parts.password:
                text = text.replace(f":{parts.password}@", ":***@", 1)
    return repr(text if len(text) <= 200 else text[:200] + "...")


def allowed_prefixes() -> list[str] | None:
    """
    Return the path and URL prefixes an admin allows for the location params; None when unset.

    They come from the Airflow Variable ``firered_catalogue_allowed_prefixes`` (a JSON list of strings).
    """
    raw = Variable.get(ALLOWED_PREFIXES_VARIABLE, default=None)
    if raw is None or not str(raw).strip():
        return None
    try:
        prefixes = json.loads(str(raw))
    except ValueError:
        prefixes = None
    if not isinstance(prefixes, list) or not all(isinstance(p, str) and p.strip() for p in prefixes):
        raise AirflowFailException(
            f"Variable {ALLOWED_PREFIXES_VARIABLE}: expected a JSON list of path or URL prefixes, such as "
            f'["/data/catalogue", "s3://bucket/catalogue"], got {_shown(str(raw))}'
        )
    for prefix in prefixes:
        why = ""
        if not is_url(prefix) and not os.path.isabs(os.path.expanduser(prefix.removeprefix("file://"))):
            why = "a path prefix must be absolute"
        else:
            try:
                _place(prefix)
            except ValueError as err:
                why = str(err)
        if why:
            raise AirflowFailException(f"Variable {ALLOWED_PREFIXES_VARIABLE}: {_shown(prefix)}: {why}")
    return prefixes


def check_location(name: str, value: str, default: str, prefixes: list[str] | None) -> str:
    """
    Accept a run's path or URL param only under a prefix an admin allows, before anything is read.

    A user who may trigger the DAG must not make the worker read or write wherever they like. A
    prefix matches on whole path segments (``/data/catalogue`` does not take ``/data/catalogue-evil``)
    after resolving the value (``/data/catalogue/../../etc`` is ``/etc``); a URL must also have the
    prefix's scheme, user and host (and port).

    :param name: the param, for the message.
    :param value: what the run's params say.
    :param default: the value used when the param is empty: always accepted.
    :param prefixes: :func:`allowed_prefixes`; None allows the default alone.
    :return: the value to use: a local path resolved, a URL as given.
    """
    if prefixes is None:
        allowed = (
            f"only the default, {_shown(default)}: an admin allows more by setting the Airflow "
            f"Variable {ALLOWED_PREFIXES_VARIABLE} to a JSON list of path or URL prefixes"
        )
    else:
        listed = ", ".join(_shown(p) for p in prefixes[:10]) + (" ..." if len(prefixes) > 10 else "")
        allowed = (
            f"the prefixes in the Airflow Variable {ALLOWED_PREFIXES_VARIABLE} ({listed or 'none'}) "
            f"or the default, {_shown(default)}"
        )
    try:
        origin, segments = _place(value)
    except ValueError as err:
        raise AirflowFailException(
            f"{name}: {_shown(value)} cannot be checked ({err}); nothing was sent. Allowed: {allowed}"
        ) from None
    used = value if origin else ("/".join(segments) or "/")
    with contextlib.suppress(ValueError):
        if (origin, segments) == _place(default):
            return used
    for prefix in prefixes or ():
        prefix_origin, prefix_segments = _place(prefix)
        if prefix_origin == origin and segments[: len(prefix_segments)] == prefix_segments:
            return used
    raise AirflowFailException(
        f"{name}: {_shown(value)} is not under an allowed prefix; nothing was sent. Allowed: {allowed}"
    )


def location_param(params: Mapping[str, Any], name: str, default: str, prefixes: list[str] | None) -> str:
    """
    Read a run's path or URL param: ``default`` when it is empty, else where :func:`check_location` allows.

    :param params: the run's params.
    :param name: the param.
    :param default: the value used when the param is empty (the admin's Variable, or the DAG's own).
    :param prefixes: :func:`allowed_prefixes`.
    """
    value = params.get(name)
    if value in (None, ""):
        return default
    return check_location(name, str(value), default, prefixes)
