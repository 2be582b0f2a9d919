"""The ``alerts`` asset and its watchdog schedule.

In every monitor tick, after ``threshold_evaluations``, ``alerts`` applies the new evaluations
to the alert state machine and writes the episodes and the outbox rows in one transaction.

When a tick fails before it gets there (the Bridge down for everyone, Postgres gone), nobody
would notice the silence: ``alert_watchdog`` materializes ``alerts`` alone whenever the
monitor has not succeeded recently, so open alerts go NODATA and the dead man's switch fires.
"""

import datetime as dt
from typing import Any

import dagster as dg
import sqlalchemy as sa

from dict_ratelimit import tracing
from dict_ratelimit.clock import SystemClock
from dict_ratelimit.defs.metrics import THRESHOLD_EVALUATIONS
from dict_ratelimit.defs.resources import (
    AlertRulesResource,
    BridgeResource,
    ClockResource,
    PostgresResource,
)
from dict_ratelimit.defs.tables import metadata_table
from dict_ratelimit.defs.tags import (
    SERIAL_TAG,
    SHARD_KEY,
    run_logs_config,
    run_shard,
    shard_scope,
)
from dict_ratelimit.domain.shards import all_shards
from dict_ratelimit.storage.alerts import AlertReport, apply_evaluations
from dict_ratelimit.storage.outbox import backlog


def _open_alerts_table(connection: sa.Connection, limit: int = 10) -> dg.MetadataValue:
    """The open alerts, NODATA first, then the most severe, then the oldest."""
    rows = connection.execute(
        sa.text(
            "SELECT ispb, policy, status, severity, opened_at, lowest_remaining_ratio "
            "FROM dict_ratelimit.alert WHERE status <> 'resolved' "
            "ORDER BY status = 'nodata' DESC, array_position("
            "ARRAY['EXHAUSTED','CRITICAL','WARNING'], severity), opened_at LIMIT :limit"
        ),
        {"limit": limit},
    ).fetchall()
    return metadata_table(
        [("alert", "string"), ("status", "string"), ("severity", "string"),
         ("opened_at", "string"), ("lowest_remaining_ratio", "float")],
        [
            {
                "alert": f"{row.ispb}/{row.policy}",
                "status": row.status,
                "severity": row.severity,
                "opened_at": row.opened_at.isoformat(),
                "lowest_remaining_ratio": row.lowest_remaining_ratio,
            }
            for row in rows
        ],
    )  # fmt: skip


def _metadata(
    report: AlertReport, waiting: int, table: dg.MetadataValue, report_now: str
) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for transition in report.transitions:
        kinds[transition.kind.value] = kinds.get(transition.kind.value, 0) + 1
    return {
        "evaluations_applied": report.evaluations_applied,
        "events_written": len(report.transitions),
        "events_by_type": dg.MetadataValue.json(kinds),
        "open_warning": report.open_by_severity.get("WARNING", 0),
        "open_critical": report.open_by_severity.get("CRITICAL", 0),
        "open_exhausted": report.open_by_severity.get("EXHAUSTED", 0),
        "open_nodata": report.nodata_open,
        "outbox_unpublished": waiting,
        "open_alerts": table,
        "now": report_now,
        **{name: round(value, 3) for name, value in report.timings.items()},
    }


@dg.asset(
    deps=[THRESHOLD_EVALUATIONS],
    group_name="dict",
    kinds={"postgres"},
    description="Alert episodes (dict_ratelimit.alert) and their events in the outbox "
    "(dict_ratelimit.alert_event), written together in one transaction from the new "
    "threshold evaluations; NODATA for stale data and silent participants.",
)
def alerts(
    context: dg.AssetExecutionContext,
    postgres: PostgresResource,
    bridge: BridgeResource,
    alert_rules: AlertRulesResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    with tracing.run_trace(
        context.run.run_id, "monitor alerts", shard=context.run.tags.get(SHARD_KEY)
    ):
        return _alerts(
            context, postgres=postgres, bridge=bridge, alert_rules=alert_rules, clock=clock
        )


def _alerts(
    context: dg.AssetExecutionContext,
    postgres: PostgresResource,
    bridge: BridgeResource,
    alert_rules: AlertRulesResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    rules = alert_rules.rules()
    now = clock.clock().now()
    shard = run_shard(context.run.tags)
    listed = bridge.participant_list()
    members, everyone = shard_scope(context.run.tags, listed)
    with postgres.engine.begin() as connection:
        report = apply_evaluations(
            connection,
            rules,
            participants=listed if members is None else members,
            now=now,
            source=alert_rules.event_source,
            runbook_base_url=alert_rules.runbook_base_url,
            shard_only=members is not None,
            everyone=everyone,
        )
        waiting = backlog(connection)
        table = _open_alerts_table(connection)
    for transition in report.transitions:
        context.log.info(f"{transition.kind.value} {transition.event_id}: {transition.message}")
    metadata = _metadata(report, waiting, table, now.isoformat())
    return dg.MaterializeResult(metadata={"shard": shard.label if shard else "all", **metadata})


alert_watchdog_job = dg.define_asset_job(
    "alert_watchdog_job",
    selection=dg.AssetSelection.assets(alerts),
    executor_def=dg.in_process_executor,
    tags=SERIAL_TAG,
    description="Apply staleness to the alerts when the monitor tick has not succeeded "
    "recently (NODATA, dead man's switch).",
)


def alert_watchdog_schedule(
    cron: str = "2-59/5 * * * *",
    healthy_within: dt.timedelta = dt.timedelta(minutes=10),
    shards: int = 1,
    json_logs: bool = False,
) -> dg.ScheduleDefinition:
    """Between monitor ticks: skip while the monitor succeeds (every shard of it), run
    ``alerts`` for everyone otherwise (a shard that keeps failing leaves its participants'
    alerts to the watchdog)."""

    @dg.schedule(
        name="alert_watchdog",
        job=alert_watchdog_job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Dead man's switch: when no monitor run (of one of its shards) succeeded "
        f"in the last {healthy_within.total_seconds() / 60:.0f} minutes, apply staleness to "
        "the alerts.",
    )
    def _schedule(context: dg.ScheduleEvaluationContext):  # type: ignore[no-untyped-def]
        now = context.scheduled_execution_time or SystemClock().now()
        ages = {
            shard.label: _minutes_since_success(
                context.instance, now, {SHARD_KEY: shard.label} if shards > 1 else {}
            )
            for shard in all_shards(shards)
        }
        stale = {label: age for label, age in ages.items() if age is None or age * 60 >= (
            healthy_within.total_seconds()
        )}  # fmt: skip
        if not stale:
            oldest = max(age for age in ages.values() if age is not None)
            return dg.SkipReason(
                f"monitor healthy: last successful run ended {oldest:.1f} min ago"
                + (f" (oldest of {shards} shards)" if shards > 1 else "")
            )
        if shards > 1:
            context.log.info(f"shards without a recent success: {', '.join(sorted(stale))}")
        return dg.RunRequest(
            run_key=now.isoformat(), tags=SERIAL_TAG, run_config=run_logs_config(json_logs)
        )

    return _schedule


def _minutes_since_success(
    instance: dg.DagsterInstance, now: dt.datetime, tags: dict[str, str]
) -> float | None:
    """Minutes since the latest successful monitor run (with ``tags``) ended; None: never."""
    latest = instance.get_runs(
        dg.RunsFilter(job_name="monitor_job", statuses=[dg.DagsterRunStatus.SUCCESS], tags=tags),
        limit=1,
    )
    if not latest:
        return None
    record = instance.get_run_record_by_id(latest[0].run_id)
    ended = record.end_time if record else None
    return None if ended is None else (now.timestamp() - ended) / 60
