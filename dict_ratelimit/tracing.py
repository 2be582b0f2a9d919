"""OpenTelemetry traces of the work: off by default, configured by the standard ``OTEL_*``
variables, and free when off.

Turned on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp`` or ``console``) or an OTLP
endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``),
unless ``OTEL_SDK_DISABLED=true``; the OTLP exporter reads its endpoint, headers and TLS from the
same standard variables, and ``OTEL_SERVICE_NAME`` names the service (default
``dict-ratelimit``). Off, :func:`tracer` is OpenTelemetry's no-op tracer: a span is an object
that records nothing.

Shape: one trace per monitor run (its id is the Dagster run id, so a run and its trace find
each other) with a span per step (``policy_snapshots``, ``derive``, ``alerts``), a client span
per Bridge call (with the W3C ``traceparent`` sent in the call's metadata), and spans for the
store, the derive and the alert writes; one trace per watch-lane round; a span per Pulsar
publish, a child of the span that wrote the event (each alert event carries that
``traceparent`` as a CloudEvents extension), so a notification leads back to its tick.

The provider is held here, not installed globally, so that tests can trace into memory and
leave nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

T = TypeVar("T")
NAME = "dict_ratelimit"
_propagator = TraceContextTextMapPropagator()
_provider: trace.TracerProvider = trace.NoOpTracerProvider()


def tracer() -> trace.Tracer:
    """The project's tracer (no-op unless tracing is configured)."""
    return _provider.get_tracer(NAME)


def is_on() -> bool:
    """Whether spans are recorded (a provider is configured)."""
    return not isinstance(_provider, trace.NoOpTracerProvider)


def enabled_by_environment(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the standard variables ask for traces."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        exporter in {"otlp", "console"}
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure_from_environment() -> bool:
    """Set up the SDK with the exporter the environment names (once per process); True when
    tracing is on."""
    global _provider
    if isinstance(_provider, trace.NoOpTracerProvider) and enabled_by_environment():
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )

        service = os.environ.get("OTEL_SERVICE_NAME") or "dict-ratelimit"
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        exporter: SpanExporter
        if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        _provider = provider
    return is_on()


@contextlib.contextmanager
def use_provider(provider: trace.TracerProvider) -> Iterator[None]:
    """Trace with ``provider`` for a while (tests: an in-memory exporter)."""
    global _provider
    previous, _provider = _provider, provider
    try:
        yield
    finally:
        _provider = previous


@contextlib.contextmanager
def span(
    name: str, kind: trace.SpanKind = trace.SpanKind.INTERNAL, **attributes: Any
) -> Iterator[trace.Span]:
    """A span of the current trace; an exception marks it as an error, named by its class
    only (an exception's message could hold a secret)."""
    with tracer().start_as_current_span(
        name, kind=kind, attributes=_clean(attributes), record_exception=False
    ) as current:
        try:
            yield current
        except BaseException as error:
            current.set_attribute("exception.type", type(error).__name__)
            current.set_status(trace.StatusCode.ERROR, type(error).__name__)
            raise


@contextlib.contextmanager
def run_trace(run_id: str, name: str, **attributes: Any) -> Iterator[trace.Span]:
    """A span in the trace of a Dagster run: its trace id is the run id (a UUID), so every
    step of the run, each in its own span, lands in the same trace."""
    if not is_on():
        yield trace.INVALID_SPAN
        return
    try:
        trace_id = uuid.UUID(run_id).int
    except ValueError:
        trace_id = uuid.uuid4().int
    parent = SpanContext(
        trace_id=trace_id,
        span_id=(trace_id & 0xFFFFFFFFFFFFFFFF) or 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    context = trace.set_span_in_context(NonRecordingSpan(parent))
    attributes = {"dagster.run_id": run_id, **attributes}
    with tracer().start_as_current_span(
        name, context=context, attributes=_clean(attributes)
    ) as current:
        yield current


def traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span; None when nothing is being traced."""
    carrier: dict[str, str] = {}
    if is_on() and trace.get_current_span().get_span_context().is_valid:
        _propagator.inject(carrier)
    return carrier.get("traceparent")


def inject(metadata: list[tuple[str, str]]) -> None:
    """Add the current trace context to outgoing gRPC metadata (W3C headers)."""
    if not is_on():
        return
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    metadata.extend(carrier.items())


@contextlib.contextmanager
def continued_from(parent: str | None) -> Iterator[None]:
    """Make the span of ``parent`` (a ``traceparent``) the current one, if it parses."""
    if not parent:
        yield
        return
    token = otel_context.attach(_propagator.extract({"traceparent": parent}))
    try:
        yield
    finally:
        otel_context.detach(token)


def carry_context(function: Callable[..., T]) -> Callable[..., T]:
    """``function`` bound to the caller's trace context, for a worker thread (a thread pool
    does not inherit it)."""
    captured = otel_context.get_current()

    def run(*args: Any, **kwargs: Any) -> T:
        token = otel_context.attach(captured)
        try:
            return function(*args, **kwargs)
        finally:
            otel_context.detach(token)

    return run


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in attributes.items() if value is not None}
