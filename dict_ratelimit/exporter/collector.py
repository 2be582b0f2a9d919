"""A Prometheus collector that reads Postgres at scrape time and keeps no state of its own.

Every scrape runs a handful of index-driven queries (latest metrics per policy, open alerts,
alert totals, the latest monitor sweep, the outbox backlog) and turns them into series with
the labels ``ispb``, ``policy`` and ``category`` only (bounded: participants × 30 policies).
Names of the system we replace are kept (``dict_rate_limit_available_tokens``, ...), so the
runbooks that query them keep working. A value that is unknown or "never" is *absent*, never 0:
a 0 s exhaustion projection would page someone.

The queries are grouped into collectors (``policies``, ``participants``, ``alerts``,
``outbox``, ``monitor``), each run on its own and reported with
``dict_rate_limit_exporter_collector_success{collector}`` and its duration (postgres_exporter's
pattern): a query that fails blanks only its own families. When Postgres is unreachable the
scrape still answers: ``dict_rate_limit_exporter_database_up`` is 0 and the error counter
grows, and the next scrape reconnects (pre-ping on the pool).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
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

# The newest metric and level per policy of the participants heard from within a day of the
# newest reading (one probe per policy, its bounds also given as constants so that the
# planner prunes the months it does not need). A participant silent for longer keeps its
# snapshot-age series and loses its bucket series: they would describe the past as present.
_LATEST = """
SELECT p.ispb, p.policy, coalesce(pa.category, '?') AS category, m.available_tokens,
       m.capacity, m.remaining_ratio, m.refill_per_min, m.demand_per_min,
       m.demand_lower_per_min, m.demand_upper_per_min, m.exhaustion_state, m.time_to_429_s,
       m.recovery_state, m.recovery_to_clear_s, m.recovery_to_full_s, m.not_found_share,
       m.throttled, e.level
FROM dict_ratelimit.policy AS p
JOIN dict_ratelimit.participant AS pa ON pa.ispb = p.ispb
CROSS JOIN LATERAL (
    SELECT * FROM dict_ratelimit.policy_metric AS pm
    WHERE pm.ispb = p.ispb AND pm.policy = p.policy
      AND pm.response_time <= pa.last_reading_at
      AND pm.response_time >= pa.last_reading_at - interval '1 day'
      AND pm.response_time >= %(low)s AND pm.response_time <= %(high)s
    ORDER BY pm.response_time DESC LIMIT 1
) AS m
LEFT JOIN LATERAL (
    SELECT te.level FROM dict_ratelimit.threshold_evaluation AS te
    WHERE te.ispb = p.ispb AND te.policy = p.policy AND te.response_time = m.response_time
      AND te.response_time >= %(low)s AND te.response_time <= %(high)s
    LIMIT 1
) AS e ON true
WHERE pa.last_reading_at >= %(high)s - interval '1 day'
"""

_THROTTLE_TOTALS = """
SELECT ispb, policy, total FROM dict_ratelimit.throttle_counter
"""

#: The newest outlook per (participant, policy), from the last two days of computations only
#: (the table keeps a row per day; the index on as_of keeps this cheap).
_CAPACITY_OUTLOOK = """
SELECT DISTINCT ON (ispb, policy)
       ispb, policy, status, weekly_peak_share, growth_per_week, growth_low_per_week,
       growth_high_per_week, EXTRACT(EPOCH FROM first_429_at) AS first_429,
       EXTRACT(EPOCH FROM as_of) AS as_of
FROM dict_ratelimit.capacity_outlook
WHERE as_of >= (SELECT max(as_of) FROM dict_ratelimit.capacity_outlook) - interval '2 days'
ORDER BY ispb, policy, as_of DESC
"""

#: The four-week weekly profile of the buckets that throttle or will within a quarter (168
#: series each: every bucket's would be 168 series per policy per participant).
_CAPACITY_PROFILE = """
SELECT w.ispb, w.policy, w.weekday, w.hour, w.typical_share
FROM dict_ratelimit.policy_weekly_profile AS w
JOIN (
    SELECT DISTINCT ON (ispb, policy) ispb, policy, status
    FROM dict_ratelimit.capacity_outlook
    WHERE as_of >= (SELECT max(as_of) FROM dict_ratelimit.capacity_outlook) - interval '2 days'
    ORDER BY ispb, policy, as_of DESC
) AS o USING (ispb, policy)
WHERE w.window_weeks = 4 AND w.typical_share IS NOT NULL
  AND o.status IN ('throttling', 'at_risk')
"""

_OWN_CALLS = """
SELECT ispb, call, total FROM dict_ratelimit.own_call_counter
"""

_NEWEST_READING = """
SELECT max(last_reading_at) FROM dict_ratelimit.participant
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
# The latest sweep of every shard of the current split (the split of the newest sweep: `all`,
# or each INDEX/COUNT of its COUNT), however old: the slowest duration, the oldest of the
# latest sweeps (a stalled shard makes the monitor look stale, as it is for its participants)
# and the participants of all shards together; sweeps of an earlier split do not count.
_LATEST_TICK = """
WITH newest AS (
    SELECT shard FROM dict_ratelimit.monitor_tick ORDER BY polled_at DESC LIMIT 1
), labels AS (
    SELECT CASE WHEN n.shard = 'all' THEN 'all' ELSE g || '/' || split_part(n.shard, '/', 2) END
           AS shard
    FROM newest AS n,
         generate_series(0, CASE WHEN n.shard = 'all' THEN 0
                                 ELSE split_part(n.shard, '/', 2)::int - 1 END) AS g
), latest AS (
    SELECT t.* FROM labels AS l
    CROSS JOIN LATERAL (
        SELECT * FROM dict_ratelimit.monitor_tick AS m
        WHERE m.shard = l.shard ORDER BY m.polled_at DESC LIMIT 1
    ) AS t
)
SELECT extract(epoch FROM min(polled_at)) AS polled_epoch,
       max(duration_seconds) AS duration_seconds, max(bridge_seconds) AS bridge_seconds,
       sum(participants) AS participants, sum(answered) AS answered, sum(failed) AS failed
FROM latest HAVING count(*) > 0
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


def _reason(error: BaseException) -> str:
    """The first line of a database error (no URL, no password: psycopg2 never puts it in)."""
    return str(getattr(error, "orig", None) or error).strip().splitlines()[0]


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _add(family: Metric, labels: dict[str, str], value: float) -> None:
    """``add_metric`` without building a labels dict per sample."""
    family.samples.append(Sample(family.name, labels, value))


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

    def __init__(
        self, engine: Engine, *, clock: Clock | None = None, runbook_base_url: str | None = None
    ) -> None:
        self.engine = engine
        self.clock = clock or SystemClock()
        self.runbook_base_url = runbook_base_url
        self._errors = 0
        self.groups: dict[str, Callable[[Connection, _Families, float], None]] = {
            "policies": self._policies,
            "participants": self._participants,
            "alerts": self._alerts,
            "outbox": self._outbox,
            "monitor": self._monitor,
            "throttling": self._throttling,
            "own_calls": self._own_calls,
            "capacity": self._capacity,
        }

    def describe(self) -> Iterator[Metric]:
        return iter(())  # unchecked collector: series depend on the data

    def collect(self) -> Iterator[Metric]:
        """Every group's families, then the exporter's own (up, errors, per-collector success
        and duration, scrape duration). Never raises for the database's sake."""
        started = time.perf_counter()
        now = self.clock.now().timestamp()
        families: list[Metric] = []
        outcome: dict[str, tuple[bool, float]] = {}
        up = 0.0
        try:
            with self.engine.connect() as raw:
                connection = raw.execution_options(isolation_level="AUTOCOMMIT")
                up = 1.0
                for name, group in self.groups.items():
                    group_started = time.perf_counter()
                    f = _Families()
                    try:
                        group(connection, f, now)
                        families.extend(f.all)
                        ok = True
                    except sa.exc.SQLAlchemyError as error:
                        ok = False
                        log.error("collector %s failed: %s", name, _reason(error))
                        if isinstance(error, sa.exc.OperationalError):
                            up = 0.0  # the connection itself broke: the rest would fail too
                    outcome[name] = (ok, time.perf_counter() - group_started)
                    if not up:
                        break
        except sa.exc.SQLAlchemyError as error:
            log.error("scrape failed: database unavailable: %s", _reason(error))
            up = 0.0
        if not up or not all(ok for ok, _ in outcome.values()):
            self._errors += 1
        yield from families
        yield from self.own_families(up, outcome, time.perf_counter() - started)

    def own_families(
        self, up: float, outcome: dict[str, tuple[bool, float]], seconds: float
    ) -> Iterator[Metric]:
        """The exporter's health: also what a scrape answers when the database never replied
        within the scrape's time budget (``up`` 0, every collector failed)."""
        database_up = GaugeMetricFamily(
            PREFIX + "exporter_database_up",
            "1 when the last scrape read the database, 0 when it could not",
        )
        database_up.add_metric([], up)
        yield database_up
        errors = CounterMetricFamily(
            PREFIX + "exporter_scrape_errors",
            "Scrapes that could not read the database or one of its collectors",
        )
        errors.add_metric([], self._errors)
        yield errors
        if self.runbook_base_url:
            # the rules' runbook links read it: one setting for the rules and the events
            runbook = GaugeMetricFamily(
                PREFIX + "runbook_info",
                "Where the runbook is published (DICT_RATELIMIT_RUNBOOK_BASE_URL)",
                labels=["base_url"],
            )
            runbook.add_metric([self.runbook_base_url], 1.0)
            yield runbook
        success = GaugeMetricFamily(
            PREFIX + "exporter_collector_success",
            "1 when the collector's queries succeeded in the last scrape",
            labels=["collector"],
        )
        duration = GaugeMetricFamily(
            PREFIX + "exporter_collector_duration_seconds",
            "Time the collector's queries took in the last scrape",
            labels=["collector"],
        )
        for name in self.groups:
            ok, took = outcome.get(name, (False, 0.0))
            success.add_metric([name], 1.0 if ok else 0.0)
            duration.add_metric([name], took)
        yield success
        yield duration
        scrape = GaugeMetricFamily(
            PREFIX + "exporter_scrape_duration_seconds", "Time spent reading the database"
        )
        scrape.add_metric([], seconds)
        yield scrape

    def failed_scrape(self, seconds: float) -> list[Metric]:
        """What a scrape answers when the collection did not finish in time."""
        self._errors += 1
        return list(self.own_families(0.0, {}, seconds))

    def _policies(self, connection: Connection, f: _Families, now: float) -> None:
        """The newest metrics and level of every policy, and the monitor's own budget."""
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
        throttled = f.gauge(
            "throttled_requests",
            "Requests DICT answered 429 between the last two readings (the Bridge's counts); "
            "absent when unknown",
            labels,
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
        newest = connection.exec_driver_sql(_NEWEST_READING).scalar()
        bounds = {"low": newest - dt.timedelta(days=2), "high": newest} if newest else None
        rows = connection.exec_driver_sql(_LATEST, bounds).fetchall() if bounds else []
        for row in rows:
            # one labels dict per policy, shared by its ~15 samples, which the exposition
            # renders once (1,000 participants: scrape p50 1.28 s -> 0.80-0.85 s)
            series = {"ispb": row.ispb, "policy": row.policy, "category": row.category}
            _add(available, series, row.available_tokens)
            _add(capacity, series, row.capacity)
            _add(utilization, series, 100.0 * (1.0 - row.remaining_ratio))
            _add(remaining, series, row.remaining_ratio)
            _add(refill, series, row.refill_per_min)
            for family, value in (
                (demand, row.demand_per_min),
                (demand_low, row.demand_lower_per_min),
                (demand_high, row.demand_upper_per_min),
                (not_found, row.not_found_share),
                (recovery_clear, row.recovery_to_clear_s),
                (throttled, row.throttled),
            ):
                number = _finite(value)
                if number is not None:
                    _add(family, series, number)
            if row.exhaustion_state == "exhausted":
                _add(exhaustion, series, 0.0)
            elif row.exhaustion_state == "finite" and _finite(row.time_to_429_s) is not None:
                _add(exhaustion, series, float(row.time_to_429_s))
            if row.recovery_state == "recovered":
                _add(recovery, series, 0.0)
            elif row.recovery_state == "finite" and _finite(row.recovery_to_full_s) is not None:
                _add(recovery, series, float(row.recovery_to_full_s))
            if row.level is not None:
                _add(level, series, float(Level[row.level]))
            if row.policy in MONITOR_BUDGET_POLICIES:
                _add(budget, series, row.available_tokens)
                _add(budget_ratio, series, row.remaining_ratio)

    def _throttling(self, connection: Connection, f: _Families, now: float) -> None:
        """DICT's 429s per policy since the monitor started counting (a running total)."""
        total = f.counter(
            "dict_throttled",
            "Requests DICT answered 429, per policy, as counted by the Bridge",
            ["ispb", "policy"],
        )
        for row in connection.execute(sa.text(_THROTTLE_TOTALS)):
            total.add_metric([row.ispb, row.policy], float(row.total))

    def _capacity(self, connection: Connection, f: _Families, now: float) -> None:
        """The capacity outlook (computed daily by the ``capacity_outlook`` asset) and the
        weekly profile of the buckets it worries about."""
        status = f.gauge(
            "capacity_status",
            "1 for the status of the newest capacity outlook of the bucket: throttling, "
            "at_risk, growing, stable or insufficient_history",
            ["ispb", "policy", "status"],
        )
        peak = f.gauge(
            "capacity_weekly_peak_ratio",
            "Weekly peak of hourly demand over the refill, at the trend's current value",
            ["ispb", "policy"],
        )
        growth = f.gauge(
            "capacity_growth_per_week_ratio",
            "Weekly growth of the weekly peak (0.04 = +4 %/week): estimate and 95 % band",
            ["ispb", "policy", "bound"],
        )
        first_429 = f.gauge(
            "capacity_first_429_timestamp_seconds",
            "When the bucket is expected to answer its first 429 at the trend (absent: not "
            "within two years)",
            ["ispb", "policy"],
        )
        as_of = f.gauge(
            "capacity_outlook_timestamp_seconds",
            "The local midnight the newest capacity outlook was computed as of",
            [],
        )
        newest = None
        for row in connection.execute(sa.text(_CAPACITY_OUTLOOK)):
            labels = {"ispb": row.ispb, "policy": row.policy}
            _add(status, {**labels, "status": row.status}, 1.0)
            for family, value, extra in (
                (peak, row.weekly_peak_share, {}),
                (growth, row.growth_per_week, {"bound": "estimate"}),
                (growth, row.growth_low_per_week, {"bound": "low"}),
                (growth, row.growth_high_per_week, {"bound": "high"}),
                (first_429, row.first_429, {}),
            ):
                number = _finite(value)
                if number is not None:
                    _add(family, {**labels, **extra}, number)
            newest = max(newest or 0.0, float(row.as_of))
        if newest is not None:
            as_of.add_metric([], newest)
        profile = f.gauge(
            "capacity_profile_ratio",
            "Typical demand over the refill per local weekday and hour, last four weeks "
            "(buckets whose outlook is throttling or at_risk)",
            ["ispb", "policy", "weekday", "hour"],
        )
        for row in connection.execute(sa.text(_CAPACITY_PROFILE)):
            _add(
                profile,
                {
                    "ispb": row.ispb,
                    "policy": row.policy,
                    "weekday": row.weekday,
                    "hour": f"{row.hour:02d}",
                },
                float(row.typical_share),
            )

    def _own_calls(self, connection: Connection, f: _Families, now: float) -> None:
        """The monitor's own DICT calls per participant (``increase(...[1h])``: its spend per
        hour; each call costs a token of POLICIES_LIST or POLICIES_READ)."""
        calls = f.counter(
            "monitor_calls",
            "DICT calls the monitor made (and got an answer to) per participant: list_policies "
            "costs a POLICIES_LIST token, get_policy a POLICIES_READ token",
            ["ispb", "call"],
        )
        for row in connection.execute(sa.text(_OWN_CALLS)):
            calls.add_metric([row.ispb, row.call], float(row.total))

    def _participants(self, connection: Connection, f: _Families, now: float) -> None:
        """How long ago each participant's newest reading reached us (our clock)."""
        snapshot_age = f.gauge(
            "snapshot_age_seconds",
            "Seconds since the newest reading of the participant reached the monitor",
            ["ispb", "category"],
        )
        for row in connection.execute(sa.text(_PARTICIPANT_FRESHNESS)):
            snapshot_age.add_metric([row.ispb, row.category], max(0.0, now - float(row.received)))

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

    def _outbox(self, connection: Connection, f: _Families, now: float) -> None:
        """Alert events waiting for Pulsar."""
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
            "monitoring_duration_seconds",
            "Duration of the latest monitor sweep (poll + store; sharded: the slowest shard's)",
            [],
        )
        bridge = f.gauge(
            "monitoring_bridge_seconds",
            "Bridge time of the latest monitor sweep (sharded: the slowest shard's)",
            [],
        )
        last = f.gauge(
            "monitoring_last_sweep_timestamp_seconds",
            "When the latest sweep polled (Unix time; sharded: the shard that polled least "
            "recently)",
            [],
        )
        answered = f.gauge(
            "monitoring_participants_answered",
            "Participants that answered the latest sweep (sharded: of every shard's latest)",
            [],
        )
        failed = f.gauge(
            "monitoring_participants_failed",
            "Participants that failed the latest sweep (sharded: of every shard's latest)",
            [],
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
