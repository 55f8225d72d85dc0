"""
An offline FireRed gateway: both submit endpoints, the status endpoint, a CDN, webhooks, faults.

Start it from the shell with ``firered-emulator`` (or ``python -m airflow_provider_firered.emulator``),
or in-process::

    with Emulator().start() as emulator:
        ...  # emulator.gateway_url, emulator.cdn_url, emulator.sample_images, emulator.requests

In another process, as scripts and benchmarks run it, with
:func:`airflow_provider_firered.emulator.process.start_emulator_process`.

It needs the ``emulator`` extra (Pillow).
"""

from __future__ import annotations

from airflow_provider_firered.emulator.faults import Fault
from airflow_provider_firered.emulator.server import Emulator, RecordedRequest

__all__ = ["Emulator", "Fault", "RecordedRequest"]
