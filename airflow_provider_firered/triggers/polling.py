"""
Share the waiting rhythm and the user-stop message of the FireRed triggers (single edit and batch).

Polls wake on a grid so that triggers sharing the triggerer's loop wake together, and a trigger
stopped by a user says what runs on and where its ids are kept.
"""

from __future__ import annotations

#: the triggers sharing a loop wake up together: one wake-up of the triggerer serves many polls.
GRID_FRACTION = 0.1
MAX_GRID_SECONDS = 0.25
#: How long a trigger built without a ``deadline`` (nor a ``timeout``) waits: one day. The operator and
#: the sensor always pass their own deadline; this bounds a trigger built directly.
DEFAULT_MAX_WAIT_SECONDS = 24 * 3600.0
#: Answers that mean the gateway refused the key: a rotated key is looked up again once.
KEY_REFUSED_STATUSES = frozenset({401, 403})
#: Extra seconds Airflow's own deferral timeout allows beyond the trigger's deadline, so that the
#: trigger's clearer timeout event (naming the request and its last status) normally wins.
DEFER_SLACK = 60.0


def grid_point(when: float, poll_interval: float) -> float:
    """
    Return the wake-up grid point nearest to ``when`` (on the loop's clock).

    It is at most half a grid step away, so that polls planned a fixed interval apart keep that
    interval on average.

    :param when: the planned wake-up, on the loop's clock.
    :param poll_interval: the wait's poll interval, in seconds (the grid step is a tenth of it, at most
        :data:`MAX_GRID_SECONDS`).
    """
    grid = min(poll_interval * GRID_FRACTION, MAX_GRID_SECONDS)
    return when if grid <= 0 else round(when / grid) * grid


#: The most request ids a user's stop names in the log.
MAX_IDS_NAMED = 3


def stopped_by_user_text(request_ids: list[str], kept: str, after_clear: str) -> str:
    """
    Return the warning a trigger logs when a user stops its task.

    It says what runs on, what it costs, where the ids are kept, and what Airflow does with them
    (Airflow 3.3's own behaviour, nothing more).

    :param request_ids: the jobs still being waited for.
    :param kept: where their request ids are kept.
    :param after_clear: what a clear of the task then does with them (the operator's behaviour).
    """
    count = len(request_ids)
    named = ", ".join(request_ids[:MAX_IDS_NAMED]) + (
        f" and {count - MAX_IDS_NAMED} more" if count > MAX_IDS_NAMED else ""
    )
    jobs = "1 FireRed job is" if count == 1 else f"{count} FireRed jobs are"
    return (
        f"Stopped by a user while waiting: the FireRed gateway has no cancel endpoint, so {jobs} still "
        f"running and will be charged ({named}). The request ids are kept in {kept}: Airflow "
        "deletes no task_state_store entry when a task is marked failed or cleared, nor when it is "
        "marked success unless [state_store] clear_on_success is set. A task marked failed or success "
        f"is not retried by Airflow; {after_clear}"
    )
