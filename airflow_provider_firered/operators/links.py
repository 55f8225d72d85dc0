"""The extra link the single edit shows in the UI: its first output image."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperatorLink, XCom

from airflow_provider_firered.utils.urls import is_http_url

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import BaseOperator, TaskInstanceKey


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
