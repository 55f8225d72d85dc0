"""
Hold what differs between the Airflow versions this provider supports (3.0 and newer).

Every version check lives here, as in Airflow's own providers: the rest of the package asks these
names instead of comparing versions itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, cast

from packaging.version import Version

if TYPE_CHECKING:
    from datetime import timedelta

    from airflow.providers.common.compat.sdk import BaseHook
    from airflow.sdk import Connection, Context


def _airflow_version() -> tuple[int, int, int]:
    from airflow import __version__

    release = Version(__version__).release
    major, minor, micro = (*release, 0, 0)[:3]
    return major, minor, micro


AIRFLOW_VERSION = _airflow_version()
#: ``task_state_store`` in the task context: a task keeps values across its tries (3.3+).
AIRFLOW_V_3_3_PLUS = AIRFLOW_VERSION >= (3, 3, 0)


class TaskStateStore(Protocol):
    """The part of Airflow's ``task_state_store`` this provider uses."""

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value kept under ``key``, or ``default``."""

    def set(self, key: str, value: Any) -> None:
        """Keep ``value`` under ``key`` for the task's later tries."""


def task_state_store(context: Context) -> TaskStateStore | None:
    """
    Return the task's ``task_state_store``, or ``None`` on an Airflow without one (before 3.3).

    :param context: the task's context.
    """
    store: TaskStateStore | None = context.get("task_state_store")  # type: ignore[call-overload,unused-ignore]
    return store


class StatsClient(Protocol):
    """The part of Airflow's stats client this provider uses."""

    def incr(self, stat: str, count: int = 1, rate: float = 1, *, tags: dict[str, Any] | None = None) -> None:
        """Add ``count`` to the counter ``stat``."""

    def timing(self, stat: str, dt: timedelta, *, tags: dict[str, Any] | None = None) -> None:
        """Record the duration ``dt`` under the timer ``stat``."""


def stats_client() -> StatsClient:
    """Return Airflow's stats client: the task SDK's (3.3+) or ``airflow.stats.Stats`` (before)."""
    if not AIRFLOW_V_3_3_PLUS:
        from airflow.stats import Stats

        return Stats
    import sys

    from airflow.sdk.observability import stats

    # The task runner configures the SDK's client; any other process (a triggerer's runner before
    # its first serialisation, a script) has none yet and would drop every metric.
    if getattr(sys.modules[stats.incr.__module__], "_factory", True) is None:
        from airflow.sdk.configuration import conf
        from airflow.sdk.observability.metrics import stats_utils

        legacy = conf.getboolean("metrics", "legacy_names_on", fallback=True)
        stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=legacy)
    return stats


async def aget_connection(hook: BaseHook, conn_id: str) -> Connection:
    """
    Look a connection up without blocking the event loop.

    Airflow 3.1+ has ``BaseHook.aget_connection``; before it, the blocking lookup runs in a worker thread.

    :param hook: the hook looking it up.
    :param conn_id: the connection id.
    """
    aget = getattr(hook, "aget_connection", None)
    if aget is not None:
        return cast("Connection", await aget(conn_id))
    from asgiref.sync import sync_to_async

    return await sync_to_async(hook.get_connection)(conn_id)


def api_reads_token_cookie() -> bool:
    """
    Return whether the api-server signs in a request by the UI's token cookie, not only a bearer token.

    Airflow 3.1+ does: a page the UI links to (an extra link, an external view) arrives signed in.
    Airflow 3.0's UI keeps its token in the browser's local storage, so such a page arrives with none.
    Called in the api-server only (it imports the api-server's security).
    """
    import inspect

    from airflow.api_fastapi.core_api.security import get_user

    return "request" in inspect.signature(get_user).parameters
