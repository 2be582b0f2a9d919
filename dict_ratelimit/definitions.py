"""Dagster entry point: ``dagster dev -m dict_ratelimit.definitions``."""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

from dict_ratelimit import tracing
from dict_ratelimit.defs.alerts import alert_watchdog_job, alert_watchdog_schedule, alerts
from dict_ratelimit.defs.capacity import (
    capacity_daily_job,
    capacity_outlook,
    capacity_outlook_job,
    capacity_schedules,
    policy_daily_usage,
    policy_weekly_profile,
)
from dict_ratelimit.defs.events import PULSAR_ALERT_EVENTS, publish_alert_events
from dict_ratelimit.defs.failures import email_on_run_failure
from dict_ratelimit.defs.metrics import derive_metrics_and_levels
from dict_ratelimit.defs.monitor import metrics_job, monitor_job, monitor_schedule
from dict_ratelimit.defs.resources import default_resources
from dict_ratelimit.defs.retention import retention_job, retention_schedule
from dict_ratelimit.defs.snapshots import DICT_BRIDGE, policy_snapshots
from dict_ratelimit.defs.watch import watch_sensor
from dict_ratelimit.settings import get_settings


def build_definitions(resources: Mapping[str, object] | None = None) -> dg.Definitions:
    """All assets, jobs, schedules and resources of the code location.

    ``resources`` replace the ones built from the settings, key by key (tests, the CLI).
    Invalid settings stop the code location here, with one line per problem.
    """
    settings = get_settings()
    tracing.configure_from_environment()  # the OTEL_* variables; off unless they ask
    resources = {**default_resources(settings), **(resources or {})}
    jobs: list[dg.UnresolvedAssetJobDefinition] = [
        monitor_job,
        metrics_job,
        retention_job,
        alert_watchdog_job,
        capacity_daily_job,
        capacity_outlook_job,
    ]
    failure_email = email_on_run_failure(settings, jobs)
    json_logs = settings.log_format == "json"
    return dg.Definitions(
        assets=[
            DICT_BRIDGE,
            policy_snapshots,
            derive_metrics_and_levels,
            alerts,
            PULSAR_ALERT_EVENTS,
            policy_daily_usage,
            policy_weekly_profile,
            capacity_outlook,
        ],
        jobs=jobs,
        schedules=[
            monitor_schedule(settings.monitor_cron, settings.monitor_shards, json_logs),
            retention_schedule(settings.retention_months, settings.months_ahead, json_logs),
            alert_watchdog_schedule(shards=settings.monitor_shards, json_logs=json_logs),
            *capacity_schedules(json_logs),
        ],
        sensors=[
            publish_alert_events,
            watch_sensor(settings.watch_interval_seconds, enabled=settings.watch),
            *([failure_email] if failure_email else []),
        ],
        resources=resources,
        # a run names this logger in its config (our schedules do, defs/tags.JSON_RUN_LOGS):
        # its console event log is then JSON like everything else
        loggers={"console": dg.json_console_logger} if json_logs else None,
    )


defs = build_definitions()
