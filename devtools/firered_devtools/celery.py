"""
A deployment with the CeleryExecutor: :class:`~firered_devtools.deployment.AirflowDeployment` whose
scheduler sends tasks through a Redis broker (:mod:`~firered_devtools.redis_server`) to Celery
workers, each ``airflow celery worker`` a process of its own with its own working folder and name,
as if on a machine of its own. Task results go to the metadata database (PostgreSQL).
A development tool (Linux only): the provider never imports it.

Each worker reports its name as the host name of the task instances it runs (Airflow's
``[core] hostname_callable``, :func:`~firered_devtools.celery_worker.worker_hostname`), so the
``task_instance`` and ``task_instance_history`` tables tell which worker ran each try.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass

from firered_devtools.celery_worker import WORKER_VAR
from firered_devtools.deployment import AirflowDeployment, ManagedProcess

#: The name of every worker's process in the deployment's list: ``celery-worker-<n>``.
WORKER_PREFIX = "celery-worker-"


def result_backend(database_url: str) -> str:
    """
    Return Celery's result backend on the metadata database.

    :param database_url: the metadata DB's SQLAlchemy URL.
    """
    return f"db+{database_url}"


@dataclass
class CeleryDeployment(AirflowDeployment):
    """
    A throwaway Airflow deployment with the CeleryExecutor and ``workers`` Celery workers.

    :param broker_url: the Redis broker's URL (``redis://:password@127.0.0.1:port/0``).
    :param workers: how many workers :meth:`start_all` starts.
    :param worker_concurrency: tasks each worker runs at once.
    """

    broker_url: str = ""
    workers: int = 2
    worker_concurrency: int = 2

    def _environment(self) -> dict[str, str]:
        env = super()._environment()
        config = {
            "CORE__EXECUTOR": "CeleryExecutor",
            "CORE__HOSTNAME_CALLABLE": "firered_devtools.celery_worker.worker_hostname",
            # What every task imports is imported once per worker, before its pool forks: the
            # provider through its plugin, S3 and DAG parsing through Celery's ``imports``.
            "CORE__LAZY_LOAD_PLUGINS": "False",
            "CELERY__CELERY_CONFIG_OPTIONS": "firered_devtools.celery_worker.CELERY_CONFIG",
            "CELERY__BROKER_URL": self.broker_url,
            "CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
            "CELERY__SYNC_PARALLELISM": "1",
            "CELERY__OPERATION_TIMEOUT": "10",
        }
        if self.database_url:
            config["CELERY__RESULT_BACKEND"] = result_backend(self.database_url)
        env.update({f"AIRFLOW__{k}": v for k, v in config.items()})
        env.update(self.extra_env)  # the caller's word is the last
        return env

    def use_database(self, url: str) -> None:
        """
        Put the metadata DB, and Celery's results, on ``url`` (a ``postgresql+psycopg2://`` URL).

        :param url: the database's SQLAlchemy URL.
        """
        super().use_database(url)
        self.env["AIRFLOW__CELERY__RESULT_BACKEND"] = result_backend(url)

    def start_all(self, *, background_niceness: int = 0, triggerers: int | None = None) -> None:
        """
        Start the api-server, scheduler, dag-processor, triggerers and the Celery workers.

        :param background_niceness: CPU niceness for all but the triggerers and the workers.
        :param triggerers: how many triggerers to start (default: :attr:`triggerers`).
        """
        # The workers need only the broker and the database: they start while the rest registers.
        workers = [self.start_worker() for _ in range(self.workers)]
        count = self.triggerers if triggerers is None else triggerers
        super().start_all(background_niceness=background_niceness, triggerers=min(count, 1))
        # The others start at once, without waiting for each to register (no job id is noted).
        for _ in range(count - 1):
            self.start_triggerer()
        self.wait_workers_ready(workers)

    def stop_all(self, grace: float = 15) -> list[int]:
        """
        Stop every process started here: all are asked at once (each shuts down on its own), then
        :meth:`AirflowDeployment.stop_all` ends what is left. Return the pids that survived.

        :param grace: seconds the processes have to exit before they are killed.
        """
        running = [proc for proc in self.processes if proc.running()]
        for proc in running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        return super().stop_all(grace)

    # -- workers ---------------------------------------------------------------------------------

    def start_worker(self) -> ManagedProcess:
        """Start one more Celery worker, in its own working folder (it serves no logs: see below)."""
        number = sum(p.name.startswith(WORKER_PREFIX) for p in self.processes) + 1
        name = f"{WORKER_PREFIX}{number}"
        folder = self.home / "workers" / name
        folder.mkdir(parents=True, exist_ok=True)
        env = {**self.env, WORKER_VAR: name}
        argv = [
            str(self.airflow_bin),
            "celery",
            "worker",
            "--celery-hostname",
            name,
            "--concurrency",
            str(self.worker_concurrency),
            "--without-mingle",
            "--without-gossip",
            # Airflow's log server listens on every interface; task logs are read from the shared
            # logs folder instead.
            "--skip-serve-logs",
        ]
        return self.start_command(name, argv, cwd=folder, env=env)

    def start_workers(self, count: int, timeout: float = 120) -> list[ManagedProcess]:
        """
        Start ``count`` workers and wait until each one is ready to take tasks.

        :param timeout: seconds the workers have to be ready.
        """
        started = [self.start_worker() for _ in range(count)]
        self.wait_workers_ready(started, timeout)
        return started

    def wait_workers_ready(self, workers: list[ManagedProcess], timeout: float = 120) -> None:
        """
        Wait until each of ``workers`` is ready to take tasks.

        :param timeout: seconds the workers have to be ready.
        """
        deadline = time.monotonic() + timeout
        for proc in workers:
            while f"{proc.name} ready" not in proc.log_text():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{proc.name} never got ready:\n{proc.log_text()[-4000:]}")
                self.check_running()
                time.sleep(0.5)

    def running_workers(self) -> dict[str, ManagedProcess]:
        """Return the workers started here and not killed, by name."""
        return {p.name: p for p in self.processes if p.name.startswith(WORKER_PREFIX) and p.running()}
