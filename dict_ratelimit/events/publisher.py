"""Sending outbox rows to Pulsar with the real ``pulsar-client``.

Each row becomes one message: key ``<ispb>/<policy>`` (per-alert ordering with Key_Shared
consumers), properties for the CloudEvents type, id and severity, the event time, and
``sequence_id`` = the outbox id under a stable producer name, so a broker with deduplication
drops a re-send of a row whose receipt was lost. Batching is off: one receipt per row, so a
row is marked published only once the broker has it. Sends are synchronous and in id order;
the first failure stops the batch (later rows must not overtake it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pulsar

from dict_ratelimit.clock import Clock, SystemClock
from dict_ratelimit.events.cloudevents import message_key
from dict_ratelimit.storage.outbox import OutboxRow

DEFAULT_TOPIC = "persistent://lb-conn/dict/rate-limit-alerts"
DEFAULT_PRODUCER_NAME = "dict-ratelimit-alert-publisher"


@dataclass
class PublishOutcome:
    receipts: list[tuple[int, dt.datetime]] = field(default_factory=list)
    failed_row: OutboxRow | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class PulsarTarget:
    service_url: str
    topic: str = DEFAULT_TOPIC
    producer_name: str = DEFAULT_PRODUCER_NAME
    timeout_seconds: float = 10.0
    auth_token: str | None = None


def _properties(row: OutboxRow) -> dict[str, str]:
    properties = {
        "ce_type": row.type,
        "ce_id": row.event_id,
        "content-type": "application/cloudevents+json",
        "ispb": row.ispb,
        "policy": row.policy,
    }
    if row.severity:
        properties["severity"] = row.severity
    return properties


def publish(
    target: PulsarTarget,
    rows: Sequence[OutboxRow],
    *,
    deadline: float | None = None,
    log: Callable[[str], None] = lambda _: None,
    clock: Clock | None = None,
) -> PublishOutcome:
    """Send ``rows`` in order until done, the first failure, or ``deadline`` (monotonic).

    Each receipt is stamped with ``clock`` (our clock): the outbox purge counts from it."""
    clock = clock or SystemClock()
    outcome = PublishOutcome()
    started = time.monotonic()
    timeout_ms = int(target.timeout_seconds * 1000)
    client = pulsar.Client(
        target.service_url,
        authentication=pulsar.AuthenticationToken(target.auth_token) if target.auth_token else None,
        operation_timeout_seconds=max(1, int(target.timeout_seconds)),
        connection_timeout_ms=timeout_ms,
        logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error),
    )
    current: OutboxRow | None = rows[0] if rows else None  # blamed if no producer comes up
    try:
        producer = client.create_producer(
            target.topic,
            producer_name=target.producer_name,
            batching_enabled=False,
            send_timeout_millis=timeout_ms,
            block_if_queue_full=False,
        )
        for row in rows:
            if deadline is not None and time.monotonic() > deadline:
                log(f"time budget spent after {len(outcome.receipts)} events; the rest next tick")
                break
            current = row
            producer.send(
                row.payload.encode(),
                properties=_properties(row),
                partition_key=message_key(row.ispb, row.policy),
                sequence_id=row.id,
                event_timestamp=int(row.occurred_at.timestamp() * 1000),
            )
            outcome.receipts.append((row.id, clock.now()))
        current = None
        producer.close()
    except Exception as error:  # pulsar raises its own hierarchy; all mean "not sent"
        outcome.failed_row = current
        outcome.error = f"{type(error).__name__}: {error}"
    finally:
        # closing a client whose broker vanished can fail; there is nothing left to keep
        with contextlib.suppress(Exception):
            client.close()
        outcome.seconds = time.monotonic() - started
    return outcome
