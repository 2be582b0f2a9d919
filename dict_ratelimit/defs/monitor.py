"""``monitor_job`` and its schedule: one in-process run per tick, never two at once."""

import dagster as dg

from dict_ratelimit.defs.snapshots import policy_snapshots

SERIAL_TAG = {"dict_ratelimit/serial": "monitor"}
ACTIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]

monitor_job = dg.define_asset_job(
    "monitor_job",
    selection=dg.AssetSelection.assets(policy_snapshots),
    executor_def=dg.in_process_executor,
    tags=SERIAL_TAG,
    description="One monitoring tick: read every participant's DICT buckets and store them.",
)


def monitor_schedule(cron: str = "*/5 * * * *") -> dg.ScheduleDefinition:
    """Every tick requests one run keyed by its scheduled time (a retried tick never duplicates
    it), and skips while a monitor run is still queued or running."""

    @dg.schedule(
        name="monitor_every_5_minutes",
        job=monitor_job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Monitor tick ({cron}, UTC).",
    )
    def _schedule(context: dg.ScheduleEvaluationContext):  # type: ignore[no-untyped-def]
        active = context.instance.get_runs_count(
            dg.RunsFilter(job_name="monitor_job", statuses=ACTIVE_STATUSES)
        )
        if active:
            return dg.SkipReason(f"{active} monitor run(s) still queued or running")
        scheduled = context.scheduled_execution_time
        return dg.RunRequest(run_key=scheduled.isoformat() if scheduled else None, tags=SERIAL_TAG)

    return _schedule
