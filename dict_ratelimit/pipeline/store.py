"""Storing a sweep: snapshots (queued for the metrics), request stats, the tick's own row."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dict_ratelimit import tracing
from dict_ratelimit.bridge.poller import PollResult
from dict_ratelimit.domain.readings import ShapeChange, shape_changes, vanished_policies
from dict_ratelimit.storage.metrics import store_request_stats
from dict_ratelimit.storage.snapshots import StoredReadings, previous_readings, store_readings
from dict_ratelimit.storage.ticks import record_tick


@dataclass
class StoreReport:
    """What storing one sweep did, and what it showed against the previous readings."""

    stored: StoredReadings = field(default_factory=StoredReadings)
    request_stats_rows: int = 0
    own_calls: dict[str, dict[str, int]] = field(default_factory=dict)  # ispb -> call -> n
    vanished: list[tuple[str, str]] = field(default_factory=list)  # (ispb, policy)
    shape_changes: list[ShapeChange] = field(default_factory=list)


def failures_by_class(result: PollResult) -> dict[str, int]:
    counts: dict[str, int] = {}
    for failure in result.failures.values():
        counts[failure.error_class] = counts.get(failure.error_class, 0) + 1
    return counts


def store_sweep(
    engine: Engine,
    result: PollResult,
    *,
    participants: int,
    bridge_seconds: float,
    duration_seconds: float,
    record: bool = True,
    shard: str = "all",
) -> StoreReport:
    """Store the sweep's readings and counts, and its ``monitor_tick`` row, in one transaction.

    The comparison with the previous readings (policies that vanished from a participant's
    answer, buckets whose capacity or refill changed) is made inside the same transaction, so
    it sees exactly what was stored before this sweep.
    """
    report = StoreReport()
    readings = result.all_readings
    with (
        tracing.span("store", participants=participants, readings=len(readings), shard=shard),
        engine.begin() as connection,
    ):
        previous = previous_readings(connection, sorted(result.readings))
        report.stored = store_readings(connection, readings)
        report.request_stats_rows = store_request_stats(
            connection, result.request_stats_rows(), result.request_stats_windows()
        )
        report.own_calls = own_calls(result)
        count_own_calls(connection, report.own_calls)
        if result.request_stats:  # the next window starts where this one ended
            connection.exec_driver_sql(
                "UPDATE dict_ratelimit.participant SET stats_until = %(at)s "
                "WHERE ispb = ANY(%(ispbs)s)",
                {"at": result.polled_at, "ispbs": sorted(result.request_stats)},
            )
        if record:
            record_tick(
                connection,
                polled_at=result.polled_at,
                participants=participants,
                answered=len(result.readings),
                failed=len(result.failures),
                readings=len(readings),
                bridge_errors=failures_by_class(result),
                bridge_seconds=bridge_seconds,
                duration_seconds=duration_seconds,
                shard=shard,
            )
    listed = {ispb for ispb, rows in result.readings.items() if rows and rows[0].source == "list"}
    report.vanished = vanished_policies(previous.last_sweep, readings, listed)
    report.shape_changes = shape_changes(previous.shapes, readings)
    return report


def own_calls(result: PollResult) -> dict[str, dict[str, int]]:
    """The DICT calls the monitor made and got an answer to, per participant: one listing, or
    one GetPolicy per policy read (a call that failed may have cost a token too: not counted)."""
    calls: dict[str, dict[str, int]] = {}
    for ispb, rows in result.readings.items():
        if not rows:
            continue
        if rows[0].source == "list":
            calls[ispb] = {"list_policies": 1}
        else:
            calls[ispb] = {"get_policy": len({row.policy for row in rows})}
    return calls


def count_own_calls(connection: Connection, calls: dict[str, dict[str, int]]) -> None:
    """Add to the running totals the exporter reads (``own_call_counter``)."""
    rows = [
        {"ispb": ispb, "call": call, "n": n}
        for ispb, by_call in sorted(calls.items())
        for call, n in sorted(by_call.items())
        if n
    ]
    if rows:
        connection.execute(
            sa.text(
                "INSERT INTO dict_ratelimit.own_call_counter AS c (ispb, call, total) "
                "VALUES (:ispb, :call, :n) "
                "ON CONFLICT (ispb, call) DO UPDATE SET total = c.total + EXCLUDED.total"
            ),
            rows,
        )


def record_failed_sweep(
    engine: Engine, result: PollResult, *, participants: int, bridge_seconds: float,
    duration_seconds: float, shard: str = "all",
) -> None:  # fmt: skip
    """Count a sweep in which nobody answered (so the exporter's error series see it)."""
    with engine.begin() as connection:
        record_tick(
            connection,
            polled_at=result.polled_at,
            participants=participants,
            answered=0,
            failed=len(result.failures),
            readings=0,
            bridge_errors=failures_by_class(result),
            bridge_seconds=bridge_seconds,
            duration_seconds=duration_seconds,
            shard=shard,
        )


def response_time_range(result: PollResult) -> tuple[dt.datetime | None, dt.datetime | None]:
    times = sorted({r.response_time for r in result.all_readings})
    return (times[0], times[-1]) if times else (None, None)


def stats_since(engine: Engine, ispbs: list[str]) -> dict[str, dt.datetime | None]:
    """When each participant's Bridge counts were last fetched (our clock)."""
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT ispb, stats_until FROM dict_ratelimit.participant WHERE ispb = ANY(%(i)s)",
            {"i": ispbs},
        ).fetchall()
    return {row[0]: row[1] for row in rows}
