"""
The Airflow web UI in end-to-end tests: signing in, the api-server alone, a headless Chromium.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
