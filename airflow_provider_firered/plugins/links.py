"""
Where a batch task's contact sheet is served, and the extra link that leads there.

The page lives in the api-server under :data:`URL_PREFIX`; its address names the task instance only
(never a folder): ``/firered/contact-sheet/<dag id>/<run id>/<task id>?map_index=<n>``. Links are
root-relative, so they follow the browser to whatever host serves Airflow, below the path of
``[api] base_url`` when Airflow is served below a path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar
from urllib.parse import quote, urlsplit

from airflow.providers.common.compat.sdk import BaseOperatorLink, conf

from airflow_provider_firered.operators.firered_batch import FireRedBatchEditOperator

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import BaseOperator, TaskInstanceKey

#: Where the plugin's app is mounted in the api-server.
URL_PREFIX = "/firered"
#: The contact sheet pages, below :data:`URL_PREFIX`.
SHEET_ROUTE = "/contact-sheet"
#: The route of a sheet's files, below a sheet's page.
FILES_ROUTE = "files"


def base_path() -> str:
    """Return the path Airflow is served below (from ``[api] base_url``), without a trailing slash."""
    base_url = conf.get("api", "base_url", fallback="") or ""
    return urlsplit(base_url).path.rstrip("/")


def sheet_path(dag_id: str, run_id: str, task_id: str, map_index: int | str = -1) -> str:
    """
    Return the root-relative address of a task instance's contact sheet.

    :param dag_id: the DAG.
    :param run_id: the DAG run.
    :param task_id: the batch task.
    :param map_index: the task instance's map index (-1 when not mapped), or a placeholder.
    """
    parts = "/".join(quote(str(part), safe="") for part in (dag_id, run_id, task_id))
    return f"{base_path()}{URL_PREFIX}{SHEET_ROUTE}/{parts}?map_index={map_index}"


def view_href() -> str:
    """Return the address of the external view on a task instance; Airflow's UI fills in the placeholders."""
    return f"{base_path()}{URL_PREFIX}{SHEET_ROUTE}/{{DAG_ID}}/{{RUN_ID}}/{{TASK_ID}}?map_index={{MAP_INDEX}}"


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
