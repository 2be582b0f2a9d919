"""``watch_hot_buckets``: the watch lane, a sensor that re-reads hot buckets between sweeps.

At the five-minute cadence a key scan or a burst can empty a bucket between two sweeps, and the
first sign would be DICT's first 429. Every ``DICT_RATELIMIT_WATCH_INTERVAL_SECONDS`` (15 s by
default) this sensor asks the Bridge for each participant's request counts (free: no DICT
token), picks the buckets that are hot and due (``domain.watch``), re-reads them within the
monitor's own DICT budget, and runs the readings through the same store → derive → alerts
stages as a sweep (``pipeline.watch``).

Why a sensor and not a job: a run every 15 s would be 5,760 runs a day in the run storage, each
paying a process launch (seconds) before its first read; a sensor tick is evaluated in the code
server in milliseconds, cannot overlap itself, and shows in the UI with its reason. A round that
read something records materializations of ``policy_snapshots``, the day's metrics partition
and (on a transition) ``alerts``, tagged ``source: watch``, so the lineage and the asset history
show every reading the lane took. Dagster files every tick without a run request as SKIPPED;
its reason says what the round did: "read (no run): …" or "nothing read: …".
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from dict_ratelimit.defs.metrics import tick_partition
from dict_ratelimit.defs.resources import (
    AlertRulesResource,
    BridgeResource,
    ClockResource,
    PostgresResource,
    ThresholdsResource,
    WatchResource,
)
from dict_ratelimit.defs.spend import spend_metadata
from dict_ratelimit.pipeline.tick import PipelineSettings
from dict_ratelimit.pipeline.watch import WatchReport, watch_once

WATCH_SENSOR = "watch_hot_buckets"


def _pipeline_settings(
    bridge: BridgeResource, thresholds: ThresholdsResource, alert_rules: AlertRulesResource
) -> PipelineSettings:
    return PipelineSettings(
        known_policies=bridge.known_policies(),
        thresholds=thresholds.config(),
        rules=alert_rules.rules(),
        max_skew=bridge.max_skew(),
        max_concurrency=bridge.max_concurrency,
        stats_window=bridge.stats_window(),
        event_source=alert_rules.event_source,
        runbook_base_url=alert_rules.runbook_base_url,
    )


def summarize(report: WatchReport) -> str:
    """One line for the tick's log or skip reason: what was hot, read, skipped."""
    lists, reads = report.spent
    parts = [f"{len(report.hot)} hot bucket(s)"]
    if report.hot:
        top = report.hot[0]
        parts.append(f"most urgent {top.ispb}/{top.policy} ({top.reason})")
    parts.append(f"{reads} read(s) and {lists} listing(s) spent")
    if report.skipped:
        parts.append(f"{len(report.skipped)} held back by the budget")
    if report.counts_unknown:
        parts.append(f"counts unknown for {len(report.counts_unknown)} participant(s)")
    if report.poll is not None and report.poll.failures:
        parts.append(f"{len(report.poll.failures)} participant(s) failed")
    return "; ".join(parts)


def _events(report: WatchReport) -> list[dg.AssetMaterialization]:
    if report.store is None or report.poll is None:
        return []
    common: dict[str, Any] = {"source": "watch", "watched_at": report.now.isoformat()}
    events = [
        dg.AssetMaterialization(
            asset_key="policy_snapshots",
            description=f"watch lane: {summarize(report)}",
            metadata={
                **common,
                "rows_inserted": report.store.stored.inserted,
                "readings": len(report.poll.all_readings),
                "hot": dg.MetadataValue.json(
                    [f"{i.ispb}/{i.policy}: {i.reason}" for i in report.hot[:20]]
                ),
                "held_back": dg.MetadataValue.json(dict(list(report.skipped.items())[:20])),
                "participants_failed": dg.MetadataValue.json(
                    {f.ispb: f"{f.error_class}: {f.message}" for f in report.poll.failures.values()}
                ),
                "policies_read_tokens_spent": report.spent[1],
                "policies_list_tokens_spent": report.spent[0],
                **{key: round(value, 4) for key, value in report.timings.items()},
                **spend_metadata(report.spend),
            },
        )
    ]
    if report.derive is not None:
        partition = tick_partition(report.now)
        derived = {
            **common,
            "metric_rows": report.derive.metric_rows,
            "evaluation_rows": report.derive.evaluation_rows,
        }
        events += [
            dg.AssetMaterialization("policy_metrics", partition=partition, metadata=derived),
            dg.AssetMaterialization("threshold_evaluations", partition=partition, metadata=derived),
        ]
    if report.alerts is not None and report.alerts.transitions:
        events.append(
            dg.AssetMaterialization(
                asset_key="alerts",
                description="; ".join(t.message for t in report.alerts.transitions[:5]),
                metadata={
                    **common,
                    "transitions": len(report.alerts.transitions),
                    "events": dg.MetadataValue.json(
                        [f"{t.kind.value} {t.event_id}" for t in report.alerts.transitions[:20]]
                    ),
                },
            )
        )
    return events


def watch_sensor(interval_seconds: int = 15, enabled: bool = True) -> dg.SensorDefinition:
    """The sensor, evaluated at most every ``interval_seconds`` (RUNNING unless disabled)."""

    @dg.sensor(
        name=WATCH_SENSOR,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING
        if enabled
        else dg.DefaultSensorStatus.STOPPED,
        description="Watch lane: between sweeps, re-reads the buckets a key scan or a burst "
        "could empty before the next sweep, within the monitor's own DICT budget, and runs the "
        "readings through the same metrics and alerts.",
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        postgres: PostgresResource,
        bridge: BridgeResource,
        thresholds: ThresholdsResource,
        alert_rules: AlertRulesResource,
        watch: WatchResource,
        clock: ClockResource,
    ) -> dg.SensorResult:
        client = bridge.client()
        try:
            report = watch_once(
                postgres.engine,
                client,
                bridge.participant_list(),
                _pipeline_settings(bridge, thresholds, alert_rules),
                watch.rules(),
                clock.clock(),
                counts=watch.counts,
            )
        finally:
            client.close()
        summary = summarize(report)
        for key, why in sorted(report.skipped.items()):
            context.log.warning(f"watch lane held back {key}: {why}")
        for ispb, why in sorted(report.counts_unknown.items()):
            if why != "unimplemented":
                context.log.warning(f"request counts of {ispb} unknown this round: {why}")
        if report.poll is not None:
            for failure in report.poll.failures.values():
                context.log.error(f"watch lane: no reading for {failure.ispb}: {failure.message}")
        events = _events(report)
        if not events:
            return dg.SensorResult(skip_reason=f"nothing read: {summary}")
        context.log.info(f"watch lane: {summary}")
        # Dagster 1.13 files a tick without run requests as SKIPPED whatever it did; the
        # reason then says what was read, instead of "Sensor function returned an empty result"
        return dg.SensorResult(asset_events=events, skip_reason=f"read (no run): {summary}")

    return _sensor
