"""Running monitor ticks against a simulator and a real database (integration tests)."""

from __future__ import annotations

import dagster as dg
from sqlalchemy.engine import URL

from dict_ratelimit.definitions import build_definitions
from dict_ratelimit.defs.monitor import TICK_TAGS
from dict_ratelimit.defs.resources import (
    AlertRulesResource,
    BridgeResource,
    PostgresResource,
    ThresholdsResource,
)
from dict_ratelimit_tests.simulation import RunningSimulator


def monitor_resources(
    sim: RunningSimulator,
    db_url: URL,
    participants: list[str],
    *,
    bridge_options: dict[str, object] | None = None,
    **extra: object,
) -> dict[str, object]:
    """The resources of a monitor run against ``sim`` (extra Bridge fields, extra resources)."""
    return {
        "postgres": PostgresResource(database_url=db_url.render_as_string(hide_password=False)),
        "bridge": BridgeResource(
            target=sim.target,
            participants=",".join(participants),
            max_clock_skew_seconds=0,  # the manual clock is not our clock
            retry_wait_seconds=0.1,
            **(bridge_options or {}),
        ),
        "thresholds": ThresholdsResource(),
        "alert_rules": AlertRulesResource(),
        **extra,
    }


def run_tick(
    sim: RunningSimulator,
    resources: dict[str, object],
    instance: dg.DagsterInstance | None = None,
) -> dg.ExecuteInProcessResult:
    """One monitor_job run, as the schedule would start it at the simulator's time."""
    job = build_definitions(resources).resolve_job_def("monitor_job")
    return job.execute_in_process(
        instance=instance,
        raise_on_error=False,
        partition_key=sim.clock.now().strftime("%Y-%m-%d"),
        tags=TICK_TAGS,
    )
