"""What the rig's server tests share: starting a server or skipping (failing in CI), its listeners."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NoReturn, TypeVar

import psutil
import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    from firered_devtools.processes import ThrowawayServer

_Server = TypeVar("_Server", bound="ThrowawayServer")


def started(make: Callable[[], _Server], unavailable: type[Exception], what: str) -> _Server:
    """Start a server; where it cannot be had, skip the test naming why, or fail it in CI."""
    try:
        return make().start()
    except unavailable as err:
        missing(what, str(err))


def missing(what: str, why: str) -> NoReturn:
    """Skip the test for a part this machine lacks, naming why; in CI, fail it instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"in CI the {what} tests must run: {why}")
    pytest.skip(why)


def listening(pid: int) -> list[str]:
    """The local addresses ``pid`` listens on or binds (TCP and UDP, IPv4 and IPv6)."""
    found = []
    for conn in psutil.Process(pid).net_connections(kind="inet"):
        if conn.status in (psutil.CONN_LISTEN, psutil.CONN_NONE):  # UDP sockets have no state
            found.append(f"{conn.laddr.ip}:{conn.laddr.port}")
    return found
