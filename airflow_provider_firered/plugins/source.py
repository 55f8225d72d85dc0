"""
Find a batch task instance's output root in Airflow's metadata database: never from the request.

The batch's return value (its XCom) names the output root it wrote the manifest under. A batch that
failed (more failures than ``max_failed``) returns nothing; its rendered ``output_root`` (the task's
rendered template fields) then names the same folder. Either way the folder comes from what the task
itself recorded; the page's address names only the task instance.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_firered.exceptions import FireRedValidationError
from airflow_provider_firered.media.output_paths import as_target

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import ObjectStoragePath
    from sqlalchemy.orm import Session

#: The XCom the batch returns its counts and output root in.
RESULT_KEY = "return_value"
#: The longest output root taken from the database.
MAX_ROOT_LENGTH = 4096


@dataclass(frozen=True)
class TaskInstanceId:
    """
    Name one task instance.

    :param dag_id: its DAG.
    :param run_id: its DAG run.
    :param task_id: its task.
    :param map_index: its map index, -1 when the task is not mapped.
    """

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1


@dataclass(frozen=True)
class TaskBatch:
    """
    Hold what the metadata database says of a batch task instance.

    :param state: the task instance's state (``None`` before it was scheduled).
    :param output_root: the batch's output root, or ``None`` when the task recorded none.
    :param origin: where the output root came from: ``"result"`` (the return value) or
        ``"rendered"`` (the rendered ``output_root``); ``""`` when none was found.
    :param why: why there is no usable output root, for the page.
    """

    state: str | None
    output_root: str | None
    origin: str = ""
    why: str = ""

    def target(self) -> Path | ObjectStoragePath:
        """
        Return the output root as a local path or an ``ObjectStoragePath``.

        :raises FireRedValidationError: when there is none, or it is not one the api-server can read.
        """
        if self.output_root is None:
            raise FireRedValidationError("output_root", self.why or "the task recorded no output root")
        return as_target(self.output_root, field_name="output_root")


def find_task_batch(session: Session, ti: TaskInstanceId) -> TaskBatch | None:
    """
    Return what the metadata database says of a task instance's batch; ``None`` without such a task instance.

    :param session: a metadata database session.
    :param ti: the task instance.
    """
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import select

    row = session.execute(
        select(TaskInstance.state).where(
            TaskInstance.dag_id == ti.dag_id,
            TaskInstance.run_id == ti.run_id,
            TaskInstance.task_id == ti.task_id,
            TaskInstance.map_index == ti.map_index,
        )
    ).first()
    if row is None:
        return None
    state = None if row[0] is None else str(row[0])
    found = _result_root(session, ti)
    origin = "result"
    if found is None:
        found, origin = _rendered_root(session, ti), "rendered"
    if found is None:
        why = "this task instance recorded no output root: it is not a FireRed batch, or it has not started"
        return TaskBatch(state, None, why=why)
    problem = _unusable(found)
    if problem:
        return TaskBatch(state, None, why=problem)
    return TaskBatch(state, found, origin)


def _result_root(session: Session, ti: TaskInstanceId) -> str | None:
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    value = session.scalar(
        select(XComModel.value).where(
            XComModel.dag_id == ti.dag_id,
            XComModel.run_id == ti.run_id,
            XComModel.task_id == ti.task_id,
            XComModel.map_index == ti.map_index,
            XComModel.key == RESULT_KEY,
        )
    )
    return _root_in(_decoded(value))


def _rendered_root(session: Session, ti: TaskInstanceId) -> str | None:
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as Rendered
    from sqlalchemy import select

    fields = session.scalar(
        select(Rendered.rendered_fields).where(
            Rendered.dag_id == ti.dag_id,
            Rendered.run_id == ti.run_id,
            Rendered.task_id == ti.task_id,
            Rendered.map_index == ti.map_index,
        )
    )
    fields = _decoded(fields)
    # Both fields: a batch's rendered fields, not another operator's that happens to have an output_root.
    if not isinstance(fields, dict) or "edits" not in fields:
        return None
    return _root_in(fields)


def _decoded(value: Any) -> Any:
    """Return a JSON column's value; Airflow stores some values as JSON text inside it."""
    if isinstance(value, (str, bytes)) and len(value) <= 1024 * 1024:
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _root_in(value: Any) -> str | None:
    root = value.get("output_root") if isinstance(value, dict) else None
    return root if isinstance(root, str) and root else None


def _unusable(root: str) -> str:
    """Return why the api-server cannot read ``root`` as an output root, or ``""``."""
    if len(root) > MAX_ROOT_LENGTH or not root.isprintable():
        return "the recorded output root is not a plain path or URL"
    try:
        target = as_target(root, field_name="output_root")
    except (FireRedValidationError, ValueError, TypeError) as err:
        return f"the recorded output root cannot be read here: {err}"
    if isinstance(target, Path) and not os.path.isabs(target):
        # A relative path names a folder below the worker's working directory, unknown here.
        return f"the recorded output root {root!r} is relative: only the worker knows what it is relative to"
    return ""
