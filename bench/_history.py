"""Synthetic history for the benchmarks: months of five-minute readings loaded by COPY.

Per (participant, policy) a bucket of the catalog's shape (category A) wanders between empty
and full (a bounded random walk with occasional drains), read every ``step`` seconds. For
each reading: the snapshot, a metric row and an evaluation (plausible values, not the
domain's computation: the point is the size and shape of the tables the queries read), the
Bridge's request counts, one ``monitor_tick`` row per sweep and a few resolved alert episodes
a day. Month by month, so memory stays flat, with progress on stderr.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from dict_ratelimit.domain.catalog import LISTED_POLICY_NAMES, bucket_for
from dict_ratelimit.domain.retention import add_months, month_start
from dict_ratelimit.storage.bulk import copy_frame, ensure_month_partitions

UTC = dt.timezone.utc


def _months(start: dt.datetime, end: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
    spans = []
    month = month_start(start.date())
    while True:
        begin = max(start, dt.datetime.combine(month, dt.time(), tzinfo=UTC))
        stop = min(end, dt.datetime.combine(add_months(month, 1), dt.time(), tzinfo=UTC))
        if begin >= end:
            break
        spans.append((begin, stop))
        month = add_months(month, 1)
    return spans


def _frames(
    ispbs: list[str],
    policies: list[str],
    begin: dt.datetime,
    stop: dt.datetime,
    step: int,
    rng: np.random.Generator,
    levels: dict[tuple[str, str], float],
) -> dict[str, pd.DataFrame]:
    times = pd.date_range(begin, stop, freq=f"{step}s", inclusive="left", tz=UTC)
    n = len(times)
    parts: dict[str, list[pd.DataFrame]] = {
        "policy_snapshot": [], "policy_metric": [], "threshold_evaluation": [],
        "policy_request_stats": [],
    }  # fmt: skip
    for ispb in ispbs:
        for policy in policies:
            spec = bucket_for(policy, "A")
            capacity = spec.capacity
            walk = rng.normal(0.0, 0.04, n).cumsum() + levels.get((ispb, policy), 0.8)
            drains = rng.random(n) < 0.002  # now and then a burst empties the bucket
            walk[drains] -= 0.9
            ratio = np.clip(np.abs((walk + 1.0) % 2.0 - 1.0), 0.0, 1.0)  # reflect into [0, 1]
            levels[(ispb, policy)] = float(ratio[-1])
            available = np.floor(ratio * capacity).astype(np.int64)
            received = times + pd.to_timedelta(rng.integers(50, 400, n), unit="ms")
            snapshot = pd.DataFrame(
                {
                    "ispb": ispb,
                    "policy": policy,
                    "response_time": times,
                    "polled_at": received,
                    "category": "A",
                    "available_tokens": available,
                    "capacity": capacity,
                    "refill_tokens": spec.refill_tokens,
                    "refill_period_sec": spec.refill_period_sec,
                    "correlation_id": "ab" * 16,
                    "source": "list",
                }
            )
            parts["policy_snapshot"].append(snapshot)
            refill_per_min = spec.refill_tokens * 60 / spec.refill_period_sec
            demand = np.abs(rng.normal(0.5, 0.3, n)) * refill_per_min
            level = np.where(ratio <= 0.1, "CRITICAL", np.where(ratio <= 0.2, "WARNING", "OK"))
            level = np.where(available <= 0, "EXHAUSTED", level)
            metric = pd.DataFrame(
                {
                    "ispb": ispb,
                    "policy": policy,
                    "response_time": times,
                    "prev_response_time": times - pd.Timedelta(seconds=step),
                    "elapsed_seconds": float(step),
                    "available_tokens": available,
                    "capacity": capacity,
                    "refill_tokens": spec.refill_tokens,
                    "refill_period_sec": spec.refill_period_sec,
                    "remaining_ratio": available / capacity,
                    "utilization_ratio": 1 - available / capacity,
                    "refill_per_min": refill_per_min,
                    "demand_lower_per_min": demand * 0.8,
                    "demand_upper_per_min": demand * 1.2,
                    "demand_per_min": demand,
                    "forecast_demand_per_min": demand,
                    "exhaustion_state": "never",
                    "recovery_state": "recovered",
                    "headroom_per_min": refill_per_min - demand,
                    "burst_absorbable_tokens": np.maximum(available, 0).astype(float),
                    "own_calls": 1 if policy == "POLICIES_LIST" else 0,
                }
            )
            parts["policy_metric"].append(metric)
            evaluation = pd.DataFrame(
                {
                    "ispb": ispb,
                    "policy": policy,
                    "response_time": times,
                    "level": level,
                    "level_rank": pd.Series(level).map(
                        {"OK": 0, "WARNING": 1, "CRITICAL": 2, "EXHAUSTED": 3}
                    ),
                    "remaining_ratio": available / capacity,
                    "reasons": "[]",
                    "thresholds": "{}",
                }
            )
            parts["threshold_evaluation"].append(evaluation)
            total = np.floor(demand * step / 60).astype(np.int64)
            not_found = (total * 0.02).astype(np.int64)
            parts["policy_request_stats"].append(
                pd.DataFrame(
                    {
                        "ispb": ispb,
                        "policy": policy,
                        "window_end": times,
                        "window_seconds": step,
                        "responses": [json.dumps({"200": int(t)}) for t in total],
                        "total": total,
                        "not_found": not_found,
                    }
                )
            )
    return {table: pd.concat(frames, ignore_index=True) for table, frames in parts.items()}


def load_history(
    engine: Engine,
    ispbs: list[str],
    start: dt.datetime,
    end: dt.datetime,
    *,
    policies: list[str] | None = None,
    step: int = 300,
    alerts_per_day: int = 4,
    seed: int = 7,
) -> dict[str, int]:
    """Load ``[start, end)`` of history for ``ispbs``; returns rows written per table."""
    policies = policies or list(LISTED_POLICY_NAMES)
    rng = np.random.default_rng(seed)
    written: dict[str, int] = {}
    levels: dict[tuple[str, str], float] = {}
    started = time.perf_counter()
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO dict_ratelimit.participant (ispb, category, category_changed_at) "
            "SELECT unnest(%(ispbs)s::char(8)[]), 'A', %(start)s ON CONFLICT DO NOTHING",
            {"ispbs": ispbs, "start": start},
        )
        for policy in policies:
            spec = bucket_for(policy, "A")
            connection.exec_driver_sql(
                "INSERT INTO dict_ratelimit.policy (ispb, policy, capacity, refill_tokens, "
                "refill_period_sec) SELECT unnest(%(ispbs)s::char(8)[]), %(p)s, %(c)s, %(r)s, "
                "%(s)s ON CONFLICT DO NOTHING",
                {
                    "ispbs": ispbs,
                    "p": policy,
                    "c": spec.capacity,
                    "r": spec.refill_tokens,
                    "s": spec.refill_period_sec,
                },
            )
    for begin, stop in _months(start, end):
        frames = _frames(ispbs, policies, begin, stop, step, rng, levels)
        sweeps = pd.date_range(begin, stop, freq=f"{step}s", inclusive="left", tz=UTC)
        frames["monitor_tick"] = pd.DataFrame(
            {
                "polled_at": sweeps,
                "participants": len(ispbs),
                "answered": len(ispbs),
                "failed": 0,
                "readings": len(ispbs) * len(policies),
                "bridge_errors": "{}",
                "bridge_seconds": 0.2,
                "duration_seconds": 0.5,
            }
        )
        with engine.begin() as connection:
            for table, frame in frames.items():
                column = "window_end" if table == "policy_request_stats" else "response_time"
                column = "polled_at" if table == "monitor_tick" else column
                ensure_month_partitions(connection, table, [begin])
                copy_frame(connection, f"dict_ratelimit.{table}", frame)
                written[table] = written.get(table, 0) + len(frame)
            _resolved_alerts(connection, ispbs, begin, stop, alerts_per_day, rng)
        print(
            f"  {begin:%Y-%m}: {len(frames['policy_snapshot']):,} readings "
            f"({time.perf_counter() - started:.0f} s so far)",
            file=sys.stderr,
            flush=True,
        )
    with engine.begin() as connection:  # what the store step keeps per participant
        connection.exec_driver_sql(
            "UPDATE dict_ratelimit.participant SET last_reading_at = %(last)s, "
            "last_received_at = %(last)s, last_listing_at = %(last)s "
            "WHERE ispb = ANY(%(ispbs)s::char(8)[])",
            {"last": end - dt.timedelta(seconds=step), "ispbs": ispbs},
        )
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    return written


def _resolved_alerts(connection, ispbs, begin, stop, per_day, rng) -> None:  # type: ignore[no-untyped-def]
    """A few resolved episodes a day per participant (the alert table's own history)."""
    days = max(1, int((stop - begin).total_seconds() // 86_400))
    rows = []
    for ispb in ispbs:
        for index in range(days * per_day):
            opened = begin + dt.timedelta(
                seconds=float(rng.uniform(0, (stop - begin).total_seconds() - 900))
            )
            rows.append(
                {
                    "alert_key": f"{ispb}/KEYS_CHECK/{opened:%Y%m%dT%H%M%S}{index:04d}Z",
                    "ispb": ispb,
                    "opened": opened,
                    "resolved": opened + dt.timedelta(minutes=10),
                }
            )
    if not rows:
        return
    frame = pd.DataFrame(rows)
    connection.exec_driver_sql(
        "CREATE TEMP TABLE IF NOT EXISTS history_alerts (alert_key text, ispb char(8), "
        "opened timestamptz, resolved timestamptz) ON COMMIT DROP"
    )
    copy_frame(connection, "history_alerts", frame)
    connection.exec_driver_sql(
        "INSERT INTO dict_ratelimit.alert (alert_key, ispb, policy, category, status, severity, "
        "peak_severity, opened_at, resolved_at, last_observed_at, severity_history, reasons, "
        "message, sequence) SELECT alert_key, ispb, 'KEYS_CHECK', 'A', 'resolved', 'WARNING', "
        "'WARNING', opened, resolved, resolved, '[]', '[]', 'history', 2 FROM history_alerts"
    )
