"""Provider registration, read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_firered import __version__
from airflow_provider_firered.gateway.connection_extras import conn_fields, provider_field_behaviour

_INTEGRATION = "FireRed Image Edit"


def get_provider_info() -> dict[str, Any]:
    """
    Describe the provider to Airflow: its modules, the ``firered`` connection type and its form.

    Every module that defines a hook, an operator, a sensor or a trigger is listed (a test walks the
    package to keep it so), and the whole validates against Airflow's ``provider_info.schema.json``.
    """
    return {
        "package-name": "airflow-provider-firered",
        "name": "FireRed Image Edit",
        "description": "Edit images with the FireRed Image Edit API from Airflow: a hook, deferrable "
        "operators for one edit and for a batch, their triggers and a sensor.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": _INTEGRATION,
                "external-doc-url": "https://www.pixazo.ai/models/firered-image-edit",
                "tags": ["software"],
            }
        ],
        "hooks": [
            {"integration-name": _INTEGRATION, "python-modules": ["airflow_provider_firered.hooks.firered"]}
        ],
        "operators": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": [
                    "airflow_provider_firered.operators.firered",
                    "airflow_provider_firered.operators.firered_batch",
                ],
            }
        ],
        "sensors": [
            {"integration-name": _INTEGRATION, "python-modules": ["airflow_provider_firered.sensors.firered"]}
        ],
        "triggers": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": [
                    "airflow_provider_firered.triggers.firered",
                    "airflow_provider_firered.triggers.firered_batch",
                ],
            }
        ],
        "connection-types": [
            {
                "hook-class-name": "airflow_provider_firered.hooks.firered.FireRedHook",
                "hook-name": "FireRed Image Edit",
                "connection-type": "firered",
                # Airflow 3.2+ builds the form from these; 3.0/3.1 call FireRedHook.get_ui_field_behaviour.
                # Both come from the one declaration in connection_extras.
                "ui-field-behaviour": provider_field_behaviour(),
                "conn-fields": conn_fields(),
            }
        ],
        "extra-links": [
            "airflow_provider_firered.operators.links.FireRedOutputLink",
            "airflow_provider_firered.plugins.links.FireRedContactSheetLink",
        ],
        # The contact sheet in Airflow's UI. Airflow reads this entry only with [core]
        # lazy_discover_providers = False; the "airflow.plugins" entry point loads it otherwise.
        "plugins": [
            {"name": "firered", "plugin-class": "airflow_provider_firered.plugins.firered.FireRedPlugin"}
        ],
    }
