"""
A real Airflow deployment on loopback for end-to-end tests and benchmarks: api-server, scheduler
(LocalExecutor), dag-processor and one or more triggerers, each a separate process, in a throwaway
AIRFLOW_HOME on SQLite (or on a PostgreSQL database, see :mod:`~firered_devtools.postgres`),
with the emulator beside it. A development tool (Linux only): the provider never imports it.

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
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_firered.emulator.process import EmulatorProcess, start_emulator_process
from firered_devtools.processes import (
    alive,
    descendants,
    free_port,
    launch,
    non_loopback_listeners,
    pids_with_env,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

#: The environment variable that tags every process of one deployment.
MARKER_VAR = "FIRERED_E2E_DEPLOYMENT"


@dataclass
class ManagedProcess:
    """One long-running process started by the deployment."""

    name: str
    popen: subprocess.Popen[Any]
    log_path: Path
    #: For a triggerer started by :meth:`AirflowDeployment.start_triggerers`: its row in the ``job`` table.
    job_id: int | None = None

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
    :param database_url: the metadata DB's SQLAlchemy URL (``postgresql+psycopg2://...``); None for
        a SQLite file in ``home``. Can also be set later with :meth:`use_database`.
    :param triggerers: how many triggerers :meth:`start_all` starts.
    """

    home: Path
    dags_folder: Path
    extra_env: Mapping[str, str] = field(default_factory=dict)
    airflow_bin: Path = field(default_factory=lambda: Path(sys.executable).parent / "airflow")
    parallelism: int = 2
    database_url: str | None = None
    triggerers: int = 1
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
            # Airflow derives the async URL from this one (postgresql -> postgresql+asyncpg).
            "DATABASE__SQL_ALCHEMY_CONN": self.database_url or f"sqlite:///{self.db_path}",
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

    def use_database(self, url: str) -> None:
        """
        Put the metadata DB on ``url`` (a ``postgresql+psycopg2://`` URL) instead of SQLite; call it
        before ``db migrate`` and before any process starts.
        """
        if self.processes:
            raise RuntimeError("use_database() must come before any process is started")
        self.database_url = url
        self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = url

    @property
    def on_postgres(self) -> bool:
        return bool(self.database_url) and str(self.database_url).startswith("postgresql")

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

    def start_command(
        self, name: str, argv: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None
    ) -> ManagedProcess:
        """
        Start any command with the deployment's environment (and marker) in its own process group.

        :param cwd: its working folder (default: the deployment's home).
        :param env: its environment (default: :attr:`env`); it must carry the marker too.
        """
        log_path = self.logs / f"{name}.log"
        popen = launch(argv, self.home if cwd is None else cwd, log_path, self.env if env is None else env)
        return self.track(name, popen, log_path)

    def track(self, name: str, popen: subprocess.Popen[Any], log_path: Path) -> ManagedProcess:
        """Count a process started elsewhere (with :attr:`env`) as part of the deployment."""
        proc = ManagedProcess(name, popen, log_path)
        self.processes.append(proc)
        return proc

    def start_all(self, *, background_niceness: int = 0, triggerers: int | None = None) -> None:
        """
        Start the four components of a deployment.

        :param background_niceness: CPU niceness for all but the triggerers (the scheduler's workers
            inherit it), so that on a small machine a triggerer is not starved by busy workers.
        :param triggerers: how many triggerers to start (default: :attr:`triggerers`). With more than
            one, each is started once the one before has registered, so each knows its job id.
        """
        nice = background_niceness
        self.start(
            "api-server", "api-server", "--port", str(self.api_port), "--host", "127.0.0.1", niceness=nice
        )
        # Airflow's log server listens on every interface: not started (task logs are read from the
        # deployment's own logs folder), so nothing of the deployment leaves loopback.
        self.start("scheduler", "scheduler", "--skip-serve-logs", niceness=nice)
        self.start("dag-processor", "dag-processor", niceness=nice)
        count = self.triggerers if triggerers is None else triggerers
        if count == 1:
            self.start_triggerer()
        else:
            self.start_triggerers(count)

    def start_triggerer(self) -> ManagedProcess:
        """Start one more triggerer (without Airflow's log server, which listens on every interface)."""
        count = sum(p.name.startswith("triggerer") for p in self.processes)
        return self.start(f"triggerer-{count + 1}", "triggerer", "--skip-serve-logs")

    def start_triggerers(self, count: int, timeout: float = 120) -> list[ManagedProcess]:
        """
        Start ``count`` triggerers one after the other, each once the previous one has its row in
        the ``job`` table, and note each one's :attr:`ManagedProcess.job_id` (the ``triggerer_id`` of
        the triggers it runs).

        :param timeout: seconds each triggerer has to register.
        """
        started = []
        for _ in range(count):
            known = {job_id for (job_id,) in self.query(TRIGGERER_JOBS)}
            proc = self.start_triggerer()
            deadline = time.monotonic() + timeout
            while not (new := [job_id for (job_id,) in self.query(TRIGGERER_JOBS) if job_id not in known]):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{proc.name} never registered:\n{proc.log_text()[-4000:]}")
                self.check_running()
                time.sleep(0.5)
            proc.job_id = int(min(new))
            started.append(proc)
        return started

    def running_triggerers(self) -> list[ManagedProcess]:
        """The triggerers started here and not killed."""
        return [p for p in self.processes if p.name.startswith("triggerer") and p.running()]

    # -- stopping -------------------------------------------------------------------------------------

    def kill(self, proc: ManagedProcess) -> None:
        """SIGKILL a process, its group and its descendants at once: a crash, not a shutdown."""
        self.killed.append(proc)
        victims = descendants(proc.pid)
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
        victims = [*busy, *(child for pid in busy for child in descendants(pid))]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return victims

    def titles(self) -> dict[int, str]:
        """
        The process title of every live process started here and of their descendants (found by
        ancestry: a title set with setproctitle overwrites the environment that carries the marker).
        """
        pids = {
            pid for proc in self.processes if proc.running() for pid in (proc.pid, *descendants(proc.pid))
        }
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
            while (left := pids_with_env(MARKER_VAR, self.marker)) and time.monotonic() < deadline:
                for pid in left:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)
                time.sleep(0.5)
        return [pid for pid in pids_with_env(MARKER_VAR, self.marker) if alive(pid)]

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
                exposed = non_loopback_listeners(list(self.titles()))
                if exposed:
                    raise RuntimeError(f"the deployment listens beyond loopback: {exposed}")
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
    def db(self) -> Iterator[Any]:
        """
        A read-only DB-API connection to the metadata DB (never writes, never holds a lock for
        long): :mod:`sqlite3` on SQLite, psycopg2 on PostgreSQL.
        """
        if self.on_postgres:
            with postgres_connection(str(self.database_url)) as conn:
                yield conn
            return
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            yield conn
        finally:
            conn.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """
        Run a read-only query, retrying briefly while a writer holds the database. Parameters are
        written ``?`` (SQLite's style) whatever the database.
        """
        if self.on_postgres:
            return postgres_query(str(self.database_url), sql, params)
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


#: The triggerers' rows in the ``job`` table.
TRIGGERER_JOBS = "SELECT id FROM job WHERE job_type = 'TriggererJob'"


@contextlib.contextmanager
def postgres_connection(url: str) -> Iterator[Any]:
    """A read-only autocommit psycopg2 connection to a ``postgresql[+driver]://`` SQLAlchemy URL."""
    import psycopg2  # the test extra's; only needed on PostgreSQL

    scheme, rest = url.split(":", 1)
    conn = psycopg2.connect(f"{scheme.split('+', 1)[0]}:{rest}", connect_timeout=10)
    try:
        conn.set_session(readonly=True, autocommit=True)
        yield conn
    finally:
        conn.close()


def postgres_query(url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run a read-only query written with ``?`` parameters on PostgreSQL, retrying a lost connection."""
    import psycopg2
    import psycopg2.errors

    statement = sql.replace("%", "%%").replace("?", "%s")
    for attempt in range(5):
        try:
            with postgres_connection(url) as conn, conn.cursor() as cursor:
                cursor.execute(statement, tuple(params))
                return [tuple(row) for row in cursor.fetchall()]
        except (psycopg2.OperationalError, psycopg2.errors.UndefinedTable):
            if attempt == 4:
                raise
            time.sleep(0.5)
    return []


def start_emulator(deployment: AirflowDeployment, *args: str, timeout: float = 60) -> EmulatorProcess:
    """
    Start the emulator's command line as part of ``deployment`` (its environment and marker, its
    output in ``process-logs/emulator.log``, stopped with the rest).

    :param args: more emulator flags (``--processing-seconds 20``, ...).
    """
    log_path = deployment.logs / "emulator.log"
    emulator = start_emulator_process(
        *args, env=deployment.env, cwd=deployment.home, log_path=log_path, timeout=timeout
    )
    deployment.track("emulator", emulator.popen, log_path)
    return emulator


def trigger_logs(
    deployment: AirflowDeployment, dag_id: str, run_id: str, task_id: str, event: str = " starting"
) -> dict[int, set[int]]:
    """
    For each map index of a task, the ids of the triggerer jobs that started its trigger (or, with
    ``event``, whose trigger log for it has that text: ``"Trigger fired event"`` for the one that
    finished it).

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
        if event in text:
            index = int(path.parent.name.split("=", 1)[1])
            started.setdefault(index, set()).add(int(path.name.rsplit(".", 2)[-2]))
    return started
