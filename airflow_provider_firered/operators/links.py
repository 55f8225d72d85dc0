"""
The single edit's extra link (its first output image) and where a batch task's contact sheet is served.

The FireRed plugin's page lives in the api-server under :data:`URL_PREFIX`; its address names the task
instance only (never a folder): ``/firered/contact-sheet/<dag id>/<run id>/<task id>?map_index=<n>``.
Addresses are root-relative, below the path of ``[api] base_url`` when Airflow is served below a path.
It is here, below the plugin, so that a batch's asset event can name it too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from airflow.providers.common.compat.sdk import BaseOperatorLink, XCom, conf

from airflow_provider_firered.utils.urls import is_http_url

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import BaseOperator, TaskInstanceKey

#: Where the plugin's app is mounted in the api-server.
URL_PREFIX = "/firered"
#: The contact sheet pages, below :data:`URL_PREFIX`.
SHEET_ROUTE = "/contact-sheet"


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


def web_link(url: Any) -> str:
    """
    Return ``url`` if it is a plain http(s) URL with a host, else ``""``.

    The URL comes from the gateway's answer and the UI turns it into a link: a ``javascript:``,
    ``data:`` or ``file:`` URL must not become one.

    :param url: the first media URL of a completed job.
    """
    return url if is_http_url(url) else ""


class FireRedOutputLink(BaseOperatorLink):
    """Extra link to the first output image of the edit (http and https URLs only)."""

    name = "FireRed output"

    # BaseOperatorLink's signature: the link needs only the task instance's key.
    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:  # noqa: ARG002
        """
        Return the URL of the first output, as the operator pushed it, or ``""``.

        :param operator: the task's operator.
        :param ti_key: the task instance whose output is linked.
        """
        return web_link(XCom.get_value(key=self.xcom_key, ti_key=ti_key))
