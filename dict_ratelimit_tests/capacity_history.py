"""Weeks of five-minute readings from the real simulator engine, stored and derived for real.

The capacity-planning tests need many weeks of history with a known weekly cycle and growth.
Going through gRPC and a Dagster run per tick would take hours, so this drives the simulator
engine in process (its buckets, its request counts), stores what a sweep would store, and
derives the metrics with the production ``derive_window``. The Bridge boundary has its own
tests; what is checked here is the arithmetic from readings to the outlook.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from zoneinfo import ZoneInfo

import pandas as pd
from sqlalchemy.engine import Engine

from dict_ratelimit.domain.thresholds import ThresholdConfig
from dict_ratelimit.pipeline.derive import derive_window
from dict_ratelimit.simulator.clock import ManualClock
from dict_ratelimit.simulator.engine import Simulator
from dict_ratelimit.simulator.scenarios import load_scenario
from dict_ratelimit.storage.bulk import copy_frame, ensure_month_partitions

SAO_PAULO = ZoneInfo("America/Sao_Paulo")
TICK = dt.timedelta(minutes=5)


def monday_midnight_before(at: dt.datetime, weeks: int, time_zone: ZoneInfo = SAO_PAULO):  # type: ignore[no-untyped-def]
    """Local Monday 00:00 at least ``weeks`` weeks before ``at`` (as an aware UTC time)."""
    local = at.astimezone(time_zone)
    monday = local.date() - dt.timedelta(days=local.weekday(), weeks=weeks)
    return dt.datetime.combine(monday, dt.time(), tzinfo=time_zone).astimezone(dt.timezone.utc)


def weekly_simulator(start: dt.datetime, ispb: str, scenario: str = "weekly-growth") -> Simulator:
    """The simulator, started at ``start`` (a local Monday 00:00 for the weekly scenario)."""
    return Simulator({ispb: "A"}, load_scenario(scenario), ManualClock(start), step=10)


def record_history(
    engine: Engine,
    simulator: Simulator,
    ispb: str,
    until: dt.datetime,
    policies: Sequence[str],
    skip: Sequence[tuple[dt.datetime, dt.datetime]] = (),
    offset: dt.timedelta = dt.timedelta(0),
) -> int:
    """Read ``policies`` every five minutes until ``until``; store readings and the Bridge's
    counts, then derive metrics and levels. Readings inside ``skip`` windows are not stored
    (the monitor was down), though the simulator keeps serving traffic; ``offset`` delays the
    first reading (and so every other). Returns readings."""
    clock = simulator.clock
    assert isinstance(clock, ManualClock)
    start = clock.now()
    if offset:  # readings at :02, :07, ... instead of on the hour
        clock.advance(offset.total_seconds())
        simulator.request_stats(ispb, offset)
    snapshots, stats = [], []
    while clock.now() + TICK <= until:
        now = clock.advance(TICK.total_seconds())
        listing = simulator.list_policies(ispb)
        window_start, window_end, counts = simulator.request_stats(ispb, TICK)
        if any(a <= now < b for a, b in skip):
            continue
        for policy in listing.policies:
            if policy.name not in policies:
                continue
            snapshots.append(
                {
                    "ispb": ispb,
                    "policy": policy.name,
                    "response_time": listing.response_time,
                    "polled_at": now,
                    "category": listing.category,
                    "available_tokens": policy.available_tokens,
                    "capacity": policy.capacity,
                    "refill_tokens": policy.refill_tokens,
                    "refill_period_sec": policy.refill_period_sec,
                    "correlation_id": listing.correlation_id,
                    "source": "list",
                }
            )
        for policy in policies:
            by_status = counts.get(policy, {})
            stats.append(
                {
                    "ispb": ispb,
                    "policy": policy,
                    "window_end": window_end,
                    "window_seconds": round((window_end - window_start).total_seconds()),
                    "responses": json.dumps({str(k): v for k, v in sorted(by_status.items())}),
                    "total": sum(by_status.values()),
                    "not_found": by_status.get(404, 0),
                }
            )
    snapshot_frame, stats_frame = pd.DataFrame(snapshots), pd.DataFrame(stats)
    last = snapshot_frame.iloc[-1]
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO dict_ratelimit.participant (ispb, category, category_changed_at) "
            "VALUES (%(ispb)s, 'A', %(start)s) ON CONFLICT DO NOTHING",
            {"ispb": ispb, "start": start},
        )
        for policy in policies:
            row = snapshot_frame[snapshot_frame["policy"] == policy].iloc[-1]
            connection.exec_driver_sql(
                "INSERT INTO dict_ratelimit.policy (ispb, policy, capacity, refill_tokens, "
                "refill_period_sec) VALUES (%(ispb)s, %(policy)s, %(c)s, %(r)s, %(p)s) "
                "ON CONFLICT DO NOTHING",
                {
                    "ispb": ispb,
                    "policy": policy,
                    "c": int(row["capacity"]),
                    "r": int(row["refill_tokens"]),
                    "p": int(row["refill_period_sec"]),
                },
            )
        times = [
            *list(pd.date_range(start, last["response_time"], freq="7D")),
            last["response_time"],
        ]
        for table in ("policy_snapshot", "policy_request_stats"):
            ensure_month_partitions(connection, table, [t.to_pydatetime() for t in times])
        copy_frame(connection, "dict_ratelimit.policy_snapshot", snapshot_frame)
        copy_frame(connection, "dict_ratelimit.policy_request_stats", stats_frame)
    for table in ("policy_metric", "threshold_evaluation"):
        with engine.begin() as connection:
            ensure_month_partitions(connection, table, [t.to_pydatetime() for t in times])
    derive_window(engine, start, until + dt.timedelta(minutes=1), ThresholdConfig())
    return len(snapshot_frame)


def first_429(
    simulator: Simulator, ispb: str, policy: str, limit: dt.timedelta
) -> dt.datetime | None:
    """Run the simulator on (no readings) until ``policy`` answers its first 429; the end of
    the minute it happened in, or None within ``limit``."""
    clock = simulator.clock
    assert isinstance(clock, ManualClock)
    stop = clock.now() + limit
    simulator.request_stats(ispb, dt.timedelta(days=60))  # forget what was already counted
    while clock.now() < stop:
        now = clock.advance(60)
        _, _, counts = simulator.request_stats(ispb, dt.timedelta(minutes=1))
        if counts.get(policy, {}).get(429):
            return now - dt.timedelta(minutes=1)
    return None
