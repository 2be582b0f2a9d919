"""``publish_alert_events``: the sensor that moves outbox rows to Pulsar.

Every 30 s it reads unpublished rows in id order (at most ``batch_limit``, within a time
budget well under Dagster's 60 s sensor limit), sends them, and marks each row published with
its receipt time. What decides what to send is ``published_at`` in Postgres, not the sensor
cursor (kept only to show the last id sent): an old or reset cursor re-sends nothing.
A broker that is down fails the tick with the reason; rows stay unpublished and go out, in
order, on the first tick that reaches the broker again.

A tick that published records a materialization of ``pulsar_alert_events`` (the topic, an
external asset downstream of ``alerts``), so the asset shows what was sent. Dagster 1.13 files
every sensor tick without a run request as SKIPPED; the tick's reason then starts with
"published (no run):" and says what went out, and a tick with nothing to send says so.
"""

import time

import dagster as dg

from dict_ratelimit.defs.resources import ClockResource, PostgresResource, PulsarResource
from dict_ratelimit.events.publisher import publish
from dict_ratelimit.storage.outbox import backlog, mark_published, record_failure, unpublished

PULSAR_ALERT_EVENTS = dg.AssetSpec(
    "pulsar_alert_events",
    deps=["alerts"],
    group_name="dict",
    kinds={"pulsar"},
    description="The Pulsar topic the notification service reads: alert events as CloudEvents "
    "JSON, published from the outbox by the publish_alert_events sensor (external: each "
    "sensor tick that published records a materialization).",
)


class PublishFailed(Exception):
    """Shown as the sensor tick's error: what was sent, what failed, what waits."""


@dg.sensor(
    name="publish_alert_events",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Publishes alert events from the outbox (dict_ratelimit.alert_event) to "
    "Pulsar in order, marking each row after the broker's receipt.",
)
def publish_alert_events(
    context: dg.SensorEvaluationContext,
    postgres: PostgresResource,
    pulsar: PulsarResource,
    clock: ClockResource,
) -> dg.SensorResult:
    started = time.monotonic()
    target = pulsar.target()
    engine = postgres.engine
    with engine.connect() as connection:  # no transaction stays open while we talk to Pulsar
        if target is None:
            waiting = backlog(connection)
            return dg.SensorResult(
                skip_reason="Pulsar not configured (DICT_RATELIMIT_PULSAR_URL unset): "
                f"{waiting} event(s) wait in the outbox"
            )
        rows = unpublished(connection, pulsar.batch_limit)
    if not rows:
        return dg.SensorResult(skip_reason="outbox empty: nothing to publish")
    outcome = publish(
        target,
        rows,
        deadline=started + pulsar.time_budget_seconds,
        log=context.log.info,
        clock=clock.clock(),
    )
    with engine.begin() as connection:
        mark_published(connection, outcome.receipts)
        if outcome.failed_row is not None and outcome.error:
            record_failure(connection, outcome.failed_row.id, outcome.error)
        waiting = backlog(connection)
    sent = len(outcome.receipts)
    cursor = str(outcome.receipts[-1][0]) if outcome.receipts else context.cursor
    if outcome.error:
        raise PublishFailed(
            f"published {sent} of {len(rows)} event(s) to {target.topic}, then: "
            f"{outcome.error}; {waiting} event(s) stay in the outbox for the next tick"
        )
    first, last = outcome.receipts[0][0], outcome.receipts[-1][0]
    summary = (
        f"published {sent} event(s) (outbox ids {first}–{last}) to {target.topic} "
        f"in {outcome.seconds:.2f} s; {waiting} waiting"
    )
    context.log.info(summary)
    return dg.SensorResult(
        asset_events=[
            dg.AssetMaterialization(
                asset_key=PULSAR_ALERT_EVENTS.key,
                description=summary,
                metadata={
                    "published": sent,
                    "first_outbox_id": first,
                    "last_outbox_id": last,
                    "topic": target.topic,
                    "seconds": round(outcome.seconds, 3),
                    "waiting": waiting,
                },
            )
        ],
        cursor=cursor,
        # Dagster 1.13 files a tick without run requests as SKIPPED: the reason says what it did
        skip_reason=f"published (no run): {summary}",
    )
