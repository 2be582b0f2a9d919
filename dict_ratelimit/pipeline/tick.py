"""All stages in one call: what ``dict-ratelimit tick``, the watch lane and the tests run.

``monitor_job`` runs the same stages as separate Dagster assets (one step each, so the UI shows
each one's metadata); this module chains them for the callers that want one report.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from dict_ratelimit.bridge.client import BridgeClient
from dict_ratelimit.bridge.poller import PollResult, poll_participants
from dict_ratelimit.clock import Clock
from dict_ratelimit.domain.alerts import AlertRules
from dict_ratelimit.domain.thresholds import ThresholdConfig
from dict_ratelimit.events.cloudevents import DEFAULT_SOURCE
from dict_ratelimit.pipeline.derive import DeriveReport, derive_backlog
from dict_ratelimit.pipeline.store import StoreReport, stats_since, store_sweep
from dict_ratelimit.storage.alerts import AlertReport, apply_evaluations


@dataclass(frozen=True)
class PipelineSettings:
    """What the stages need besides the database, the Bridge and the clock."""

    known_policies: frozenset[str]
    thresholds: ThresholdConfig = field(default_factory=ThresholdConfig)
    rules: AlertRules = field(default_factory=AlertRules)
    max_skew: dt.timedelta | None = dt.timedelta(minutes=10)
    max_concurrency: int = 16
    stats_window: dt.timedelta | None = None
    event_source: str = DEFAULT_SOURCE
    runbook_base_url: str | None = None


@dataclass
class TickReport:
    """The report of every stage of one pass."""

    poll: PollResult
    store: StoreReport
    derive: DeriveReport
    alerts: AlertReport
    timings: dict[str, float] = field(default_factory=dict)


def process_sweep(
    engine: Engine,
    result: PollResult,
    participants: list[str],
    settings: PipelineSettings,
    clock: Clock,
    *,
    bridge_seconds: float = 0.0,
    record: bool = True,
) -> tuple[StoreReport, DeriveReport, AlertReport, dict[str, float]]:
    """Store readings (a sweep's, or the watch lane's with ``record=False``: not a sweep),
    derive their metrics and levels, and apply them to the alerts."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    stored = store_sweep(
        engine,
        result,
        participants=len(participants),
        bridge_seconds=bridge_seconds,
        duration_seconds=bridge_seconds,
        record=record,
    )
    timings["store_seconds"] = time.perf_counter() - started
    mark = time.perf_counter()
    derived = derive_backlog(engine, settings.thresholds)
    timings["derive_seconds"] = time.perf_counter() - mark
    mark = time.perf_counter()
    with engine.begin() as connection:
        alerts = apply_evaluations(
            connection,
            settings.rules,
            participants,
            clock.now(),
            settings.event_source,
            runbook_base_url=settings.runbook_base_url,
        )
    timings["alerts_seconds"] = time.perf_counter() - mark
    return stored, derived, alerts, timings


def run_tick(
    engine: Engine,
    client: BridgeClient,
    participants: list[str],
    settings: PipelineSettings,
    clock: Clock,
) -> TickReport:
    """One full pass: sweep every participant, store, derive, alert."""
    started = time.perf_counter()
    result = poll_participants(
        client,
        participants,
        settings.known_policies,
        max_skew=settings.max_skew,
        max_concurrency=settings.max_concurrency,
        stats_window=settings.stats_window,
        stats_since=stats_since(engine, participants) if settings.stats_window else None,
        clock=clock,
    )
    bridge_seconds = time.perf_counter() - started
    stored, derived, alerts, timings = process_sweep(
        engine, result, participants, settings, clock, bridge_seconds=bridge_seconds
    )
    timings = {"bridge_seconds": bridge_seconds, **timings}
    timings["total_seconds"] = time.perf_counter() - started
    return TickReport(result, stored, derived, alerts, timings)
