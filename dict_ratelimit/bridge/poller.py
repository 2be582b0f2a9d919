"""One sweep: ListPolicies for every monitored participant, concurrently, validated.

A participant's answer is accepted whole or not at all. Retryable failures are retried
(honouring ``retry-after``) while the sweep's time budget lasts; the rest are reported with
their class so the caller can decide what the run should say.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from dict_ratelimit.bridge.client import BridgeClient
from dict_ratelimit.bridge.errors import BridgeError
from dict_ratelimit.domain.readings import InvalidReading, PolicyReading, validate_listing

log = logging.getLogger(__name__)

DEFAULT_BUDGET_SECONDS = 60.0
MAX_ATTEMPTS = 3
BACKOFF_SECONDS = 0.5


@dataclass(frozen=True)
class ParticipantFailure:
    """Why one participant has no reading this sweep."""

    ispb: str
    error_class: str  # "unavailable", "deadline_exceeded", "invalid_reading", ...
    retryable: bool
    message: str
    attempts: int


@dataclass
class PollResult:
    """Readings of the participants that answered well, and the failures of the others."""

    polled_at: dt.datetime
    readings: dict[str, list[PolicyReading]] = field(default_factory=dict)
    failures: dict[str, ParticipantFailure] = field(default_factory=dict)
    latency_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def all_readings(self) -> list[PolicyReading]:
        return [r for readings in self.readings.values() for r in readings]


def poll_participants(
    client: BridgeClient,
    ispbs: list[str],
    known_policies: frozenset[str],
    *,
    max_skew: dt.timedelta | None = dt.timedelta(minutes=10),
    max_concurrency: int = 16,
    budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
    sleep: Callable[[float], None] = time.sleep,
) -> PollResult:
    """Poll every participant once (plus retries); never raises for a participant's failure."""
    polled_at = now()
    deadline = time.monotonic() + budget_seconds
    result = PollResult(polled_at=polled_at)

    def poll_one(ispb: str) -> None:
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                listing = client.list_policies(ispb)
                result.latency_seconds[ispb] = time.monotonic() - started
                result.readings[ispb] = validate_listing(
                    listing,
                    polled_at,
                    known_policies,
                    max_skew=max_skew,
                )
                return
            except InvalidReading as error:
                log.warning("rejected reading: %s", error)
                result.failures[ispb] = ParticipantFailure(
                    ispb, "invalid_reading", False, str(error), attempt
                )
                return
            except BridgeError as error:
                wait = error.retry_after if error.retry_after is not None else BACKOFF_SECONDS
                wait *= 1 if error.retry_after is not None else attempt
                can_retry = (
                    error.retryable
                    and attempt < MAX_ATTEMPTS
                    and time.monotonic() + wait < deadline
                )
                log.warning("bridge call failed (attempt %d): %s", attempt, error)
                if not can_retry:
                    result.failures[ispb] = ParticipantFailure(
                        ispb, error.error_class, error.retryable, str(error), attempt
                    )
                    return
                sleep(wait)

    workers = max(1, min(max_concurrency, len(ispbs)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bridge-poll") as pool:
        list(pool.map(poll_one, ispbs))
    return result
