"""One round of the watch lane: counts, plan, reads, then the same store → derive → alerts.

Between two sweeps the lane asks the Bridge for every participant's counts (no DICT token),
decides which buckets are hot and due (``domain.watch``), re-reads them within the monitor's
budget, and hands the readings to the same stages as a sweep: stored in the same table,
computed by the same derive step, applied by the same alert machine, with the same outbox.
A participant whose counts showed nothing hot is left alone, and its counts are not stored:
the next request covers the same time again, so nothing is lost.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from dict_ratelimit import tracing
from dict_ratelimit.bridge.client import BridgeClient
from dict_ratelimit.bridge.poller import PollResult
from dict_ratelimit.bridge.reads import fetch_counts, read_buckets
from dict_ratelimit.clock import Clock
from dict_ratelimit.domain.watch import (
    ParticipantPlan,
    WatchItem,
    WatchRules,
    hot_buckets,
    plan_reads,
)
from dict_ratelimit.pipeline.derive import DeriveReport
from dict_ratelimit.pipeline.store import StoreReport, stats_since
from dict_ratelimit.pipeline.tick import PipelineSettings, process_sweep
from dict_ratelimit.storage.alerts import AlertReport
from dict_ratelimit.storage.watch import spend_last_hour, watch_state


@dataclass
class WatchReport:
    """What one round saw, read, skipped and did."""

    now: dt.datetime
    hot: list[WatchItem] = field(default_factory=list)
    plans: list[ParticipantPlan] = field(default_factory=list)
    counts_unknown: dict[str, str] = field(default_factory=dict)
    poll: PollResult | None = None
    store: StoreReport | None = None
    derive: DeriveReport | None = None
    alerts: AlertReport | None = None
    timings: dict[str, float] = field(default_factory=dict)
    spend: dict[str, dict[str, int]] = field(default_factory=dict)  # own calls, last hour

    @property
    def spent(self) -> tuple[int, int]:
        """(POLICIES_LIST, POLICIES_READ) tokens this round spent."""
        lists = sum(plan.calls[0] for plan in self.plans)
        reads = sum(plan.calls[1] for plan in self.plans)
        return lists, reads

    @property
    def skipped(self) -> dict[str, str]:
        return {f"{p.ispb}/{policy}": why for p in self.plans for policy, why in p.skipped.items()}


def watch_once(
    engine: Engine,
    client: BridgeClient,
    participants: list[str],
    settings: PipelineSettings,
    rules: WatchRules,
    clock: Clock,
    *,
    counts: bool = True,
) -> WatchReport:
    """One round, one trace; never raises for one participant's trouble (like a sweep)."""
    with tracing.span("watch round", participants=len(participants)) as current:
        report = _watch_once(engine, client, participants, settings, rules, clock, counts)
        current.set_attribute("hot_buckets", len(report.hot))
        current.set_attribute("policies_list_spent", report.spent[0])
        current.set_attribute("policies_read_spent", report.spent[1])
        return report


def _watch_once(
    engine: Engine,
    client: BridgeClient,
    participants: list[str],
    settings: PipelineSettings,
    rules: WatchRules,
    clock: Clock,
    counts: bool,
) -> WatchReport:
    started = time.perf_counter()
    now = clock.now()
    report = WatchReport(now=now)
    with engine.connect() as connection:
        buckets, budgets = watch_state(connection, participants, now)
    known = {bucket.ispb for bucket in buckets}
    fetched: dict = {}
    seconds: dict[str, float] = {}
    if counts and settings.stats_window is not None and known:
        since = stats_since(engine, sorted(known))
        fetched, report.counts_unknown = fetch_counts(
            client,
            sorted(known),
            since,
            now,
            settings.stats_window,
            max_concurrency=settings.max_concurrency,
        )
        for ispb, stats in fetched.items():
            seconds[ispb] = max(1.0, (stats.window_end - stats.window_start).total_seconds())
    by_policy = {ispb: stats.by_policy for ispb, stats in fetched.items()}
    report.timings["plan_seconds"] = time.perf_counter() - started
    report.hot = hot_buckets(buckets, by_policy, seconds, rules, now)
    report.plans = plan_reads(report.hot, budgets, rules)
    reading = [plan for plan in report.plans if plan.listing or plan.reads]
    if not reading:
        report.timings["total_seconds"] = time.perf_counter() - started
        return report
    mark = time.perf_counter()
    report.poll = read_buckets(
        client,
        reading,
        settings.known_policies,
        now,
        fetched,
        max_skew=settings.max_skew,
        max_concurrency=settings.max_concurrency,
    )
    report.timings["bridge_seconds"] = time.perf_counter() - mark
    report.store, report.derive, report.alerts, timings = process_sweep(
        engine,
        report.poll,
        participants,
        settings,
        clock,
        record=False,
    )
    report.timings.update(timings)
    with engine.connect() as connection:
        report.spend = spend_last_hour(connection, participants, now)
    report.timings["total_seconds"] = time.perf_counter() - started
    return report
