"""
The FastAPI app the api-server mounts under ``/firered``: a batch task instance's contact sheet.

Routes (every one requires a signed-in user allowed to read the task instances of that DAG, through
the api-server's own ``requires_access_dag``; without a token the answer is 401, without access 403):

- ``GET /contact-sheet/{dag_id}/{run_id}/{task_id}?map_index=&page=``: one page of the sheet.
- ``GET /contact-sheet/{dag_id}/{run_id}/{task_id}/files/{path}?map_index=``: an output image the
  task's manifest lists, streamed from the output root (a local folder or object storage), never a
  redirect to the storage. Anything else, or anything outside the root, is a 404.

The output root comes from the task instance's own records (:mod:`.source`), never from the address.
This module imports the api-server's security and FastAPI: :mod:`.firered` imports it only when the
first request comes, so that the other Airflow processes loading the plugin do not pay for it.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from airflow_provider_firered.exceptions import FireRedError
from airflow_provider_firered.plugins.images import NotServed, open_image
from airflow_provider_firered.plugins.links import FILES_ROUTE, SHEET_ROUTE
from airflow_provider_firered.plugins.pages import HEADERS, SheetPage, message_html
from airflow_provider_firered.plugins.sheet import SheetCache
from airflow_provider_firered.plugins.source import TaskBatch, TaskInstanceId, find_task_batch
from airflow_provider_firered.version_compat import api_reads_token_cookie

if TYPE_CHECKING:
    from pathlib import Path

    from airflow.providers.common.compat.sdk import ObjectStoragePath
    from starlette.responses import Response

    from airflow_provider_firered.plugins.sheet import Sheet

log = logging.getLogger(__name__)

#: A map index as the address gives it; the external view of an unmapped task instance leaves its
#: ``{MAP_INDEX}`` placeholder unreplaced, which means -1.
_MAP_INDEX = re.compile(r"-1|[0-9]{1,9}")
_UNREPLACED = "{MAP_INDEX}"
#: The sheets of the pages being viewed, shared by their image requests.
SHEETS = SheetCache()
#: Every route: a signed-in user who may read this DAG's task instances.
READABLE = [Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))]
_TASK = SHEET_ROUTE + "/{dag_id}/{run_id}/{task_id}"


class NoSheet(Exception):
    """No contact sheet for this address; the text says why."""


def _map_index(text: str) -> int:
    if text == _UNREPLACED:
        return -1
    if not _MAP_INDEX.fullmatch(text):
        raise NoSheet(f"map_index must be -1 or a task instance's index, got {text[:20]!r}")
    return int(text)


def _task_batch(ti: TaskInstanceId) -> TaskBatch:
    from airflow.utils.session import create_session

    # A session of its own, closed before any image is streamed.
    with create_session() as session:
        batch = find_task_batch(session, ti)
    if batch is None:
        raise NoSheet("There is no such task instance.")
    return batch


def _sheet(batch: TaskBatch) -> tuple[Path | ObjectStoragePath, Sheet]:
    try:
        root = batch.target()
        return root, SHEETS.get(root)
    except (FireRedError, OSError, ValueError, NotImplementedError, ImportError) as err:
        # An object store without a filesystem or credentials here, a root that is not a path, ...
        raise NoSheet(f"The contact sheet cannot be read here: {err}") from None


def sheet_page(
    dag_id: str,
    run_id: str,
    task_id: str,
    map_index: str = "-1",
    page: int = 1,
) -> HTMLResponse:
    """
    Return one page of the contact sheet of a batch task instance.

    :param dag_id: the DAG.
    :param run_id: the DAG run.
    :param task_id: the batch task.
    :param map_index: the task instance's map index; -1 (or absent) when the task is not mapped.
    :param page: the page, from 1; past the last one, the last one.
    """
    try:
        ti = TaskInstanceId(dag_id, run_id, task_id, _map_index(map_index))
        batch = _task_batch(ti)
        _root, sheet = _sheet(batch)
    except NoSheet as err:
        return HTMLResponse(message_html("No contact sheet", str(err)), status_code=404, headers=HEADERS)
    return HTMLResponse(SheetPage(ti, batch, sheet, page).html(), headers=HEADERS)


def sheet_file(
    dag_id: str,
    run_id: str,
    task_id: str,
    path: str,
    map_index: str = "-1",
) -> StreamingResponse:
    """
    Stream an output image the task instance's manifest lists, from below its output root.

    :param dag_id: the DAG.
    :param run_id: the DAG run.
    :param task_id: the batch task.
    :param path: the file's path below the output root, as the contact sheet links it.
    :param map_index: the task instance's map index.
    :raises HTTPException: 404 for any file the sheet does not list or cannot serve.
    """
    try:
        ti = TaskInstanceId(dag_id, run_id, task_id, _map_index(map_index))
        root, sheet = _sheet(_task_batch(ti))
        parts = sheet.files.get(path)
        if parts is None:
            raise NotServed("not a file of this task instance's contact sheet")
        image = open_image(root, parts)
    except (NoSheet, NotServed) as err:
        log.debug("Not serving %r of %s/%s/%s: %s", path[:200], dag_id, run_id, task_id, err)
        raise HTTPException(404, f"Not found: {err}") from None
    headers = {
        "Cache-Control": "private, max-age=300",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if image.size is not None:
        headers["Content-Length"] = str(image.size)
    return StreamingResponse(image.chunks(), media_type=image.media_type, headers=headers)


async def html_errors(request: Request, exc: Exception) -> Response:
    """
    Answer a browser that is not signed in, or not allowed, with a page rather than JSON.

    :param request: the request.
    :param exc: the HTTP error raised by a route or by the access check.
    """
    assert isinstance(exc, StarletteHTTPException)
    browser = "text/html" in request.headers.get("accept", "")
    if not browser or exc.status_code not in (401, 403):
        return await http_exception_handler(request, exc)
    if exc.status_code == 403:
        text = "You are not allowed to read this DAG's task instances, or your sign-in is no longer valid."
    elif api_reads_token_cookie():
        text = "Sign in to Airflow, then open this page again from the task instance."
    else:
        text = (
            "This Airflow keeps the sign-in of its web UI in the browser's local storage, out of reach "
            "of a page it links to: the contact sheet needs an API token (Authorization: Bearer) here, "
            "or Airflow 3.1 or newer."
        )
    headers = {**HEADERS, **(exc.headers or {})}
    return HTMLResponse(message_html("Contact sheet", text), status_code=exc.status_code, headers=headers)


def create_app() -> FastAPI:
    """Return the plugin's FastAPI app (the api-server mounts it under ``/firered``)."""
    app = FastAPI(title="FireRed contact sheet", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_api_route(_TASK, sheet_page, methods=["GET"], dependencies=READABLE, response_class=HTMLResponse)
    app.add_api_route(
        f"{_TASK}/{FILES_ROUTE}/{{path:path}}",
        sheet_file,
        methods=["GET"],
        dependencies=READABLE,
        response_class=StreamingResponse,
    )
    app.add_exception_handler(StarletteHTTPException, html_errors)
    return app
