"""
Describe what each part of the emulator needs from the running emulator, as protocols.

The server owns the emulator and builds its parts (jobs, gateway, CDN, admin routes); the parts see it
only through these protocols, so no part imports the server and the imports point one way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from airflow_provider_firered.emulator.faults import Fault, FaultBook
    from airflow_provider_firered.emulator.records import RecordedRequest


class JobsHost(Protocol):
    """What the job table reads: timings, the wallet, the CDN's address, webhook settings."""

    balance: int | None
    cdn_url: str
    duplicate_webhooks: bool
    job_ttl_seconds: float
    processing_seconds: float
    queued_seconds: float
    render_edits: bool
    webhook_deliveries: list[dict[str, Any]]


class GatewayHost(Protocol):
    """What the gateway origin reads: keys, limits, the wallet, the models switched off, faults."""

    allow_http_webhooks: bool
    balance: int | None
    disabled_keys: set[str]
    disabled_models: set[str]
    faults: FaultBook
    gateway_url: str
    keys: set[str] | None
    max_concurrent_jobs: int | None
    max_requests_per_second: float | None


class CdnHost(Protocol):
    """What the CDN origin reads: the faults to apply."""

    faults: FaultBook


class AdminHost(Protocol):
    """What the admin routes control: records, faults, timings, the next outcome, a reset."""

    processing_seconds: float
    queued_seconds: float

    @property
    def requests(self) -> list[RecordedRequest]:
        """Return every request recorded."""

    def submissions(self, model: str | None = None) -> list[RecordedRequest]:
        """Return the accepted submits."""

    def inject(self, fault: Fault) -> None:
        """Add a fault."""

    def clear_faults(self) -> None:
        """Remove every fault."""

    def set_timings(
        self, *, queued_seconds: float | None = None, processing_seconds: float | None = None
    ) -> None:
        """Change how long jobs stay queued and processing."""

    def set_next_outcome(self, status: str, error: str = "Emulated failure", count: int = 1) -> None:
        """Make the next jobs end with ``status``."""

    def reset(self) -> None:
        """Forget every request, job and fault."""
