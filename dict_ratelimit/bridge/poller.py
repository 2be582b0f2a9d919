"""One sweep: ListPolicies for every monitored participant, concurrently, validated.

A participant's answer is accepted whole or not at all. Retryable failures are retried
(honouring ``retry-after``) while the sweep's time budget lasts; the rest are reported with
their class so the caller can decide what the run should say. Whatever goes wrong with one
participant (a Bridge error, an answer that fails validation, an exception nobody foresaw) is
that participant's failure alone: the sweep of the others goes on and is stored.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from dict_ratelimit import tracing
from dict_ratelimit.bridge.client import BridgeClient
from dict_ratelimit.bridge.errors import BridgeError
from dict_ratelimit.clock import Clock, SystemClock
from dict_ratelimit.domain.readings import InvalidReading, PolicyReading, validate_listing
from dict_ratelimit.domain.request_stats import RequestStats

log = logging.getLogger(__name__)

DEFAULT_BUDGET_SECONDS = 60.0
MAX_ATTEMPTS = 3
BACKOFF_SECONDS = 0.5


@dataclass(frozen=True)
class ParticipantFailure:
    """Why one participant has no reading this sweep."""

    ispb: str
    error_class: str  # "unavailable", "deadline_exceeded", "invalid_reading", "unexpected_error"
    retryable: bool
    message: str
    attempts: int
    field: str | None = None  # the offending field of an invalid reading


@dataclass
class PollResult:
    """Readings of the participants that answered well, and the failures of the others."""

    polled_at: dt.datetime
    readings: dict[str, list[PolicyReading]] = field(default_factory=dict)
    failures: dict[str, ParticipantFailure] = field(default_factory=dict)
    latency_seconds: dict[str, float] = field(default_factory=dict)
    request_stats: dict[str, RequestStats] = field(default_factory=dict)
    stats_unavailable: dict[str, str] = field(default_factory=dict)  # ispb -> why

    @property
    def all_readings(self) -> list[PolicyReading]:
        return [r for readings in self.readings.values() for r in readings]

    def _stats_window(self, ispb: str) -> tuple[dt.datetime, int] | None:
        """(end, seconds) of the participant's counts, keyed by the DICT time of its first
        reading of the round (so the metrics of every reading of the round, and of later
        readings of the other policies, find them); None without a reading or counts."""
        stats, readings = self.request_stats.get(ispb), self.readings.get(ispb)
        if stats is None or not readings:
            return None
        seconds = max(1, round((stats.window_end - stats.window_start).total_seconds()))
        return min(r.response_time for r in readings), seconds

    def request_stats_rows(self) -> list[tuple[str, str, dt.datetime, int, str, int, int, int]]:
        """Rows for ``policy_request_stats``: (ispb, policy, window end, seconds, responses
        JSON, total, 404s, 429s) for the participants that answered."""
        rows = []
        for ispb, stats in self.request_stats.items():
            window = self._stats_window(ispb)
            if window is None:
                continue
            for policy, counts in stats.by_policy.items():
                responses = json.dumps({str(k): v for k, v in sorted(counts.items())})
                rows.append(
                    (
                        ispb,
                        policy,
                        window[0],
                        window[1],
                        responses,
                        sum(counts.values()),
                        counts.get(404, 0),
                        counts.get(429, 0),
                    )
                )
        return rows

    def request_stats_windows(self) -> list[tuple[str, dt.datetime, int]]:
        """(ispb, window end, seconds) of every window the Bridge reported, traffic or not:
        inside one, a policy without counts had none; outside all, its counts are unknown."""
        windows = []
        for ispb in self.request_stats:
            window = self._stats_window(ispb)
            if window is not None:
                windows.append((ispb, window[0], window[1]))
        return windows


#: The longest window asked for when the previous counts are older (or unknown).
MAX_STATS_WINDOW = dt.timedelta(hours=1)


def stats_windows(
    ispbs: list[str],
    since: Mapping[str, dt.datetime | None],
    now: dt.datetime,
    default: dt.timedelta,
) -> dict[str, dt.timedelta]:
    """Per participant, the window to ask the Bridge's counts for: the time since its previous
    counts (so consecutive windows neither overlap nor leave a gap), ``default`` the first
    time, at least a second and at most ``MAX_STATS_WINDOW``."""
    windows = {}
    for ispb in ispbs:
        previous = since.get(ispb)
        window = now - previous if previous is not None else default
        windows[ispb] = min(MAX_STATS_WINDOW, max(dt.timedelta(seconds=1), window))
    return windows


def poll_participants(
    client: BridgeClient,
    ispbs: list[str],
    known_policies: frozenset[str],
    *,
    max_skew: dt.timedelta | None = dt.timedelta(minutes=10),
    max_concurrency: int = 16,
    budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    stats_window: dt.timedelta | None = None,
    stats_since: Mapping[str, dt.datetime | None] | None = None,
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> PollResult:
    """Poll every participant once (plus retries); never raises for a participant's failure.

    With ``stats_window``, the Bridge's response counts are fetched too: for the time since
    ``stats_since[ispb]`` (our clock) when known, else for ``stats_window``."""
    polled_at = (clock or SystemClock()).now()
    windows = (
        stats_windows(ispbs, stats_since or {}, polled_at, stats_window)
        if stats_window is not None
        else {}
    )
    deadline = time.monotonic() + budget_seconds
    result = PollResult(polled_at=polled_at)

    def fetch_stats(ispb: str) -> None:
        """The Bridge's response counts; any failure here only makes them unknown."""
        try:
            stats = client.request_stats(ispb, windows[ispb])
        except BridgeError as error:
            result.stats_unavailable[ispb] = error.error_class
            log.warning("request stats unavailable: %s", error, extra={"ispb": ispb})
            return
        except InvalidReading as error:
            result.stats_unavailable[ispb] = f"invalid_stats: {error.field}: {error.problem}"
            log.warning("request stats refused: %s", error, extra={"ispb": ispb})
            return
        except Exception as error:  # an answer nobody foresaw: still optional
            result.stats_unavailable[ispb] = f"unexpected_error: {type(error).__name__}"
            log.exception("request stats of %s failed unexpectedly", ispb, extra={"ispb": ispb})
            return
        if stats is None:
            result.stats_unavailable[ispb] = "unimplemented"
        else:
            result.request_stats[ispb] = stats

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
            except InvalidReading as error:
                log.warning(
                    "rejected reading: %s", error, extra={"ispb": ispb, "field": error.field}
                )
                result.failures[ispb] = ParticipantFailure(
                    ispb, "invalid_reading", False, str(error), attempt, error.field
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
                log.warning(
                    "bridge call failed (attempt %d): %s",
                    attempt,
                    error,
                    extra={"ispb": ispb, "error_class": error.error_class},
                )
                if not can_retry:
                    result.failures[ispb] = ParticipantFailure(
                        ispb, error.error_class, error.retryable, str(error), attempt
                    )
                    return
                sleep(wait)
                continue
            except Exception as error:  # a bug or an answer nobody foresaw: this one only
                log.exception(
                    "reading participant %s failed unexpectedly", ispb, extra={"ispb": ispb}
                )
                result.failures[ispb] = ParticipantFailure(
                    ispb,
                    "unexpected_error",
                    False,
                    f"participant {ispb}: unexpected {type(error).__name__}: {error}",
                    attempt,
                )
                return
            if stats_window is not None:
                fetch_stats(ispb)
            return

    workers = max(1, min(max_concurrency, len(ispbs)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bridge-poll") as pool:
        list(pool.map(tracing.carry_context(poll_one), ispbs))  # Bridge spans in this trace
    return result
