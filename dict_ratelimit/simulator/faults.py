"""Faults injected through the control service: what the next Bridge calls should suffer."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import Enum

MALFORMABLE_FIELDS = (
    "category",
    "response_time",
    "capacity",
    "refill_tokens",
    "refill_period_sec",
    "available_above_capacity",
    "duplicate_policy",
    "unknown_policy",
)


class FaultKind(str, Enum):
    DELAY = "delay"
    UNAVAILABLE = "unavailable"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    PERMISSION_DENIED = "permission_denied"
    MALFORMED = "malformed"


@dataclass
class Fault:
    """One injected fault; ``remaining`` calls left (None: until cleared)."""

    kind: FaultKind
    participant: str | None = None
    remaining: int | None = None
    delay_ms: int = 0
    retry_after_seconds: int = 0
    malformed_field: str = ""

    def __post_init__(self) -> None:
        if self.kind is FaultKind.MALFORMED and self.malformed_field not in MALFORMABLE_FIELDS:
            raise ValueError(
                f"malformed_field must be one of {', '.join(MALFORMABLE_FIELDS)}, "
                f"got {self.malformed_field!r}"
            )
        if self.remaining is not None and self.remaining <= 0:
            self.remaining = None


class FaultBook:
    """Thread-safe list of active faults, consumed call by call."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> int:
        with self._lock:
            self._faults.append(fault)
            return len(self._faults)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, participant: str) -> list[Fault]:
        """Faults that apply to this call (one use of each is consumed)."""
        with self._lock:
            hits = [f for f in self._faults if f.participant in (None, "", participant)]
            for fault in hits:
                if fault.remaining is not None:
                    fault.remaining -= 1
            self._faults = [f for f in self._faults if f.remaining is None or f.remaining > 0]
            return hits
