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
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pulsar
from opentelemetry import trace

from dict_ratelimit import tracing
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


class PulsarConfigError(ValueError):
    """A Pulsar setting that cannot work or would leak a secret; names the setting."""


@dataclass(frozen=True)
class PulsarTarget:
    """Where and how to publish. TLS: a ``pulsar+ssl://`` URL, the CA that signed the broker
    (``tls_ca``), and for mutual TLS a client certificate and key (file paths or PEM text)."""

    service_url: str
    topic: str = DEFAULT_TOPIC
    producer_name: str = DEFAULT_PRODUCER_NAME
    timeout_seconds: float = 10.0
    auth_token: str | None = None
    tls_ca: str | None = None
    tls_client_cert: str | None = None
    tls_client_key: str | None = None
    tls_validate_hostname: bool = True
    allow_plaintext_token: bool = False

    @property
    def uses_tls(self) -> bool:
        return self.service_url.startswith("pulsar+ssl://")

    def validate(self) -> PulsarTarget:
        """Refuse what would fail late or send a secret in clear."""
        if not self.service_url.startswith(("pulsar://", "pulsar+ssl://")):
            raise PulsarConfigError(
                "DICT_RATELIMIT_PULSAR_URL must start with pulsar:// or pulsar+ssl://"
            )
        if self.auth_token and not self.uses_tls and not self.allow_plaintext_token:
            raise PulsarConfigError(
                "DICT_RATELIMIT_PULSAR_TOKEN would travel in clear over pulsar://: use a "
                "pulsar+ssl:// URL, or set DICT_RATELIMIT_PULSAR_ALLOW_PLAINTEXT_TOKEN=true"
            )
        if (self.tls_ca or self.tls_client_cert) and not self.uses_tls:
            raise PulsarConfigError(
                "DICT_RATELIMIT_PULSAR_TLS_* need a pulsar+ssl:// DICT_RATELIMIT_PULSAR_URL"
            )
        if bool(self.tls_client_cert) != bool(self.tls_client_key):
            raise PulsarConfigError(
                "mutual TLS needs both DICT_RATELIMIT_PULSAR_TLS_CLIENT_CERT and _TLS_CLIENT_KEY"
            )
        return self


@contextlib.contextmanager
def _pem_file(value: str | None) -> Iterator[str | None]:
    """A file path for pulsar-client, which reads certificates from files only: the path as
    given, or the PEM text written to a private (0600) temporary file for the call."""
    if not value:
        yield None
        return
    if not value.lstrip().startswith("-----BEGIN"):
        if not Path(value).is_file():
            raise PulsarConfigError(f"certificate or key file not found: {value}")
        yield value
        return
    fd, name = tempfile.mkstemp(prefix="dict-ratelimit-pulsar-", suffix=".pem")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(value)
        yield name
    finally:
        os.unlink(name)


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


def _traceparent(row: OutboxRow) -> str | None:
    """The trace context the event was written in (None when untraced or unreadable)."""
    try:
        value = json.loads(row.payload).get("traceparent")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


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
    with contextlib.ExitStack() as files:
        ca = files.enter_context(_pem_file(target.tls_ca))
        cert = files.enter_context(_pem_file(target.tls_client_cert))
        key = files.enter_context(_pem_file(target.tls_client_key))
        _send(target, rows, outcome, deadline, log, clock, (ca, cert, key))
    outcome.seconds = time.monotonic() - started
    return outcome


def _send(
    target: PulsarTarget,
    rows: Sequence[OutboxRow],
    outcome: PublishOutcome,
    deadline: float | None,
    log: Callable[[str], None],
    clock: Clock,
    tls_files: tuple[str | None, str | None, str | None],
) -> None:
    """Send in order until the first failure (recorded in ``outcome``, never raised)."""
    ca, cert, key = tls_files
    timeout_ms = int(target.timeout_seconds * 1000)
    tls: dict[str, object] = {}
    if target.uses_tls:
        tls = {
            "tls_trust_certs_file_path": ca,
            "tls_validate_hostname": target.tls_validate_hostname,
            "tls_allow_insecure_connection": False,
            "tls_certificate_file_path": cert,
            "tls_private_key_file_path": key,
        }
    client = pulsar.Client(
        target.service_url,
        authentication=pulsar.AuthenticationToken(target.auth_token) if target.auth_token else None,
        operation_timeout_seconds=max(1, int(target.timeout_seconds)),
        connection_timeout_ms=timeout_ms,
        logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error),
        **tls,
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
            with (
                tracing.continued_from(_traceparent(row)),
                tracing.span(
                    "pulsar publish",
                    trace.SpanKind.PRODUCER,
                    **{"messaging.system": "pulsar", "messaging.destination.name": target.topic,
                       "messaging.message.id": row.event_id, "dict.participant": row.ispb,
                       "dict.policy": row.policy},
                ),
            ):  # fmt: skip
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
