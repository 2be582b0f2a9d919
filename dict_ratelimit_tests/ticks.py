"""Running monitor ticks against a simulator and a real database (integration tests)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import dagster as dg
from sqlalchemy.engine import URL

from dict_ratelimit.definitions import build_definitions
from dict_ratelimit.defs.metrics import tick_partition
from dict_ratelimit.defs.monitor import TICK_TAGS
from dict_ratelimit.defs.resources import (
    AlertRulesResource,
    BridgeResource,
    ClockResource,
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
    *,
    our_clock_ahead: float = 0.0,
    tags: dict[str, str] | None = None,
) -> dg.ExecuteInProcessResult:
    """One monitor_job run, as the schedule would start it at the simulator's time.

    Our clock (the run's ``clock`` resource, and Dagster's idea of "now" for partitions) is
    the simulator's plus ``our_clock_ahead`` seconds (DICT's clock running behind ours).
    ``tags`` are added to the tick's (a shard's, for instance).
    """
    return prepare_tick(sim, resources, instance, our_clock_ahead=our_clock_ahead, tags=tags)()


def prepare_tick(
    sim: RunningSimulator,
    resources: dict[str, object],
    instance: dg.DagsterInstance | None = None,
    *,
    our_clock_ahead: float = 0.0,
    tags: dict[str, str] | None = None,
) -> Callable[[], dg.ExecuteInProcessResult]:
    """:func:`run_tick` in two halves: the definitions built here (in the calling thread), the
    run when the returned function is called (in any thread: shards side by side; without
    ``instance``, each run has its own ephemeral one)."""
    now = sim.clock.now() + dt.timedelta(seconds=our_clock_ahead)
    resources = {"clock": ClockResource(frozen_at=now.isoformat()), **resources}
    job = build_definitions(resources).resolve_job_def("monitor_job")

    def _run() -> dg.ExecuteInProcessResult:
        with dg.partition_loading_context(effective_dt=now):
            return job.execute_in_process(
                instance=instance,
                raise_on_error=False,
                partition_key=tick_partition(now),
                tags={**TICK_TAGS, **(tags or {})},
            )

    return _run


def materializations(
    result: dg.ExecuteInProcessResult, asset: str
) -> list[dg.AssetMaterialization]:
    """The materializations of ``asset`` in a run (whatever step produced them)."""
    key = dg.AssetKey(asset)
    found = []
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key == key:
            found.append(materialization)
    return found
