"""
An auth manager that can refuse one user one DAG, for the plugin's access tests.

Airflow's simple auth manager gives a role the same rights on every DAG, so it cannot express "this
user may not read that DAG". This subclass refuses :data:`OUTSIDER` every DAG named in the
environment variable :data:`DENIED_DAGS_VAR` (comma-separated) and otherwise defers to the simple
auth manager. Configured like any auth manager: ``[core] auth_manager``
(``AIRFLOW__CORE__AUTH_MANAGER=tests.integration.plugins.auth_manager.OneDagDeniedAuthManager``).
"""

from __future__ import annotations

import os
from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

#: The user refused the DAGs listed in :data:`DENIED_DAGS_VAR`.
OUTSIDER = "outsider"
#: The DAG ids refused to :data:`OUTSIDER`.
DENIED_DAGS_VAR = "FIRERED_TEST_DENIED_DAGS"


class OneDagDeniedAuthManager(SimpleAuthManager):
    """The simple auth manager, except that :data:`OUTSIDER` may not touch the denied DAGs."""

    def is_authorized_dag(
        self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None
    ) -> bool:
        denied = {dag for dag in os.environ.get(DENIED_DAGS_VAR, "").split(",") if dag}
        if user.get_name() == OUTSIDER and details is not None and details.id in denied:
            return False
        return bool(
            super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)
        )
