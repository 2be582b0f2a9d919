"""Metrics and threshold evaluations, computed together in one step and one transaction.

Two ways in, one way through: the tick and the watch lane take exactly the snapshots waiting
in ``metric_backlog``; a backfill takes a window of days. Both compute with the same functions
(``analysis.metrics_frame`` then ``analysis.evaluations_frame``) and write both tables in the
same transaction, so metrics and levels never disagree. Only the backlog path queues the new
evaluations for the alert machine: alerts move forward in time, a backfill rewrites history.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
from sqlalchemy.engine import Connection, Engine

from dict_ratelimit import tracing
from dict_ratelimit.analysis import evaluations_frame, metrics_frame
from dict_ratelimit.domain.thresholds import ThresholdConfig
from dict_ratelimit.storage.metrics import (
    load_pairs_for_keys,
    load_window_pairs,
    queue_for_alerts,
    take_metric_backlog,
    write_rows,
)

#: Snapshots taken from the backlog per run: a tick has participants × 30; a backlog left by a
#: long outage is worked off over several runs rather than in one huge transaction.
BACKLOG_LIMIT = 200_000
#: Key of the transaction-level advisory lock every derive step takes.
DERIVE_LOCK = 0x0D1C7A1D


@dataclass
class DeriveReport:
    """What one derive step read, wrote and queued (turned into asset metadata)."""

    mode: str  # "backlog" or "window"
    snapshots_read: int = 0
    metric_rows: int = 0
    evaluation_rows: int = 0
    queued_for_alerts: int = 0
    backlog_left: int = 0
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    evaluations: pd.DataFrame = field(default_factory=pd.DataFrame)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def days(self) -> list[str]:
        """UTC days the written rows fall on (the daily partitions touched)."""
        if self.metrics.empty:
            return []
        days = self.metrics["response_time"].dt.tz_convert("UTC").dt.strftime("%Y-%m-%d")
        return sorted(days.unique())


def _compute_and_write(
    connection: Connection,
    report: DeriveReport,
    pairs: pd.DataFrame,
    thresholds: ThresholdConfig,
    replace_window: tuple[dt.datetime, dt.datetime] | None,
) -> None:
    mark = time.perf_counter()
    report.snapshots_read = len(pairs)
    report.metrics = metrics_frame(pairs, thresholds)
    report.evaluations = evaluations_frame(report.metrics, thresholds)
    report.timings["compute_seconds"] = time.perf_counter() - mark
    mark = time.perf_counter()
    report.metric_rows = write_rows(
        connection, "policy_metric", report.metrics, replace_window=replace_window
    )
    report.evaluation_rows = write_rows(
        connection, "threshold_evaluation", report.evaluations, replace_window=replace_window
    )
    report.timings["write_seconds"] = time.perf_counter() - mark


def derive_backlog(
    engine: Engine,
    thresholds: ThresholdConfig,
    *,
    limit: int = BACKLOG_LIMIT,
    ispbs: Sequence[str] | None = None,
    everyone: Sequence[str] | None = None,
) -> DeriveReport:
    """Compute and write the metrics and evaluations of the snapshots waiting in the backlog
    (only a shard's when ``ispbs`` is given: ``storage.queues.take_keys``), and queue the
    evaluations for the alert step; all or nothing."""
    report = DeriveReport(mode="backlog")
    started = time.perf_counter()
    with tracing.span("derive", mode="backlog") as current, engine.begin() as connection:
        # one derive step at a time (the tick and the watch lane): a policy's readings are
        # computed in order, each with the previous one already stored
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({DERIVE_LOCK})")
        keys, report.backlog_left = take_metric_backlog(connection, limit, ispbs, everyone)
        pairs = load_pairs_for_keys(connection, keys) if keys else pd.DataFrame()
        report.timings["load_seconds"] = time.perf_counter() - started
        _compute_and_write(connection, report, pairs, thresholds, None)
        report.queued_for_alerts = queue_for_alerts(connection, report.evaluations)
        current.set_attribute("snapshots", report.snapshots_read)
        current.set_attribute("metric_rows", report.metric_rows)
        current.set_attribute("backlog_left", report.backlog_left)
    report.timings["total_seconds"] = time.perf_counter() - started
    return report


def derive_window(
    engine: Engine, start: dt.datetime, end: dt.datetime, thresholds: ThresholdConfig
) -> DeriveReport:
    """Delete and recompute every metric and evaluation of ``[start, end)`` from the stored
    snapshots (a backfill: same snapshots, same rows). Keys waiting in the backlog stay there:
    the next tick computes them again (to the same rows) and hands them to the alerts."""
    report = DeriveReport(mode="window")
    started = time.perf_counter()
    with (
        tracing.span("derive", mode="window", start=start.isoformat(), end=end.isoformat()),
        engine.begin() as connection,
    ):
        # No derive lock: a backfill of months would hold back the watch lane and the ticks
        # for its whole transaction. A tick's derive step beside it (the watch lane, a shard)
        # computes the same rows from the same snapshots; where both write one, PostgreSQL
        # makes the later writer wait for the earlier one's commit.
        pairs = load_window_pairs(connection, start, end)
        report.timings["load_seconds"] = time.perf_counter() - started
        _compute_and_write(connection, report, pairs, thresholds, (start, end))
    report.timings["total_seconds"] = time.perf_counter() - started
    return report
