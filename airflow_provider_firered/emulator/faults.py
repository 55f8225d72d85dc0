"""Injectable faults: what the emulator does instead of (or on top of) a normal answer."""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass
from typing import Any

TARGETS = ("submit", "status", "cdn", "any")
KINDS = (
    "status",  # answer status_code with body/headers
    "drop",  # close the connection without an answer
    "reset_mid_body",  # send headers and half a body, then abort
    "delay",  # wait delay_seconds, then answer normally
    "malformed_json",  # a 2xx with a body that is not JSON
    "missing_fields",  # valid JSON without the documented fields
    "status_value",  # the status endpoint reports status_value
    "pending_status",  # the status endpoint answers status_code while the job is unfinished
    "foreign_polling_url",  # the submit answer's polling_url is on another host
    "wrong_content_type",  # CDN answers text/html
    "truncated",  # CDN announces more bytes than it sends
    "oversized",  # CDN sends size_bytes bytes
)


@dataclass
class Fault:
    """
    One fault to inject.

    :param target: which requests it applies to: ``submit``, ``status``, ``cdn`` or ``any``.
    :param kind: what happens (see ``KINDS``).
    :param status_code: the HTTP status for ``kind="status"`` and ``kind="pending_status"``.
    :param body: the JSON body for ``kind="status"`` (a documented error body when None).
    :param headers: extra answer headers (``Retry-After``, ``Location``, ...).
    :param delay_seconds: the wait for ``kind="delay"``.
    :param status_value: the reported status for ``kind="status_value"``.
    :param size_bytes: the body size for ``kind="oversized"``.
    :param count: apply to the next N matching requests (None: no count limit).
    :param fraction: apply to this fraction of matching requests instead (seeded, deterministic).
    """

    target: str = "any"
    kind: str = "status"
    status_code: int = 500
    body: Any = None
    headers: dict[str, str] | None = None
    delay_seconds: float = 0.0
    status_value: str = ""
    size_bytes: int = 0
    count: int | None = 1
    fraction: float | None = None

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.fraction is not None:
            self.count = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FaultBook:
    """Thread-safe list of active faults; ``take`` consumes the first one that matches."""

    def __init__(self, seed: int = 1234) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._rng = random.Random(seed)

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, target: str) -> Fault | None:
        """Return the fault to apply to a request of ``target``, if any, and count it used."""
        if not self._faults:  # the hot path: no lock when nothing is injected
            return None
        with self._lock:
            for fault in self._faults:
                if fault.target not in (target, "any"):
                    continue
                if fault.fraction is not None:
                    if self._rng.random() < fault.fraction:
                        return fault
                    continue
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                return fault
        return None
