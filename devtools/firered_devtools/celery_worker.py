"""
What the rig's Celery workers import themselves: kept to the standard library and Airflow.

Every Airflow process of a Celery deployment imports this module (``[core] hostname_callable``,
``[celery] celery_config_options``), task processes included, so it imports nothing of the rig.
"""

from __future__ import annotations

import os
import socket
from typing import Any

#: The environment variable that names the worker a process belongs to.
WORKER_VAR = "FIRERED_CELERY_WORKER"

#: Modules a catalogue task imports at each start (object storage on S3, the provider, Airflow's DAG
#: parsing): a worker imports them once, before its pool forks, so every task process inherits them.
PRELOADED = (
    "s3fs",
    "airflow.providers.amazon.aws.fs.s3",
    "airflow.dag_processing.dagbag",
    "airflow_provider_firered.operators.firered_batch",
)


def worker_hostname() -> str:
    """Return the name of the Celery worker this process belongs to, else the machine's name."""
    return os.environ.get(WORKER_VAR) or socket.getfqdn()


def _config() -> dict[str, Any]:
    from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

    return {**DEFAULT_CELERY_CONFIG, "imports": PRELOADED}


#: Airflow's default Celery settings, with :data:`PRELOADED` as Celery's ``imports``.
CELERY_CONFIG = _config()
