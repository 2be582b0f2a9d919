"""``retention_job``: keep monthly partitions ahead of time, drop expired ones, purge old runs.

Runs daily at 03:00 UTC. What it created, dropped and kept is reported as run metadata on the
op's output (the run's event log in the UI shows it).
"""

import datetime as dt
import time

import dagster as dg
from pydantic import Field, ValidationInfo, field_validator

from dict_ratelimit.defs.resources import ClockResource, PostgresResource
from dict_ratelimit.defs.tables import metadata_table
from dict_ratelimit.defs.tags import run_logs_config
from dict_ratelimit.domain.retention import MAX_MONTHS_AHEAD, RetentionPolicy
from dict_ratelimit.storage.outbox import purge_published
from dict_ratelimit.storage.partitions import PartitionChanges, apply_retention

FINISHED_STATUSES = [
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
]
RUN_PURGE_BATCH = 500


class RetentionConfig(dg.Config):
    """Run configuration of ``retention_job``; validated before any SQL runs."""

    retention_months: int = Field(
        default=13, description="Full months of history to keep besides the current month (>= 1)"
    )
    months_ahead: int = Field(
        default=2, description=f"Future monthly partitions to prepare (0-{MAX_MONTHS_AHEAD})"
    )
    dagster_run_retention_days: int = Field(
        default=90, description="Delete finished Dagster runs older than this; 0 keeps them all"
    )
    published_events_days: int = Field(
        default=7,
        description="Delete alert events published more than this many days ago (outbox); "
        "unpublished events are never deleted",
    )
    today: str | None = Field(
        default=None,
        description="ISO date to act as 'today' (UTC); default: the day of the run's clock",
    )

    @field_validator("retention_months")
    @classmethod
    def _retention_at_least_one_month(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"retention_months must be at least 1, got {value}")
        return value

    @field_validator("months_ahead")
    @classmethod
    def _months_ahead_in_range(cls, value: int) -> int:
        if not 0 <= value <= MAX_MONTHS_AHEAD:
            raise ValueError(f"months_ahead must be between 0 and {MAX_MONTHS_AHEAD}, got {value}")
        return value

    @field_validator("dagster_run_retention_days", "published_events_days")
    @classmethod
    def _non_negative(cls, value: int, info: ValidationInfo) -> int:
        if value < 0:
            raise ValueError(f"{info.field_name} must be >= 0, got {value}")
        return value

    @field_validator("today")
    @classmethod
    def _iso_date(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                dt.date.fromisoformat(value)
            except ValueError as exc:
                raise ValueError(f"today must be an ISO date (YYYY-MM-DD), got {value!r}") from exc
        return value

    def policy(self) -> RetentionPolicy:
        return RetentionPolicy(
            retention_months=self.retention_months, months_ahead=self.months_ahead
        )

    def today_date(self, now: dt.datetime) -> dt.date:
        if self.today is not None:
            return dt.date.fromisoformat(self.today)
        return now.astimezone(dt.timezone.utc).date()


def _drops_table(changes: PartitionChanges) -> dg.MetadataValue:
    """Per dropped month: how long its parent was locked (detach) and the drop took."""
    return metadata_table(
        [("partition", "string"), ("parent_lock_ms", "float"), ("drop_ms", "float")],
        [
            {
                "partition": name,
                "parent_lock_ms": round(changes.parent_lock_seconds.get(name, 0.0) * 1000, 1),
                "drop_ms": round(changes.drop_seconds.get(name, 0.0) * 1000, 1),
            }
            for name in changes.dropped
        ],
    )


def purge_old_runs(instance: dg.DagsterInstance, older_than_days: int, now: dt.datetime) -> int:
    """Delete finished runs created more than ``older_than_days`` ago; returns how many."""
    if older_than_days == 0:
        return 0
    cutoff = now - dt.timedelta(days=older_than_days)
    deleted = 0
    while True:
        records = instance.get_run_records(
            filters=dg.RunsFilter(created_before=cutoff, statuses=FINISHED_STATUSES),
            limit=RUN_PURGE_BATCH,
        )
        for record in records:
            instance.delete_run(record.dagster_run.run_id)
        deleted += len(records)
        if len(records) < RUN_PURGE_BATCH:
            return deleted


@dg.op(description="Create upcoming monthly partitions, drop expired ones, purge old runs.")
def maintain_partitions(
    context: dg.OpExecutionContext,
    config: RetentionConfig,
    postgres: PostgresResource,
    clock: ClockResource,
) -> dict:
    """Apply the retention policy to every partitioned table; report it as output metadata."""
    policy = config.policy()
    now = clock.clock().now()
    today = config.today_date(now)
    started = time.perf_counter()
    changes = apply_retention(postgres.engine, policy, today)
    partitions_seconds = time.perf_counter() - started
    runs_deleted = purge_old_runs(context.instance, config.dagster_run_retention_days, now)
    with postgres.engine.begin() as connection:
        events_purged = purge_published(
            connection, now - dt.timedelta(days=config.published_events_days)
        )
    for name in changes.created:
        context.log.info(f"created partition {name}")
    for name in changes.dropped:
        context.log.info(f"dropped partition {name}")
    if changes.unmanaged:
        context.log.warning(f"partitions not named by month, left alone: {changes.unmanaged}")
    summary = {
        "today": today.isoformat(),
        "oldest_kept_month": policy.oldest_kept_month(today).isoformat(),
        "created": changes.created,
        "dropped": changes.dropped,
        "kept": changes.kept,
        "unmanaged": changes.unmanaged,
        "dagster_runs_deleted": runs_deleted,
        "published_events_purged": events_purged,
    }
    context.add_output_metadata(
        {
            "today": today.isoformat(),
            "oldest_kept_month": policy.oldest_kept_month(today).isoformat(),
            "created_count": len(changes.created),
            "dropped_count": len(changes.dropped),
            "kept_count": len(changes.kept),
            "created": dg.MetadataValue.json(changes.created),
            "dropped": dg.MetadataValue.json(changes.dropped),
            "unmanaged": dg.MetadataValue.json(changes.unmanaged),
            # DETACH … CONCURRENTLY: reads and writes of the parent go on meanwhile
            "parent_lock_seconds_max": round(
                max(changes.parent_lock_seconds.values(), default=0.0), 4
            ),
            "drop_seconds_total": round(sum(changes.drop_seconds.values()), 4),
            "drops": _drops_table(changes),
            "dagster_runs_deleted": runs_deleted,
            "published_events_purged": events_purged,
            "partition_maintenance_seconds": round(partitions_seconds, 3),
        }
    )
    return summary


@dg.job(
    description="Daily partition maintenance: prepare coming months, drop months past retention.",
    executor_def=dg.in_process_executor,
    tags={"dict_ratelimit/kind": "maintenance"},
)
def retention_job() -> None:
    maintain_partitions()


def retention_schedule(
    retention_months: int = 13, months_ahead: int = 2, json_logs: bool = False
) -> dg.ScheduleDefinition:
    """Daily at 03:00 UTC, running by default, with the retention taken from settings."""
    return dg.ScheduleDefinition(
        name="retention_daily",
        job=retention_job,
        cron_schedule="0 3 * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        run_config=dg.RunConfig(
            ops={
                "maintain_partitions": RetentionConfig(
                    retention_months=retention_months, months_ahead=months_ahead
                )
            },
            loggers=run_logs_config(json_logs).get("loggers"),
        ),
        description="Partition maintenance, daily at 03:00 UTC.",
    )
