"""The CloudEvents 1.0 JSON document of an alert transition (schema: ``schemas/``).

The downstream notification service agreed field names with the system we replace:
``policy``, ``severity``, ``utilization`` (percent of the bucket used) and ``message`` keep
those names inside ``data``. Everything else is new and additive.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from dict_ratelimit.domain.alerts import PARTICIPANT, Kind, Transition

TYPE_PREFIX = "com.lbconn.dict.ratelimit."
DEFAULT_SOURCE = "urn:lbconn:dict-ratelimit:monitor"
DATA_SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("alert-event.schema.json")


def _iso(at: dt.datetime | None) -> str | None:
    if at is None:
        return None
    return at.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _number(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def event_type(transition: Transition) -> str:
    return TYPE_PREFIX + transition.kind.value


def message_key(ispb: str, policy: str) -> str:
    """The Pulsar message key: per-alert ordering for Key_Shared consumers."""
    return f"{ispb}/{policy}"


#: The runbook section of an event, by kind (staleness) or severity (the bucket alerts):
#: the same sections the Prometheus rules link to.
_RUNBOOK_BY_SEVERITY = {
    "EXHAUSTED": "bucket-exhausted",
    "CRITICAL": "bucket-critical",
    "WARNING": "bucket-warning",
}


def runbook_url(transition: Transition, base_url: str | None) -> str | None:
    """The absolute runbook link of a transition; None without a base URL or a section."""
    if not base_url:
        return None
    if transition.kind in (Kind.NODATA, Kind.DATA_RESTORED):
        return f"{base_url}#snapshot-stale"
    severity = transition.severity.name if transition.severity is not None else None
    section = _RUNBOOK_BY_SEVERITY.get(severity or "")
    return f"{base_url}#{section}" if section else None


def to_cloudevent(
    transition: Transition,
    source: str = DEFAULT_SOURCE,
    runbook_base_url: str | None = None,
    *,
    traceparent: str | None = None,
) -> dict[str, Any]:
    """The event document of one transition (deterministic: same transition, same bytes,
    apart from the trace context of a traced write; the id is stable either way);
    ``data.runbook_url`` only when a runbook base URL is configured, the ``traceparent``
    extension (W3C trace context of the write) only when the work is traced."""
    episode = transition.episode
    obs = transition.observation
    data: dict[str, Any] = {
        "schema_version": DATA_SCHEMA_VERSION,
        "alert_id": episode.key if episode else None,
        "sequence": episode.sequence if episode else None,
        "participant": transition.ispb,
        "policy": transition.policy,
        "category": transition.category
        or (obs.category if obs else (episode.category if episode else None)),
        "status": episode.status.value if episode else None,
        "severity": transition.severity.name if transition.severity is not None else None,
        "previous_severity": transition.previous_severity.name
        if transition.previous_severity is not None
        else None,
        "peak_severity": episode.peak_severity.name if episode else None,
        "reading_time": _iso(obs.at) if obs else None,
        "tokens": obs.available_tokens if obs else None,
        "capacity": obs.capacity if obs else None,
        "utilization": round(100.0 * (1.0 - obs.remaining_ratio), 3) if obs else None,
        "remaining_ratio": round(obs.remaining_ratio, 6) if obs else None,
        "lowest_remaining_ratio": _number(episode.lowest_remaining_ratio) if episode else None,
        "forecast": {
            "time_to_429_seconds": _number(obs.time_to_429_s) if obs else None,
            "demand_per_min": _number(obs.demand_per_min) if obs else None,
            "refill_per_min": _number(obs.refill_per_min) if obs else None,
        },
        "reasons": [dict(reason) for reason in (episode.reasons if episode else ())],
        "message": transition.message,
        "episode_started_at": _iso(episode.opened_at) if episode else None,
        "last_reading_time": _iso(episode.last_observed_at) if episode else None,
    }
    if transition.previous_category is not None:
        data["previous_category"] = transition.previous_category
    link = runbook_url(transition, runbook_base_url)
    if link is not None:
        data["runbook_url"] = link
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": transition.event_id,
        "source": source,
        "type": event_type(transition),
        "subject": transition.policy if transition.policy != PARTICIPANT else transition.ispb,
        "time": _iso(transition.at),
        "datacontenttype": "application/json",
        "dataschema": "urn:lbconn:dict-ratelimit:schema:alert-event:1",
        "data": data,
    }
    if traceparent is not None:
        document["traceparent"] = traceparent  # CloudEvents distributed-tracing extension
    return document


def encode(event: dict[str, Any]) -> bytes:
    """The bytes published to Pulsar (compact, keys in a stable order)."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())
