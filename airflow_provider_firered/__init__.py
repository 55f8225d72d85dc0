"""Apache Airflow provider for the FireRed Image Edit API."""

from __future__ import annotations

__version__ = "0.1.0"
