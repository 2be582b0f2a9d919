"""A Prometheus collector that reads Postgres at scrape time and keeps no state of its own.

Every scrape runs a handful of index-driven queries (latest metrics per policy, open alerts,
alert totals, the latest monitor sweep, the outbox backlog) and turns them into series with
the labels ``ispb``, ``policy`` and ``category`` only (bounded: participants × 30 policies).
Names of the system we replace are kept (``dict_rate_limit_available_tokens``, ...), so the
runbooks that query them keep working. A value that is unknown or "never" is *absent*, never 0:
a 0 s exhaustion projection would page someone.

When Postgres is unreachable the scrape still answers: ``dict_rate_limit_exporter_database_up``
is 0 and the error counter grows, and the next scrape reconnects (pre-ping on the pool).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import Connection, Engine

from dict_ratelimit.bridge.errors import PERMANENT_CODES, RETRYABLE_CODES
from dict_ratelimit.clock import Clock, SystemClock
from dict_ratelimit.domain.thresholds import Level

log = logging.getLogger(__name__)

PREFIX = "dict_rate_limit_"
POLICY_LABELS = ["ispb", "policy", "category"]
MONITOR_BUDGET_POLICIES = ("POLICIES_LIST", "POLICIES_READ")
#: Every class a sweep can report (gRPC codes, an invalid reading, an unknown error): each
#: gets its counter at 0, so ``increase()`` sees the first error.
ERROR_CLASSES = sorted(
    {code.name.lower() for code in RETRYABLE_CODES | PERMANENT_CODES}
    | {"invalid_reading", "unexpected_error", "error"}
)

_LATEST = """
SELECT h.ispb, h.policy, coalesce(pa.category, '?') AS category, h.available_tokens,
       h.capacity, h.remaining_ratio, h.refill_per_min, h.demand_per_min,
       h.demand_lower_per_min, h.demand_upper_per_min, h.exhaustion_state, h.time_to_429_s,
       h.recovery_state, h.recovery_to_clear_s, h.recovery_to_full_s, h.not_found_share,
       h.level
FROM dict_ratelimit.latest_policy_health AS h
JOIN dict_ratelimit.participant AS pa USING (ispb)
"""

_OPEN_ALERTS = """
SELECT a.ispb, a.policy, coalesce(a.category, pa.category, '?') AS category, a.status,
       a.severity, extract(epoch FROM a.opened_at) AS opened_at
FROM dict_ratelimit.alert AS a
LEFT JOIN dict_ratelimit.participant AS pa USING (ispb)
WHERE a.status <> 'resolved'
"""

# running totals kept by the writers (never a count over all of history)
_ALERT_TOTALS = """
SELECT ispb, opened AS created, resolved FROM dict_ratelimit.alert_counter
"""

# the newest sweep: ordered on the column itself (an index scan of the newest partition),
# not on an output expression
_LATEST_TICK = """
SELECT extract(epoch FROM t.polled_at) AS polled_epoch, t.duration_seconds, t.bridge_seconds,
       t.participants, t.answered, t.failed
FROM dict_ratelimit.monitor_tick AS t ORDER BY t.polled_at DESC LIMIT 1
"""

_MONITOR_COUNTERS = """
SELECT counter, value FROM dict_ratelimit.monitor_counter
"""

_OUTBOX = """
SELECT count(*) AS waiting, extract(epoch FROM min(created_at)) AS oldest_created
FROM dict_ratelimit.alert_event WHERE published_at IS NULL
"""

_PARTICIPANT_FRESHNESS = """
SELECT ispb, coalesce(category, '?') AS category, extract(epoch FROM last_received_at) AS received
FROM dict_ratelimit.participant WHERE last_received_at IS NOT NULL
"""


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class _Families:
    """The gauge families of one scrape, created once and filled row by row."""

    def __init__(self) -> None:
        self.all: list[Metric] = []

    def gauge(self, name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(PREFIX + name, documentation, labels=labels)
        self.all.append(family)
        return family

    def counter(self, name: str, documentation: str, labels: list[str]) -> CounterMetricFamily:
        family = CounterMetricFamily(PREFIX + name, documentation, labels=labels)
        self.all.append(family)
        return family


class DictRateLimitCollector(Collector):
    """Reads the application database on every ``collect()``."""

    def __init__(self, engine: Engine, *, clock: Clock | None = None) -> None:
        self.engine = engine
        self.clock = clock or SystemClock()
        self._lock = threading.Lock()  # one scrape at a time: a slow one must not pile up
        self._errors = 0

    def describe(self) -> Iterator[Metric]:
        return iter(())  # unchecked collector: series depend on the data

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        with self._lock:
            try:
                with self.engine.connect() as connection:
                    families = self._read(connection)
                up = 1.0
            except sa.exc.SQLAlchemyError as error:
                self._errors += 1
                reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
                log.error("scrape failed: database unavailable: %s", reason)
                families = []
                up = 0.0
        yield from families
        database_up = GaugeMetricFamily(
            PREFIX + "exporter_database_up",
            "1 when the last scrape read the database, 0 when it could not",
        )
        database_up.add_metric([], up)
        yield database_up
        errors = CounterMetricFamily(
            PREFIX + "exporter_scrape_errors", "Scrapes that could not read the database"
        )
        errors.add_metric([], self._errors)
        yield errors
        duration = GaugeMetricFamily(
            PREFIX + "exporter_scrape_duration_seconds", "Time spent reading the database"
        )
        duration.add_metric([], time.perf_counter() - started)
        yield duration

    def _read(self, connection: Connection) -> list[Metric]:
        f = _Families()
        labels = POLICY_LABELS
        available = f.gauge(
            "available_tokens", "Tokens left in the bucket (may be negative)", labels
        )
        capacity = f.gauge("capacity", "Bucket capacity (tokens)", labels)
        utilization = f.gauge(
            "utilization_percent", "Percent of the bucket used (100 - remaining)", labels
        )
        remaining = f.gauge("remaining_ratio", "Share of the bucket left (0-1)", labels)
        refill = f.gauge("refill_rate_per_minute", "Tokens the bucket regains per minute", labels)
        demand = f.gauge(
            "consumption_rate_per_minute",
            "Estimated demand (tokens/min), refill-aware point estimate",
            labels,
        )
        demand_low = f.gauge(
            "consumption_rate_lower_per_minute",
            "Lowest demand consistent with the readings",
            labels,
        )
        demand_high = f.gauge(
            "consumption_rate_upper_per_minute",
            "Highest demand consistent with the readings",
            labels,
        )
        exhaustion = f.gauge(
            "exhaustion_projection_seconds",
            "Seconds to the first 429 at the estimated demand; absent when never or unknown",
            labels,
        )
        recovery = f.gauge(
            "recovery_eta_seconds",
            "Seconds until the bucket is full again at the estimated demand; absent when never "
            "or unknown, 0 when full",
            labels,
        )
        recovery_clear = f.gauge(
            "recovery_to_clear_seconds",
            "Seconds until the bucket is past the clear threshold; 0 when it already is",
            labels,
        )
        not_found = f.gauge(
            "error_404_rate", "Share of 404 among DICT responses (0-1); absent when unknown", labels
        )
        level = f.gauge(
            "level", "Threshold level: 0 OK, 1 WARNING, 2 CRITICAL, 3 EXHAUSTED", labels
        )
        budget = f.gauge(
            "monitor_budget_tokens",
            "The monitor's own POLICIES_LIST / POLICIES_READ tokens left",
            labels,
        )
        budget_ratio = f.gauge(
            "monitor_budget_remaining_ratio",
            "Share of the monitor's own POLICIES_LIST / POLICIES_READ bucket left",
            labels,
        )
        snapshot_age = f.gauge(
            "snapshot_age_seconds",
            "Seconds since the newest reading of the participant reached the monitor",
            ["ispb", "category"],
        )
        now = self.clock.now().timestamp()
        for row in connection.execute(sa.text(_LATEST)):
            values = [row.ispb, row.policy, row.category]
            available.add_metric(values, row.available_tokens)
            capacity.add_metric(values, row.capacity)
            utilization.add_metric(values, 100.0 * (1.0 - row.remaining_ratio))
            remaining.add_metric(values, row.remaining_ratio)
            refill.add_metric(values, row.refill_per_min)
            for family, value in (
                (demand, row.demand_per_min),
                (demand_low, row.demand_lower_per_min),
                (demand_high, row.demand_upper_per_min),
                (not_found, row.not_found_share),
                (recovery_clear, row.recovery_to_clear_s),
            ):
                number = _finite(value)
                if number is not None:
                    family.add_metric(values, number)
            if row.exhaustion_state == "exhausted":
                exhaustion.add_metric(values, 0.0)
            elif row.exhaustion_state == "finite" and _finite(row.time_to_429_s) is not None:
                exhaustion.add_metric(values, float(row.time_to_429_s))
            if row.recovery_state == "recovered":
                recovery.add_metric(values, 0.0)
            elif row.recovery_state == "finite" and _finite(row.recovery_to_full_s) is not None:
                recovery.add_metric(values, float(row.recovery_to_full_s))
            if row.level is not None:
                level.add_metric(values, float(Level[row.level]))
            if row.policy in MONITOR_BUDGET_POLICIES:
                budget.add_metric(values, row.available_tokens)
                budget_ratio.add_metric(values, row.remaining_ratio)
        for row in connection.execute(sa.text(_PARTICIPANT_FRESHNESS)):
            snapshot_age.add_metric([row.ispb, row.category], max(0.0, now - float(row.received)))
        self._alerts(connection, f, now)
        self._monitor(connection, f, now)
        return f.all

    def _alerts(self, connection: Connection, f: _Families, now: float) -> None:
        open_alert = f.gauge(
            "alert_open",
            "1 per open alert episode (status open or nodata), labelled with its severity",
            [*POLICY_LABELS, "severity", "status"],
        )
        by_severity: dict[str, int] = {"WARNING": 0, "CRITICAL": 0, "EXHAUSTED": 0, "NODATA": 0}
        for row in connection.execute(sa.text(_OPEN_ALERTS)):
            open_alert.add_metric(
                [row.ispb, row.policy, row.category, row.severity, row.status], 1.0
            )
            key = "NODATA" if row.status == "nodata" else row.severity
            by_severity[key] += 1
        open_count = f.gauge(
            "alerts_open", "Open alert episodes by severity (NODATA separately)", ["severity"]
        )
        for severity, count in by_severity.items():
            open_count.add_metric([severity], count)
        created = f.counter("alerts_created", "Alert episodes opened (stored history)", ["ispb"])
        resolved = f.counter(
            "alerts_resolved", "Alert episodes resolved (stored history)", ["ispb"]
        )
        for row in connection.execute(sa.text(_ALERT_TOTALS)):
            created.add_metric([row.ispb], row.created)
            resolved.add_metric([row.ispb], row.resolved)
        outbox = connection.execute(sa.text(_OUTBOX)).one()
        waiting = f.gauge(
            "alert_events_unpublished", "Alert events waiting in the outbox for Pulsar", []
        )
        waiting.add_metric([], outbox.waiting)
        oldest = f.gauge(
            "alert_events_oldest_unpublished_age_seconds",
            "Age of the oldest event waiting in the outbox (0 when none)",
            [],
        )
        oldest_created = outbox.oldest_created
        oldest.add_metric([], max(0.0, now - float(oldest_created)) if oldest_created else 0.0)

    def _monitor(self, connection: Connection, f: _Families, now: float) -> None:
        duration = f.gauge(
            "monitoring_duration_seconds", "Duration of the latest monitor sweep (poll + store)", []
        )
        bridge = f.gauge("monitoring_bridge_seconds", "Bridge time of the latest monitor sweep", [])
        last = f.gauge(
            "monitoring_last_sweep_timestamp_seconds",
            "When the latest sweep polled (Unix time)",
            [],
        )
        answered = f.gauge(
            "monitoring_participants_answered", "Participants that answered the latest sweep", []
        )
        failed = f.gauge(
            "monitoring_participants_failed", "Participants that failed the latest sweep", []
        )
        tick = connection.execute(sa.text(_LATEST_TICK)).one_or_none()
        if tick is not None:
            duration.add_metric([], tick.duration_seconds)
            bridge.add_metric([], tick.bridge_seconds)
            last.add_metric([], float(tick.polled_epoch))
            answered.add_metric([], tick.answered)
            failed.add_metric([], tick.failed)
        counters = {
            row.counter: int(row.value) for row in connection.execute(sa.text(_MONITOR_COUNTERS))
        }
        sweeps = f.counter("monitoring_sweeps", "Monitor sweeps stored", [])
        sweeps.add_metric([], counters.get("sweeps", 0))
        errors = f.counter(
            "bridge_errors",
            "Participants whose Bridge call failed, by error class",
            ["error_class"],
        )
        counts = dict.fromkeys(ERROR_CLASSES, 0)  # a counter that exists from 0 on
        for name, value in counters.items():
            if name.startswith("bridge_error:"):
                counts[name.removeprefix("bridge_error:")] = value
        for error_class, count in sorted(counts.items()):
            errors.add_metric([error_class], count)
