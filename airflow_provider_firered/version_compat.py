"""
Hold what differs between the Airflow versions this provider supports (3.0 and newer).

Every version check lives here, as in Airflow's own providers: the rest of the package asks these
names instead of comparing versions itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from packaging.version import Version

if TYPE_CHECKING:
    from airflow.sdk import Context


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
