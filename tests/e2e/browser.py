"""
The Airflow web UI in end-to-end tests: signing in, the api-server alone, a headless Chromium and its pages.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from firered_devtools.deployment import AirflowDeployment, ManagedProcess

# -- the web UI ---------------------------------------------------------------------------------------

#: The user the UI tests sign in as (the simple auth manager, Airflow's default).
UI_USER = "admin"
#: Flags for a headless Chromium that talks to loopback only.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
_CHROMIUM_NAMES = ("chromium", "chromium-browser")


def enable_ui_login(deployment: AirflowDeployment, password: str) -> None:
    """
    Let ``UI_USER`` (an admin) sign in with ``password``; call before starting the api-server.

    The simple auth manager reads passwords from its file and generates only the missing ones.
    """
    passwords = deployment.home / "ui-passwords.json"
    passwords.write_text(json.dumps({UI_USER: password}))
    deployment.env.update(
        {
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{UI_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            # Airflow 3.0 signs UI tokens with an issuer that newer PyJWT requires to be a string.
            "AIRFLOW__API_AUTH__JWT_ISSUER": "airflow",
        }
    )


def start_api_server(deployment: AirflowDeployment) -> ManagedProcess:
    """Start the api-server alone (the web UI and the REST API)."""
    return deployment.start(
        "api-server", "api-server", "--port", str(deployment.api_port), "--host", "127.0.0.1"
    )


def find_chromium() -> str | None:
    """The distribution's Chromium, if installed."""
    for name in _CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def install_chromium(timeout: float = 900) -> tuple[str | None, str]:
    """
    The path of Chromium, installed with ``apt-get`` when missing and running as root.

    :return: the executable, or None and the reason it cannot be had.
    """
    found = find_chromium()
    if found:
        return found, ""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None, "Chromium is not installed, and installing it (apt-get install chromium) needs root"
    if not shutil.which("apt-get"):
        return None, "Chromium is not installed, and there is no apt-get to install it with"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    output = ""
    deadline = time.monotonic() + timeout
    # A fresh machine may have no package lists yet: update once when the first try fails.
    for command in (install, ["apt-get", "update"], install):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=left, check=False)
        output = done.stdout[-1500:] + done.stderr[-1500:]
        if command is install and done.returncode == 0 and find_chromium():
            return find_chromium(), ""
    return None, f"apt-get install chromium failed:\n{output}"


# -- a headless Chromium page -------------------------------------------------------------------------

#: Every browser step waits at most this long (milliseconds).
STEP_MS = 30_000


class Browser:
    """One headless Chromium page; each step that fails leaves a screenshot in ``artifacts``."""

    def __init__(self, page: Any, artifacts: Path, label: str) -> None:
        self.page = page
        self.artifacts = artifacts
        self.label = label

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """
        Run one step; on failure, save a full-page screenshot named after it, then fail.

        :param name: the step, in the screenshot's name.
        """
        try:
            yield
        except BaseException:
            self.artifacts.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(Exception):
                self.page.screenshot(path=str(self.artifacts / f"{self.label}-{name}.png"), full_page=True)
            raise


@contextlib.contextmanager
def open_browser(
    chromium: str, artifacts: Path, label: str, viewport: tuple[int, int] = (1280, 900)
) -> Iterator[Browser]:
    """
    Launch a headless Chromium (``chromium``, an executable) with one page.

    :param artifacts: where a failed step's screenshots go.
    :param label: their names' prefix.
    :param viewport: the page's width and height.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chrome = playwright.chromium.launch(
            executable_path=chromium, args=list(CHROMIUM_ARGS), timeout=STEP_MS
        )
        try:
            page = chrome.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.set_default_timeout(STEP_MS)
            page.set_default_navigation_timeout(STEP_MS)
            yield Browser(page, artifacts, label)
        finally:
            chrome.close()


def sign_in_ui(ui: Browser, api_url: str, password: str) -> None:
    """
    Sign in through the web UI's own form, as ``UI_USER``.

    :param api_url: the api-server's root URL.
    :param password: the user's password (see :func:`enable_ui_login`).
    """
    page = ui.page
    with ui.step("sign-in"):
        page.goto(f"{api_url}/")
        page.get_by_label("Username").fill(UI_USER)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda url: "/login" not in url, timeout=STEP_MS)
