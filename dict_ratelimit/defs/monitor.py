"""``monitor_job`` and its schedule: one in-process run per tick, never two at once."""

import dagster as dg

from dict_ratelimit.clock import SystemClock
from dict_ratelimit.defs.alerts import alerts
from dict_ratelimit.defs.metrics import (
    INCREMENTAL,
    MODE_TAG,
    derive_metrics_and_levels,
    tick_partition,
)
from dict_ratelimit.defs.snapshots import policy_snapshots
from dict_ratelimit.defs.tags import SERIAL_TAG, SHARD_KEY, run_logs_config, shard_tags
from dict_ratelimit.domain.shards import all_shards

__all__ = ["SERIAL_TAG", "TICK_TAGS", "metrics_job", "monitor_job", "monitor_schedule"]
TICK_TAGS = {**SERIAL_TAG, MODE_TAG: INCREMENTAL}
ACTIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]

monitor_job = dg.define_asset_job(
    "monitor_job",
    selection=dg.AssetSelection.assets(policy_snapshots, derive_metrics_and_levels, alerts),
    executor_def=dg.in_process_executor,
    tags=SERIAL_TAG,
    description="One monitoring tick: read every participant's DICT buckets, store them, "
    "compute the new snapshots' metrics and threshold evaluations (today's partition), and "
    "update the alerts and their outbox.",
)


metrics_job = dg.define_asset_job(
    "metrics_job",
    selection=dg.AssetSelection.assets(derive_metrics_and_levels),
    executor_def=dg.in_process_executor,
    tags=SERIAL_TAG,  # never at the same time as a monitor tick writing the same tables
    description="Recompute metrics and evaluations of a day or a range of days from the stored "
    "snapshots (launch a backfill from the UI, e.g. after a threshold or formula change).",
)


def monitor_schedule(
    cron: str = "*/5 * * * *", shards: int = 1, json_logs: bool = False
) -> dg.ScheduleDefinition:
    """Every tick requests one run per shard, keyed by its scheduled time and shard (a retried
    tick never duplicates one), and skips a shard while its previous run is still queued or
    running (a slow shard does not hold back the others)."""
    split = all_shards(shards)

    @dg.schedule(
        name="monitor_sweeps",
        job=monitor_job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Monitor sweep and its metrics and alerts, cron {cron} (UTC; "
        f"DICT_RATELIMIT_MONITOR_CRON), in {shards} run(s) per tick "
        "(DICT_RATELIMIT_MONITOR_SHARDS).",
    )
    def _schedule(context: dg.ScheduleEvaluationContext):  # type: ignore[no-untyped-def]
        scheduled = context.scheduled_execution_time or SystemClock().now()
        requests, busy = [], []
        for shard in split:
            tags = shard_tags(shard)
            active = context.instance.get_runs_count(
                dg.RunsFilter(
                    job_name="monitor_job",
                    statuses=ACTIVE_STATUSES,
                    tags={SHARD_KEY: shard.label} if shards > 1 else {},
                )
            )
            if active:
                busy.append(shard.label)
                continue
            requests.append(
                dg.RunRequest(
                    # unsharded: the key runs had before shards existed
                    run_key=scheduled.isoformat() + (f"#{shard.label}" if shards > 1 else ""),
                    partition_key=tick_partition(scheduled),
                    tags={**tags, MODE_TAG: INCREMENTAL},
                    run_config=run_logs_config(json_logs),
                )
            )
        if not requests:
            return dg.SkipReason(
                "monitor run(s) still queued or running"
                + (f" for shard(s) {', '.join(busy)}" if shards > 1 else "")
            )
        return requests

    return _schedule
