"""
The FireRed Airflow plugin, registered by the provider (provider info ``plugins``).

It brings the batch's contact sheet into Airflow's UI:

- a FastAPI app the api-server mounts under ``/firered`` (:mod:`~airflow_provider_firered.plugins.app`);
- an external view "Contact sheet" on every task instance page (Airflow 3.1+; Airflow 3.0 has no
  external views and ignores it), showing that app's page for the task instance;
- the extra link "Contact sheet" on ``FireRedBatchEditOperator`` tasks
  (:class:`~airflow_provider_firered.plugins.links.FireRedContactSheetLink`).

Every Airflow process that loads plugins imports this module (workers, the scheduler, the
triggerer): it stays light, and the app's own imports (FastAPI, the api-server's security) happen on
the app's first request, in the api-server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowPlugin

from airflow_provider_firered.plugins.links import URL_PREFIX, FireRedContactSheetLink, view_href

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]
    ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The plugin's name in Airflow (``airflow plugins``, ``/api/v2/plugins``).
PLUGIN_NAME = "firered"


class LazyApp:
    """An ASGI app that builds the contact sheet app on its first request, then hands every request to it."""

    def __init__(self) -> None:
        self._app: ASGIApp | None = None

    @property
    def app(self) -> ASGIApp:
        """Return the FastAPI app, built on first use."""
        if self._app is None:
            from airflow_provider_firered.plugins.app import create_app

            self._app = create_app()
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """
        Hand the request to the app.

        :param scope: the ASGI connection scope.
        :param receive: the ASGI receive channel.
        :param send: the ASGI send channel.
        """
        await self.app(scope, receive, send)


#: The app the api-server mounts under :data:`~airflow_provider_firered.plugins.links.URL_PREFIX`.
contact_sheet_app = LazyApp()


class FireRedPlugin(AirflowPlugin):
    """The FireRed plugin: the contact sheet app, its external view and its extra link."""

    name = PLUGIN_NAME
    fastapi_apps = [{"app": contact_sheet_app, "url_prefix": URL_PREFIX, "name": "FireRed contact sheet"}]
    # Airflow's UI fills the placeholders (url-encoded) and shows the page in the task instance view.
    external_views = [
        {
            "name": "Contact sheet",
            "href": view_href(),
            "destination": "task_instance",
            "url_route": "firered-contact-sheet",
        }
    ]
    operator_extra_links = [FireRedContactSheetLink()]
