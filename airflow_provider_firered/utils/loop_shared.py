"""
Share one aiohttp session and recently resolved connections among the FireRed triggers of an event loop.

A triggerer runs thousands of waits in one loop. A session (with its own connection pool) and a
connection lookup per wait cost more than the status polls themselves; shared, every poll reuses a
kept-alive connection, as a single hand-written loop would. The session carries no key, base URL or
timeout (those go with each request), and keeps no cookies, so sharing it shares nothing secret and one
connection's gateway cannot set a cookie that another connection's requests would carry.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import aiohttp

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

#: A resolved connection is reused by new waits for this long; a changed key or host reaches new
#: triggers within it. A running wait keeps the settings it started with, until the gateway refuses
#: its key (then it looks the connection up afresh, see ``refresh`` in :func:`cached_settings`).
SETTINGS_TTL_SECONDS = 60.0
#: Most sockets the shared session opens at once, to all gateways together. Each wait holds one only
#: while a status read is in flight (a few milliseconds against a healthy gateway), so thousands of
#: waits share far fewer; the bound keeps a triggerer well under a common limit of 1,024 open files
#: when a gateway slows down, and reads beyond it queue for a socket (within their own timeout).
POOL_LIMIT = 256

S = TypeVar("S")


class _Lookup(NamedTuple):
    """A connection lookup of the loop: when it started (``time.monotonic()``) and its outcome."""

    started: float
    outcome: asyncio.Future[Any]


@dataclass
class _LoopShared:
    session: aiohttp.ClientSession | None = None
    users: int = 0
    settings: dict[str, _Lookup] = field(default_factory=dict)


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopShared] = weakref.WeakKeyDictionary()


def _shared() -> _LoopShared:
    loop = asyncio.get_running_loop()
    shared = _by_loop.get(loop)
    if shared is None:
        shared = _by_loop[loop] = _LoopShared()
    return shared


def acquire_session() -> aiohttp.ClientSession:
    """Return the loop's session, opened if needed; every call needs a matching :func:`release_session`."""
    shared = _shared()
    if shared.session is None or shared.session.closed:
        shared.session = new_session()
    shared.users += 1
    return shared.session


def new_session() -> aiohttp.ClientSession:
    """
    Return a new aiohttp session for gateway reads: a bounded pool (:data:`POOL_LIMIT`), no cookie jar.

    The gateway needs no cookies; a jar that keeps none means no cookie set by one gateway (or a
    forged answer) is ever sent with another request. Idle connections are kept for the next polls.
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=POOL_LIMIT), cookie_jar=aiohttp.DummyCookieJar()
    )


async def release_session() -> None:
    """Give back a session from :func:`acquire_session`; the last user closes it."""
    shared = _shared()
    shared.users -= 1
    if shared.users <= 0 and shared.session is not None:
        session, shared.session, shared.users = shared.session, None, 0
        await session.close()


async def cached_settings(conn_id: str, resolve: Callable[[], Awaitable[S]], *, refresh: bool = False) -> S:
    """
    Return the settings of ``conn_id`` looked up in this loop lately, else ``resolve()``.

    A lookup is reused for :data:`SETTINGS_TTL_SECONDS`. Waits that start together share one lookup;
    a failed one is not kept.

    :param conn_id: the connection id (the cache key).
    :param resolve: looks the connection up (without blocking the loop).
    :param refresh: look the connection up afresh (a rotated key): a finished lookup is not reused,
        only one still under way (it started after the caller's settings were resolved, so waits
        refused together share it). The new lookup replaces the cached one for every later wait.
    """
    shared = _shared()
    hit = shared.settings.get(conn_id)
    if hit is not None and (
        not hit.outcome.done() if refresh else time.monotonic() - hit.started < SETTINGS_TTL_SECONDS
    ):
        lookup = hit.outcome
    else:
        lookup = asyncio.ensure_future(resolve())
        shared.settings[conn_id] = _Lookup(time.monotonic(), lookup)
    try:
        # shield: one waiter being cancelled must not cancel the lookup the others wait for.
        return await asyncio.shield(lookup)
    except Exception:
        kept = shared.settings.get(conn_id)
        if kept is not None and kept.outcome is lookup:
            del shared.settings[conn_id]
        raise
