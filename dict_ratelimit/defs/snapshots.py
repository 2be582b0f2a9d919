"""``policy_snapshots``: one sweep of every monitored participant's DICT buckets.

Thin by design: poll (bridge.poller), store (pipeline.store, which also compares with the
previous readings), and report. A participant that fails is reported by the ERROR check
``complete_reading``, named with its error class and the offending field, while the others
are stored; nothing partial is stored for it.
"""

import contextlib
import datetime as dt
import random
import statistics
import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
import sqlalchemy as sa

from dict_ratelimit import tracing
from dict_ratelimit.bridge.poller import PollResult, poll_participants
from dict_ratelimit.defs.resources import (
    BridgeResource,
    ClockResource,
    PostgresResource,
    ThresholdsResource,
)
from dict_ratelimit.defs.spend import spend_metadata
from dict_ratelimit.defs.tags import SHARD_KEY, run_participants, run_shard
from dict_ratelimit.pipeline.store import (
    failures_by_class,
    record_failed_sweep,
    response_time_range,
    stats_since,
    store_sweep,
)
from dict_ratelimit.storage.watch import spend_last_hour

DICT_BRIDGE = dg.AssetSpec(
    "dict_bridge",
    description="DICT bucket state (GET /policies/), read through the institution's gRPC "
    "Bridge. External: Dagster does not materialize it.",
    group_name="dict",
    kinds={"grpc"},
)

COMPLETE_READING = "complete_reading"
BUCKET_SHAPE_UNCHANGED = "bucket_shape_unchanged"


def _worst(result: PollResult) -> dict[str, Any]:
    readings = result.all_readings
    if not readings:
        return {}
    worst = min(readings, key=lambda r: r.remaining_ratio)
    return {
        "worst_policy": f"{worst.ispb}/{worst.policy}",
        "worst_remaining_ratio": round(worst.remaining_ratio, 4),
        "worst_available_tokens": worst.available_tokens,
    }


#: A sweep every five minutes: warn after two missed, fail after three (the UI shows a stale
#: monitor without our own watchdog; Dagster's freshness daemon evaluates it).
SNAPSHOTS_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=dt.timedelta(minutes=15), warn_window=dt.timedelta(minutes=10)
)


@dg.asset(
    deps=[DICT_BRIDGE],
    group_name="dict",
    freshness_policy=SNAPSHOTS_FRESHNESS,
    kinds={"postgres"},
    description="Every monitored participant's DICT buckets, appended to "
    "dict_ratelimit.policy_snapshot (one row per policy and DICT ResponseTime).",
    check_specs=[
        dg.AssetCheckSpec(
            COMPLETE_READING,
            asset="policy_snapshots",
            # Not blocking: one participant's failure must not stop metrics and alerts for
            # everyone else. The silent participant is covered by the NODATA alert.
            description="Every monitored participant answered with a valid reading, and every "
            "policy of its previous reading is still there.",
        ),
        dg.AssetCheckSpec(
            BUCKET_SHAPE_UNCHANGED,
            asset="policy_snapshots",
            description="No bucket's capacity or refill changed since its previous reading.",
        ),
    ],
)
def policy_snapshots(
    context: dg.AssetExecutionContext,
    bridge: BridgeResource,
    postgres: PostgresResource,
    clock: ClockResource,
    thresholds: ThresholdsResource,
) -> dg.MaterializeResult:
    with tracing.run_trace(
        context.run.run_id, "monitor policy_snapshots", shard=context.run.tags.get(SHARD_KEY)
    ):
        return _sweep(context, bridge=bridge, postgres=postgres, clock=clock, thresholds=thresholds)


def _sweep(
    context: dg.AssetExecutionContext,
    bridge: BridgeResource,
    postgres: PostgresResource,
    clock: ClockResource,
    thresholds: ThresholdsResource,
) -> dg.MaterializeResult:
    # Everything that can be wrong in the configuration fails here, before the Bridge is
    # polled and before anything is stored (a bad thresholds file would otherwise fail the
    # metrics step after the readings were taken).
    thresholds.config()
    shard = run_shard(context.run.tags)
    ispbs = run_participants(context.run.tags, bridge.participant_list())
    shard_label = shard.label if shard else "all"
    if bridge.poll_jitter_seconds > 0:
        # 300 s is a multiple of most refill periods: without jitter every sweep would see
        # the same refill phase.
        time.sleep(random.uniform(0, bridge.poll_jitter_seconds))

    started = time.perf_counter()
    since: dict[str, dt.datetime | None] = {}
    if bridge.request_stats_window_seconds:
        with _retry_if_database_down(context, bridge):
            since = stats_since(postgres.engine, ispbs)
    client = bridge.client()
    try:
        result = poll_participants(
            client,
            ispbs,
            bridge.known_policies(),
            max_skew=bridge.max_skew(),
            max_concurrency=bridge.max_concurrency,
            stats_window=bridge.stats_window(),
            stats_since=since,
            clock=clock.clock(),
        )
    finally:
        client.close()
    bridge_seconds = time.perf_counter() - started

    if (
        not result.readings
        and result.failures
        and all(f.retryable for f in result.failures.values())
    ):
        # Nobody answered and it may be transient (Bridge restarting, DICT 503): retry the
        # whole step rather than report a tick of nothing (the failed sweep is still counted).
        with _retry_if_database_down(context, bridge):
            record_failed_sweep(
                postgres.engine,
                result,
                participants=len(ispbs),
                bridge_seconds=bridge_seconds,
                duration_seconds=time.perf_counter() - started,
                shard=shard_label,
            )
        raise dg.RetryRequested(max_retries=2, seconds_to_wait=bridge.retry_wait_seconds)

    insert_started = time.perf_counter()
    with _retry_if_database_down(context, bridge):
        stored = store_sweep(
            postgres.engine,
            result,
            participants=len(ispbs),
            bridge_seconds=bridge_seconds,
            duration_seconds=time.perf_counter() - started,
            shard=shard_label,
        )
    insert_seconds = time.perf_counter() - insert_started

    for failure in result.failures.values():
        context.log.error(f"no reading for {failure.ispb}: {failure.message}")
    for ispb, policy in stored.vanished:
        context.log.error(f"policy {policy} of {ispb} vanished from DICT's answer")
    for ispb, why in sorted(result.stats_unavailable.items()):
        if why != "unimplemented":
            context.log.warning(f"request stats of {ispb} unknown this sweep: {why}")

    with postgres.engine.connect() as connection:
        spend = spend_last_hour(connection, ispbs, clock.clock().now())
    first, last = response_time_range(result)
    latencies = list(result.latency_seconds.values())
    metadata: dict[str, Any] = {
        "rows_inserted": stored.stored.inserted,
        "late_successors_requeued": stored.stored.late_successors,
        "queued_for_metrics": stored.stored.queued,
        "request_stats_rows": stored.request_stats_rows,
        "request_stats_unavailable": dg.MetadataValue.json(result.stats_unavailable),
        "readings": len(result.all_readings),
        "shard": shard_label,
        "participants_monitored": len(ispbs),
        "participants_answered": len(result.readings),
        "participants_failed": dg.MetadataValue.json(
            {f.ispb: f"{f.error_class}: {f.message}" for f in result.failures.values()}
        ),
        "bridge_errors_by_class": dg.MetadataValue.json(failures_by_class(result)),
        "polled_at": result.polled_at.isoformat(),
        "poll_second_of_minute": round(
            result.polled_at.second + result.polled_at.microsecond / 1e6, 3
        ),
        "dict_response_time_min": first.isoformat() if first else "",
        "dict_response_time_max": last.isoformat() if last else "",
        "bridge_latency_p50_seconds": round(statistics.median(latencies), 4) if latencies else 0.0,
        "bridge_latency_max_seconds": round(max(latencies), 4) if latencies else 0.0,
        "bridge_seconds": round(bridge_seconds, 4),
        "insert_seconds": round(insert_seconds, 4),
        "total_seconds": round(time.perf_counter() - started, 4),
        **_worst(result),
        **spend_metadata(spend),
    }
    complete = dg.AssetCheckResult(
        check_name=COMPLETE_READING,
        passed=not result.failures and not stored.vanished,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "missing_participants": dg.MetadataValue.json(sorted(result.failures)),
            "invalid_fields": dg.MetadataValue.json(
                {f.ispb: f.field for f in result.failures.values() if f.field}
            ),
            "vanished_policies": dg.MetadataValue.json([f"{i}/{p}" for i, p in stored.vanished]),
        },
        description=_describe_completeness(result, stored.vanished),
    )
    shape = dg.AssetCheckResult(
        check_name=BUCKET_SHAPE_UNCHANGED,
        passed=not stored.shape_changes,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"changes": dg.MetadataValue.json([c.describe() for c in stored.shape_changes])},
    )
    return dg.MaterializeResult(metadata=metadata, check_results=[complete, shape])


@contextlib.contextmanager
def _retry_if_database_down(
    context: dg.AssetExecutionContext, bridge: BridgeResource
) -> Iterator[None]:
    """A Postgres restart mid-run: the transaction rolled back, nothing half-stored, and the
    sweep is repeatable (same ResponseTimes are stored once), so retry the step."""
    try:
        yield
    except sa.exc.OperationalError as error:
        context.log.warning(f"database unavailable: {str(error.orig).strip().splitlines()[0]}")
        raise dg.RetryRequested(max_retries=3, seconds_to_wait=bridge.retry_wait_seconds) from error


def _describe_completeness(result: PollResult, vanished: list[tuple[str, str]]) -> str:
    parts = [
        f"{f.ispb}: {f.error_class}" + (f" ({f.field})" if f.field else "")
        for f in result.failures.values()
    ]
    parts += [f"{ispb}/{policy} vanished" for ispb, policy in vanished]
    return "; ".join(parts) if parts else "every participant answered with every policy"
