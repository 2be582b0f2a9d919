"""OpenTelemetry traces of a tick, followed into the alert events and their Pulsar publish.

Spans go to OpenTelemetry's in-memory exporter through a provider installed for the test only
(``tracing.use_provider``); the rest of the suite runs untraced, as production does by default.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import jsonschema
import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.engine import URL, Engine

from dict_ratelimit import tracing
from dict_ratelimit.events.cloudevents import load_schema
from dict_ratelimit.events.publisher import PulsarTarget, publish
from dict_ratelimit.simulator.v1 import control_pb2 as ctl
from dict_ratelimit.storage.outbox import unpublished
from dict_ratelimit_tests.pulsar_broker.broker import PulsarTestBroker
from dict_ratelimit_tests.simulation import RunningSimulator, running_simulator
from dict_ratelimit_tests.ticks import monitor_resources, run_tick

pytestmark = [pytest.mark.e2e, pytest.mark.timebased]

PARTICIPANTS = {"12345678": "A", "87654321": "D"}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with tracing.use_provider(provider):
        yield exporter
    provider.shutdown()


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    with running_simulator(PARTICIPANTS, "scan-attack") as running:
        yield running


def _by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name == name]


def test_a_tick_is_one_trace_with_its_bridge_calls_stages_and_the_events_carry_it(
    spans: InMemorySpanExporter,
    sim: RunningSimulator,
    db_url: URL,
    engine: Engine,
    pulsar_broker: PulsarTestBroker,
) -> None:
    sim.advance(1200)  # the key scan has drained the anti-scan buckets: alerts open
    sim.inject(ctl.PERMISSION_DENIED, participant="87654321", times=0)  # its calls fail
    run = run_tick(sim, monitor_resources(sim, db_url, list(PARTICIPANTS)))
    assert run.success
    finished = spans.get_finished_spans()
    trace_id = uuid.UUID(run.run_id).int  # the run id is the trace id
    steps = [
        *_by_name(finished, "monitor policy_snapshots"),
        *_by_name(finished, "monitor derive_metrics_and_levels"),
        *_by_name(finished, "monitor alerts"),
    ]
    assert len(steps) == 3 and {s.context.trace_id for s in steps} == {trace_id}
    assert all(s.attributes["dagster.run_id"] == run.run_id for s in steps)

    bridge = [s for s in finished if s.name.startswith("bridge ")]
    assert {s.attributes["dict.participant"] for s in bridge} == set(PARTICIPANTS)
    assert {s.context.trace_id for s in bridge} == {trace_id}  # from the poller's threads
    sweep = _by_name(finished, "monitor policy_snapshots")[0]
    assert all(s.parent is not None and s.parent.span_id == sweep.context.span_id for s in bridge)
    failed = [s for s in bridge if s.attributes.get("error.type")]
    assert failed and {s.attributes["dict.participant"] for s in failed} == {"87654321"}
    assert all(s.attributes["error.type"] == "permission_denied" for s in failed)
    assert not failed[0].status.is_ok

    for stage in ("store", "derive", "alerts"):
        [span] = _by_name(finished, stage)
        assert span.context.trace_id == trace_id, stage
    [alerts] = _by_name(finished, "alerts")
    assert alerts.attributes["transitions"] >= 1

    # every event carries the trace context of the alert write; the publish continues it
    with engine.connect() as connection:
        rows = unpublished(connection, 100)
    assert rows
    schema = load_schema()
    parents = {}
    for row in rows:
        event = json.loads(row.payload)
        jsonschema.validate(event, schema, format_checker=jsonschema.FormatChecker())
        _, trace_hex, span_hex, _ = event["traceparent"].split("-")
        assert int(trace_hex, 16) == trace_id and int(span_hex, 16) == alerts.context.span_id
        parents[row.event_id] = int(span_hex, 16)
    spans.clear()
    outcome = publish(PulsarTarget(service_url=pulsar_broker.url, timeout_seconds=5), rows)
    assert outcome.error is None and len(outcome.receipts) == len(rows)
    published = _by_name(spans.get_finished_spans(), "pulsar publish")
    assert [s.attributes["messaging.message.id"] for s in published] == [r.event_id for r in rows]
    for span in published:
        assert span.context.trace_id == trace_id  # a notification leads back to its tick
        assert span.parent is not None
        assert span.parent.span_id == parents[span.attributes["messaging.message.id"]]


def test_untraced_work_records_nothing_and_events_carry_no_trace_context(
    sim: RunningSimulator, db_url: URL, engine: Engine
) -> None:
    sim.advance(1200)
    assert tracing.traceparent() is None  # off: OpenTelemetry's no-op tracer
    assert run_tick(sim, monitor_resources(sim, db_url, list(PARTICIPANTS))).success
    with engine.connect() as connection:
        payloads = connection.execute(
            sa.text("SELECT payload FROM dict_ratelimit.alert_event")
        ).scalars()
        events = list(payloads)
    assert events and all("traceparent" not in event for event in events)


@pytest.mark.parametrize(
    ("environ", "enabled"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_tracing_is_off_unless_the_standard_variables_ask(
    environ: dict[str, str], enabled: bool
) -> None:
    assert tracing.enabled_by_environment(environ) is enabled


def test_the_watch_lanes_parallel_reads_stay_in_the_rounds_trace(
    spans: InMemorySpanExporter,
) -> None:
    from opentelemetry import trace

    from dict_ratelimit.bridge.reads import _each

    seen: list[int] = []
    with tracing.span("watch round") as round_span:
        _each(
            lambda _: seen.append(trace.get_current_span().get_span_context().trace_id),
            range(6),
            max_concurrency=3,
        )
    assert seen == [round_span.get_span_context().trace_id] * 6
