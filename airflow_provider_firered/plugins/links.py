"""
Where a batch task's contact sheet is served, and the extra link that leads there.

The page's address (:func:`~airflow_provider_firered.operators.links.sheet_path`) names the task
instance only (never a folder). Links are root-relative, so they follow the browser to whatever host
serves Airflow, below the path of ``[api] base_url`` when Airflow is served below a path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from airflow.providers.common.compat.sdk import BaseOperatorLink

from airflow_provider_firered.operators.firered_batch import FireRedBatchEditOperator
from airflow_provider_firered.operators.links import SHEET_ROUTE, URL_PREFIX, base_path, sheet_path

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import BaseOperator, TaskInstanceKey

#: The route of a sheet's files, below a sheet's page.
FILES_ROUTE = "files"


def view_href() -> str:
    """Return the address of the external view on a task instance; Airflow's UI fills in the placeholders."""
    return f"{base_path()}{URL_PREFIX}{SHEET_ROUTE}/{{DAG_ID}}/{{RUN_ID}}/{{TASK_ID}}?map_index={{MAP_INDEX}}"


__all__ = [
    "FILES_ROUTE",
    "SHEET_ROUTE",
    "URL_PREFIX",
    "FireRedContactSheetLink",
    "base_path",
    "sheet_path",
    "view_href",
]


class FireRedContactSheetLink(BaseOperatorLink):
    """
    Extra link "Contact sheet" on a batch task: its page in the api-server.

    The plugin attaches it to every
    :class:`~airflow_provider_firered.operators.firered_batch.FireRedBatchEditOperator` task
    (``operators``): the api-server computes it for each task instance. The page itself checks that
    the user may read the DAG.
    """

    name = "Contact sheet"
    operators: ClassVar[list[type[BaseOperator]]] = [FireRedBatchEditOperator]

    # BaseOperatorLink's signature: the link needs only the task instance's key.
    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:  # noqa: ARG002
        """
        Return the address of the task instance's contact sheet.

        :param operator: the task's operator.
        :param ti_key: the task instance.
        """
        return sheet_path(ti_key.dag_id, ti_key.run_id, ti_key.task_id, ti_key.map_index)
