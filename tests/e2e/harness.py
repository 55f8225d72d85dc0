"""
A real Airflow deployment on loopback for end-to-end tests: api-server, scheduler (LocalExecutor),
dag-processor and triggerer, each a separate process, in a throwaway AIRFLOW_HOME on SQLite.

Every process gets a unique marker in its environment. Airflow's task supervisor moves each task into
its own process group, so stopping a process group is not enough to stop everything: after the groups,
any process that still carries the marker (a task, a triggerer child) is stopped too. Only processes
started here carry it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The environment variable that tags every process of one deployment.
MARKER_VAR = "FIRERED_E2E_DEPLOYMENT"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pids_with_marker(marker: str) -> list[int]:
    """Pids of live processes whose environment carries ``MARKER_VAR=marker`` (Linux /proc only)."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:  # gone, or not ours
            continue
        # A zombie has released its environment already; its parent reaps it.
        if needle in environ.split(b"\0") and stat.rsplit(")", 1)[-1].split()[0] != "Z":
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class ManagedProcess:
    """One long-running process started by the deployment."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class AirflowDeployment:
    """
    A throwaway Airflow deployment. Configuration goes through ``AIRFLOW__*`` variables only, so no
    process reads the user's own ``airflow.cfg`` and nothing outside ``home`` is written.

    :param home: the AIRFLOW_HOME (created if missing).
    :param dags_folder: the DAGs to serve.
    :param extra_env: more environment for every process (connections, variables).
    :param airflow_bin: the ``airflow`` executable; defaults to the one beside this Python.
    """

    home: Path
    dags_folder: Path
    extra_env: Mapping[str, str] = field(default_factory=dict)
    airflow_bin: Path = field(default_factory=lambda: Path(sys.executable).parent / "airflow")
    parallelism: int = 2
    marker: str = field(default_factory=lambda: secrets.token_hex(8))
    processes: list[ManagedProcess] = field(default_factory=list)
    #: Processes killed on purpose (a crash under test): their exit is expected.
    killed: list[ManagedProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs = self.home / "process-logs"
        self.logs.mkdir(exist_ok=True)
        self.api_port = free_port()
        self.db_path = self.home / "airflow.db"
        self.env = self._environment()

    # -- configuration ----------------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        # Start from a clean slate: no AIRFLOW_* from the calling shell or test session leaks in.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}
        api = f"http://127.0.0.1:{self.api_port}"
        config = {
            "CORE__DAGS_FOLDER": str(self.dags_folder),
            "CORE__EXECUTOR": "LocalExecutor",
            "CORE__PARALLELISM": str(self.parallelism),
            "CORE__LOAD_EXAMPLES": "False",
            "CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "CORE__FERNET_KEY": "",
            "DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db_path}",
            "API__HOST": "127.0.0.1",
            "API__PORT": str(self.api_port),
            "API__BASE_URL": api,
            "API__WORKERS": "1",
            "API__SECRET_KEY": secrets.token_hex(16),
            # The scheduler signs task tokens and the api-server checks them: one shared secret.
            "API_AUTH__JWT_SECRET": secrets.token_hex(32),
            # Log servers default to fixed ports (8793/8794); free ones let deployments coexist.
            "LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            # Only runs the test triggers: no cron run may appear while the test counts requests.
            "SCHEDULER__USE_JOB_SCHEDULE": "False",
            "SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            "DAG_PROCESSOR__PARSING_PROCESSES": "1",
            # A killed triggerer is declared dead after this many seconds, so a new one takes over.
            "TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "6",
        }
        env.update({f"AIRFLOW__{k}": v for k, v in config.items()})
        env["AIRFLOW_HOME"] = str(self.home)
        env[MARKER_VAR] = self.marker
        env.update(self.extra_env)
        return env

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    # -- commands -----------------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run an ``airflow`` CLI command to completion (bounded by ``timeout``)."""
        result = subprocess.run(
            [str(self.airflow_bin), *args],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"airflow {' '.join(args)} exited {result.returncode}\n"
                f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
            )
        return result

    def start(self, name: str, *args: str, niceness: int = 0) -> ManagedProcess:
        """
        Start ``airflow <args>`` in its own process group, its output in ``process-logs/<name>.log``.

        :param niceness: run it (and the processes it starts) at this lower CPU priority.
        """
        prefix = ["nice", "-n", str(niceness)] if niceness else []
        return self.start_command(name, [*prefix, str(self.airflow_bin), *args])

    def start_command(self, name: str, argv: Sequence[str], *, stdout_pipe: bool = False) -> ManagedProcess:
        """
        Start any command with the deployment's environment (and marker) in its own process group.

        :param stdout_pipe: keep stdout as a pipe (to read a first line); stderr still goes to the log.
        """
        log_path = self.logs / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                list(argv),
                env=self.env,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else log,
                stderr=log if stdout_pipe else subprocess.STDOUT,
                start_new_session=True,
            )
        proc = ManagedProcess(name, popen, log_path)
        self.processes.append(proc)
        return proc

    def start_all(self, *, background_niceness: int = 0) -> None:
        """
        Start the four components of a deployment.

        :param background_niceness: CPU niceness for all but the triggerer (the scheduler's workers
            inherit it), so that on a small machine the triggerer is not starved by busy workers.
        """
        nice = background_niceness
        self.start(
            "api-server", "api-server", "--port", str(self.api_port), "--host", "127.0.0.1", niceness=nice
        )
        self.start("scheduler", "scheduler", niceness=nice)
        self.start("dag-processor", "dag-processor", niceness=nice)
        self.start_triggerer()

    def start_triggerer(self) -> ManagedProcess:
        count = sum(p.name.startswith("triggerer") for p in self.processes)
        return self.start(f"triggerer-{count + 1}", "triggerer")

    # -- stopping -------------------------------------------------------------------------------------

    def kill(self, proc: ManagedProcess) -> None:
        """SIGKILL a process, its group and its descendants at once: a crash, not a shutdown."""
        self.killed.append(proc)
        victims = self._tree(proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=10)

    def kill_busy_workers(self) -> list[int]:
        """
        SIGKILL every LocalExecutor worker that is running a task, with the task's processes: a
        worker machine lost mid-task. Returns the pids killed.
        """
        busy = [
            pid for pid, title in self.titles().items() if "LocalExecutor" in title and "<idle>" not in title
        ]
        victims = [*busy, *(child for pid in busy for child in self._tree(pid))]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return victims

    def titles(self) -> dict[int, str]:
        """
        The process title of every live process started here and of their descendants (found by
        ancestry: a title set with setproctitle overwrites the environment that carries the marker).
        """
        pids = {pid for proc in self.processes if proc.running() for pid in (proc.pid, *self._tree(proc.pid))}
        titles = {}
        for pid in pids:
            with contextlib.suppress(OSError):
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                titles[pid] = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        return titles

    def stop(self, proc: ManagedProcess, grace: float = 15) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after ``grace`` seconds."""
        if proc.running():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill(proc)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers left in the group

    def stop_all(self, grace: float = 15) -> list[int]:
        """Stop every process started here; return the pids that survived (there should be none)."""
        for proc in reversed(self.processes):
            self.stop(proc, grace)
        # Tasks and triggerer children live in process groups of their own: find them by the marker.
        for sig, wait in ((signal.SIGTERM, grace / 2), (signal.SIGKILL, 5.0)):
            deadline = time.monotonic() + wait
            while (left := _pids_with_marker(self.marker)) and time.monotonic() < deadline:
                for pid in left:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)
                time.sleep(0.5)
        return [pid for pid in _pids_with_marker(self.marker) if _alive(pid)]

    def _tree(self, root: int) -> list[int]:
        """``root``'s descendants, read from /proc before anything is killed (orphans get reparented)."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[-1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], [root]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        return found

    # -- observing ---------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any] | None:
        """The api-server's health document, or None while it is not answering."""
        try:
            with urllib.request.urlopen(f"{self.api_url}/api/v2/monitor/health", timeout=5) as resp:
                return dict(json.loads(resp.read()))
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def wait_healthy(self, timeout: float, components: Sequence[str] = ("scheduler", "triggerer")) -> None:
        """Wait until the api-server answers and reports ``components`` healthy."""
        deadline = time.monotonic() + timeout
        health: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            self.check_running()
            health = self.health()
            if health and all(
                (health.get(name) or {}).get("status") == "healthy" for name in ("metadatabase", *components)
            ):
                return
            time.sleep(1)
        raise TimeoutError(f"deployment not healthy after {timeout:.0f}s: {health}\n{self.tail_logs()}")

    def wait_parsed(self, dag_id: str, deadline: float) -> None:
        """Wait until the dag-processor has serialized ``dag_id`` (``deadline`` on the monotonic clock)."""
        while not self.query("SELECT 1 FROM serialized_dag WHERE dag_id = ?", (dag_id,)):
            assert time.monotonic() < deadline, f"{dag_id} never parsed:\n{self.tail_logs()}"
            self.check_running()
            time.sleep(1)

    def trigger(self, dag_id: str, run_id: str, conf: Mapping[str, Any] | None = None) -> None:
        """Unpause ``dag_id`` and trigger a run of it named ``run_id``."""
        self.cli("dags", "unpause", dag_id)
        self.cli(
            "dags", "trigger", dag_id, "--run-id", run_id, *(("--conf", json.dumps(conf)) if conf else ())
        )

    def run_state(self, run_id: str) -> str | None:
        rows = self.query("SELECT state FROM dag_run WHERE run_id = ?", (run_id,))
        return str(rows[0][0]) if rows else None

    def wait_run(self, run_id: str, deadline: float) -> str:
        """Wait until the run ends; return its state (``success`` or ``failed``)."""
        while (state := self.run_state(run_id)) not in ("success", "failed"):
            assert time.monotonic() < deadline, f"run {run_id} not finished:\n{self.tail_logs()}"
            self.check_running()
            time.sleep(1)
        return str(state)

    def check_running(self) -> None:
        """Fail fast, with its log, if a component died on its own."""
        for proc in self.processes:
            if any(proc is k for k in self.killed):
                continue
            if not proc.running():
                raise RuntimeError(
                    f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_text()[-6000:]}"
                )

    def current_triggerer(self) -> ManagedProcess | None:
        triggerers = [p for p in self.processes if p.name.startswith("triggerer")]
        return triggerers[-1] if triggerers else None

    @contextlib.contextmanager
    def db(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection to the metadata DB (never writes, never holds a lock for long)."""
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            yield conn
        finally:
            conn.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query, retrying briefly while a writer holds the database."""
        for attempt in range(20):
            try:
                with self.db() as conn:
                    return list(conn.execute(sql, params).fetchall())
            except sqlite3.OperationalError as err:
                transient = "locked" in str(err) or "no such table" in str(err)
                if not transient or attempt == 19:
                    raise
                time.sleep(0.25)
        return []

    def tail_logs(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {p.name} ({p.log_path}) ---\n{p.log_text()[-chars:]}" for p in self.processes)


@dataclass
class EmulatorProcess:
    """The FireRed emulator, run through its command line like a user would."""

    process: ManagedProcess
    info: dict[str, Any]

    @property
    def gateway_url(self) -> str:
        return str(self.info["gateway_url"])

    @property
    def sample_images(self) -> list[str]:
        return list(self.info.get("sample_images") or [])

    def control(self, method: str, path: str, body: Any = None) -> Any:
        """Call the emulator's out-of-process control API (``/_emulator/...``)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.gateway_url}/_emulator/{path.lstrip('/')}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None


def start_emulator(deployment: AirflowDeployment, *args: str, timeout: float = 60) -> EmulatorProcess:
    """Start ``python -m airflow_provider_firered.emulator`` and read the JSON of its first line."""
    argv = [
        sys.executable,
        "-m",
        "airflow_provider_firered.emulator",
        "--port",
        "0",
        "--cdn-port",
        "0",
        *args,
    ]
    proc = deployment.start_command("emulator", argv, stdout_pipe=True)
    stdout = proc.popen.stdout
    assert stdout is not None
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not lines or not lines[0]:
        raise RuntimeError(f"the emulator printed no first line within {timeout:.0f}s:\n{proc.log_text()}")

    def drain() -> None:  # keep the pipe flowing so the emulator never blocks on a full buffer
        with proc.log_path.open("ab") as log:
            for line in stdout:
                log.write(line)

    threading.Thread(target=drain, daemon=True).start()
    return EmulatorProcess(proc, dict(json.loads(lines[0])))


def trigger_logs(
    deployment: AirflowDeployment, dag_id: str, run_id: str, task_id: str
) -> dict[int, set[int]]:
    """
    For each map index of a task, the ids of the triggerer jobs that started its trigger.

    A triggerer writes a task's trigger log beside its task log, named ``<task log>.trigger.<job id>.log``,
    from the moment it starts the trigger.
    """
    started: dict[int, set[int]] = {}
    root = deployment.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    for path in root.glob("map_index=*/attempt=*.log.trigger.*.log"):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if " starting" in text:
            index = int(path.parent.name.split("=", 1)[1])
            started.setdefault(index, set()).add(int(path.name.rsplit(".", 2)[-2]))
    return started


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
