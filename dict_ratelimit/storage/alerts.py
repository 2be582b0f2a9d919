"""Alert state and the outbox in Postgres: one transaction applies a tick's evaluations.

``apply_evaluations`` takes the evaluations waiting in ``alert_backlog`` (written by the
metrics step, whatever their DICT time), loads each identity's track (newest evaluation
applied, streak, open episode), feeds it the new evaluations, checks staleness and the
participant-level dead man's switch on the injected clock, and writes the tracks, the
episodes and one outbox row per transition, all in the caller's transaction, under an
advisory lock, so a monitor tick, the watch lane and the watchdog never interleave and outbox
ids are allocated (and committed) in transition order. Nothing is selected by comparing
DICT's time with ours, so no evaluation can fall out of a window and vanish.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dict_ratelimit import tracing
from dict_ratelimit.domain.alerts import (
    AlertRules,
    Episode,
    Kind,
    Observation,
    Status,
    Track,
    Transition,
    advance,
)
from dict_ratelimit.domain.thresholds import Level
from dict_ratelimit.events.cloudevents import DEFAULT_SOURCE, event_type, to_cloudevent
from dict_ratelimit.storage.bulk import stage_rows
from dict_ratelimit.storage.queues import KEYS_CTE, key_parameters, shard_filter, take_keys

#: Key of the transaction-level advisory lock every alert writer takes.
ALERTS_LOCK = 0x0D1C7A1E

#: Evaluations taken from the backlog per transaction (a backlog left by a long outage is
#: worked off over several runs instead of one huge transaction).
BATCH_LIMIT = 200_000


@dataclass
class AlertReport:
    """What one application did (asset metadata)."""

    evaluations_applied: int = 0
    transitions: list[Transition] = field(default_factory=list)
    open_by_severity: dict[str, int] = field(default_factory=dict)
    nodata_open: int = 0
    timings: dict[str, float] = field(default_factory=dict)


_TRACKS = """
SELECT t.ispb, t.policy, t.last_observed_at, t.category, t.fire_streak, t.last_received_at,
       a.alert_key, a.category AS alert_category, a.opened_at, a.status, a.severity,
       a.peak_severity, a.last_observed_at AS alert_last_observed_at, a.lowest_remaining_ratio,
       a.lowest_available_tokens, a.severity_history, a.reasons, a.message, a.sequence,
       a.clear_streak, a.calm_streak, a.calm_level, a.clear_since, a.calm_since,
       a.last_received_at AS alert_last_received_at
FROM dict_ratelimit.alert_track AS t
LEFT JOIN dict_ratelimit.alert AS a
       ON a.ispb = t.ispb AND a.policy = t.policy AND a.status <> 'resolved'
"""

# The evaluations of the taken keys with the reading and forecast behind them: one keyed read
# per table, joined here. (One three-way join let the planner, misled by a young partition
# where a sweep's readings share one time, nest index probes on the time alone: 10,000 keys took
# 45 s; a single join of the keys with one table is a hash join or an exact probe whatever the
# statistics say.) The constant bounds (the keys' oldest and newest time) prune the partitions.
_KEYED_READ = f"""
WITH {KEYS_CTE}
SELECT k.n, {{columns}}
FROM keys AS k
JOIN dict_ratelimit.{{table}} AS x
  ON x.ispb = k.ispb AND x.policy = k.policy AND x.response_time = k.response_time
 AND x.response_time BETWEEN %(first)s AND %(last)s
"""

_OBSERVATION_PARTS = {
    "threshold_evaluation": "x.level, x.reasons, "
    "coalesce((x.thresholds ->> 'clear_ratio')::double precision, 0.30)",
    "policy_metric": "x.available_tokens, x.capacity, x.time_to_429_s, x.demand_per_min, "
    "x.refill_per_min",
    "policy_snapshot": "x.category, x.polled_at",
}
#: The three reads behind an observation, by table (the bounds test and the bench use them).
OBSERVATION_READS = {
    table: _KEYED_READ.format(table=table, columns=columns)
    for table, columns in _OBSERVATION_PARTS.items()
}


def _episode(row: Any) -> Episode | None:
    if row.alert_key is None:
        return None
    return Episode(
        key=row.alert_key,
        ispb=row.ispb,
        policy=row.policy,
        category=row.alert_category,
        opened_at=row.opened_at,
        status=Status(row.status),
        severity=Level[row.severity],
        peak_severity=Level[row.peak_severity],
        last_observed_at=row.alert_last_observed_at,
        lowest_remaining_ratio=row.lowest_remaining_ratio,
        lowest_available_tokens=row.lowest_available_tokens,
        severity_history=tuple(tuple(item) for item in row.severity_history),
        reasons=tuple(row.reasons),
        message=row.message,
        sequence=row.sequence,
        clear_streak=row.clear_streak,
        calm_streak=row.calm_streak,
        calm_level=Level[row.calm_level] if row.calm_level else None,
        clear_since=row.clear_since,
        calm_since=row.calm_since,
        last_received_at=row.alert_last_received_at,
    )


def load_tracks(
    connection: Connection,
    ispbs: Sequence[str] | None = None,
    everyone: Sequence[str] | None = None,
) -> dict[tuple[str, str], Track]:
    """Every identity's track with its open episode (only a shard's when ``ispbs`` is given:
    ``storage.queues.shard_filter``)."""
    if ispbs is None:
        rows = connection.exec_driver_sql(_TRACKS).fetchall()
    else:
        rows = connection.exec_driver_sql(
            _TRACKS + " WHERE " + shard_filter("t.ispb"),
            {"ispbs": list(ispbs), "everyone": None if everyone is None else list(everyone)},
        ).fetchall()
    return {
        (row.ispb, row.policy): Track(
            ispb=row.ispb,
            policy=row.policy,
            last_observed_at=row.last_observed_at,
            category=row.category,
            fire_streak=row.fire_streak,
            episode=_episode(row),
            last_received_at=row.last_received_at,
        )
        for row in rows
    }


def take_observations(
    connection: Connection,
    limit: int = BATCH_LIMIT,
    ispbs: Sequence[str] | None = None,
    everyone: Sequence[str] | None = None,
) -> list[Observation]:
    """Remove the waiting evaluations (only a shard's when ``ispbs`` is given) from
    ``alert_backlog`` (the caller's transaction: a failure puts them back) and return them as
    observations, oldest first per identity."""
    keys = take_keys(connection, "alert_backlog", limit, ispbs, everyone)
    if not keys:
        return []
    params = key_parameters(keys)
    parts = []
    for sql in OBSERVATION_READS.values():
        rows = connection.exec_driver_sql(sql, params).fetchall()
        parts.append({row[0]: row[1:] for row in rows})  # by the key's position (cheap)
    evaluations, metrics, snapshots = parts
    observations = []
    for n in sorted(evaluations.keys() & metrics.keys() & snapshots.keys()):
        key = keys[n - 1]
        level, reasons, clear_ratio = evaluations[n]
        available, capacity, time_to_429_s, demand, refill = metrics[n]
        category, polled_at = snapshots[n]
        observations.append(
            Observation(
                ispb=key[0],
                policy=key[1],
                at=key[2],
                level=Level[level],
                reasons=tuple(reasons),
                clear_ratio=clear_ratio,
                available_tokens=available,
                capacity=capacity,
                time_to_429_s=time_to_429_s,
                demand_per_min=demand,
                refill_per_min=refill,
                category=category,
                received_at=polled_at,
            )
        )
    return observations


_UPSERT_TRACKS = """
INSERT INTO dict_ratelimit.alert_track AS t (ispb, policy, last_observed_at, category,
                                             fire_streak, last_received_at)
SELECT ispb, policy, last_observed_at, category, fire_streak, last_received_at
FROM alert_track_staging
ON CONFLICT (ispb, policy) DO UPDATE SET
    last_observed_at = EXCLUDED.last_observed_at,
    category = EXCLUDED.category,
    fire_streak = EXCLUDED.fire_streak,
    last_received_at = EXCLUDED.last_received_at
"""

_UPSERT_ALERT = """
INSERT INTO dict_ratelimit.alert AS a (
    alert_key, ispb, policy, category, status, severity, peak_severity, opened_at, resolved_at,
    last_observed_at, lowest_remaining_ratio, lowest_available_tokens, severity_history,
    reasons, message, sequence, clear_streak, calm_streak, calm_level, last_received_at,
    clear_since, calm_since)
VALUES (
    :alert_key, :ispb, :policy, :category, :status, :severity, :peak_severity, :opened_at,
    :resolved_at, :last_observed_at, :lowest_remaining_ratio, :lowest_available_tokens,
    CAST(:severity_history AS jsonb), CAST(:reasons AS jsonb), :message, :sequence,
    :clear_streak, :calm_streak, :calm_level, :last_received_at, :clear_since, :calm_since)
ON CONFLICT (alert_key) DO UPDATE SET
    category = EXCLUDED.category,
    status = EXCLUDED.status,
    severity = EXCLUDED.severity,
    peak_severity = EXCLUDED.peak_severity,
    resolved_at = EXCLUDED.resolved_at,
    last_observed_at = EXCLUDED.last_observed_at,
    lowest_remaining_ratio = EXCLUDED.lowest_remaining_ratio,
    lowest_available_tokens = EXCLUDED.lowest_available_tokens,
    severity_history = EXCLUDED.severity_history,
    reasons = EXCLUDED.reasons,
    message = EXCLUDED.message,
    sequence = EXCLUDED.sequence,
    clear_streak = EXCLUDED.clear_streak,
    calm_streak = EXCLUDED.calm_streak,
    calm_level = EXCLUDED.calm_level,
    last_received_at = EXCLUDED.last_received_at,
    clear_since = EXCLUDED.clear_since,
    calm_since = EXCLUDED.calm_since,
    updated_at = now()
"""

_INSERT_EVENT = """
INSERT INTO dict_ratelimit.alert_event (event_id, alert_id, type, ispb, policy, severity,
                                        occurred_at, payload)
VALUES (:event_id, (SELECT id FROM dict_ratelimit.alert WHERE alert_key = :alert_key), :type,
        :ispb, :policy, :severity, :occurred_at, CAST(:payload AS jsonb))
ON CONFLICT (event_id) DO NOTHING
"""


def _episode_params(episode: Episode) -> dict[str, Any]:
    return {
        "alert_key": episode.key,
        "ispb": episode.ispb,
        "policy": episode.policy,
        "category": episode.category,
        "status": episode.status.value,
        "severity": episode.severity.name,
        "peak_severity": episode.peak_severity.name,
        "opened_at": episode.opened_at,
        "resolved_at": episode.resolved_at,
        "last_observed_at": episode.last_observed_at,
        "lowest_remaining_ratio": episode.lowest_remaining_ratio,
        "lowest_available_tokens": episode.lowest_available_tokens,
        "severity_history": json.dumps(episode.severity_history),
        "reasons": json.dumps([dict(reason) for reason in episode.reasons], ensure_ascii=False),
        "message": episode.message,
        "sequence": episode.sequence,
        "clear_streak": episode.clear_streak,
        "calm_streak": episode.calm_streak,
        "calm_level": episode.calm_level.name if episode.calm_level is not None else None,
        "last_received_at": episode.last_received_at,
        "clear_since": episode.clear_since,
        "calm_since": episode.calm_since,
    }


_COUNT_EPISODES = """
INSERT INTO dict_ratelimit.alert_counter AS c (ispb, opened, resolved)
VALUES (:ispb, :opened, :resolved)
ON CONFLICT (ispb) DO UPDATE SET opened = c.opened + EXCLUDED.opened,
                                 resolved = c.resolved + EXCLUDED.resolved
"""


def _episode_counts(transitions: Sequence[Transition]) -> list[dict[str, Any]]:
    """Per participant: episodes opened (an episode's first event) and resolved."""
    counts: dict[str, list[int]] = {}
    for transition in transitions:
        if transition.episode is None:
            continue
        opened = transition.episode.sequence == 1
        resolved = transition.kind == Kind.RESOLVED
        if opened or resolved:
            entry = counts.setdefault(transition.ispb, [0, 0])
            entry[0] += opened
            entry[1] += resolved
    return [{"ispb": ispb, "opened": o, "resolved": r} for ispb, (o, r) in counts.items()]


def save(
    connection: Connection,
    before: dict[tuple[str, str], Track],
    after: dict[tuple[str, str], Track],
    transitions: Sequence[Transition],
    source: str,
    runbook_base_url: str | None = None,
) -> None:
    """Write changed tracks, changed episodes and the outbox rows (caller's transaction); each
    event carries the trace context of this write (``traceparent``) when it is traced."""
    parent = tracing.traceparent()
    changed = [track for key, track in after.items() if before.get(key) != track]
    if changed:
        stage_rows(
            connection,
            "alert_track",
            ("ispb", "policy", "last_observed_at", "category", "fire_streak", "last_received_at"),
            [
                (
                    t.ispb,
                    t.policy,
                    t.last_observed_at,
                    t.category,
                    t.fire_streak,
                    t.last_received_at,
                )
                for t in changed
            ],
        )
        connection.exec_driver_sql(_UPSERT_TRACKS)
    episodes: dict[str, Episode] = {}
    for transition in transitions:  # resolved episodes are no longer on a track
        if transition.episode is not None:
            episodes[transition.episode.key] = transition.episode
    for track in changed:
        if track.episode is not None:
            episodes[track.episode.key] = track.episode
    if episodes:
        connection.execute(
            sa.text(_UPSERT_ALERT), [_episode_params(episode) for episode in episodes.values()]
        )
    counts = _episode_counts(transitions)
    if counts:
        connection.execute(sa.text(_COUNT_EPISODES), counts)
    if transitions:
        connection.execute(
            sa.text(_INSERT_EVENT),
            [
                {
                    "event_id": t.event_id,
                    "alert_key": t.episode.key if t.episode else None,
                    "type": event_type(t),
                    "ispb": t.ispb,
                    "policy": t.policy,
                    "severity": t.severity.name if t.severity is not None else None,
                    "occurred_at": t.at,
                    "payload": json.dumps(
                        to_cloudevent(t, source, runbook_base_url, traceparent=parent),
                        ensure_ascii=False,
                    ),
                }
                for t in transitions
            ],
        )


def apply_evaluations(
    connection: Connection,
    rules: AlertRules,
    participants: Iterable[str],
    now: dt.datetime,
    source: str = DEFAULT_SOURCE,
    *,
    shard_only: bool = False,
    everyone: Sequence[str] | None = None,
    runbook_base_url: str | None = None,
) -> AlertReport:
    """Apply every evaluation waiting in the backlog, check staleness against ``now`` (the
    injected clock), write everything (one transaction: the caller's). Safe to repeat: a second
    call finds nothing new.

    With ``shard_only`` the step is a shard's: only ``participants``' evaluations, tracks and
    staleness (another shard's run, or the watchdog, looks after the others), and with
    ``everyone`` (the whole list, given to one shard) also those of participants no longer
    monitored. Without it, every track is checked."""
    with tracing.span("alerts", shard_only=shard_only) as current:
        report = _apply(
            connection, rules, participants, now, source, shard_only, everyone, runbook_base_url
        )
        current.set_attribute("evaluations", report.evaluations_applied)
        current.set_attribute("transitions", len(report.transitions))
        return report


def _apply(
    connection: Connection,
    rules: AlertRules,
    participants: Iterable[str],
    now: dt.datetime,
    source: str,
    shard_only: bool,
    everyone: Sequence[str] | None,
    runbook_base_url: str | None,
) -> AlertReport:
    report = AlertReport()
    started = time.perf_counter()
    # one alert writer at a time, shards included: outbox ids are committed in the order they
    # are allocated, so the publisher's cursor never passes an id still to be committed
    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ALERTS_LOCK})")
    participants = list(participants)
    scope = participants if shard_only else None
    tracks = load_tracks(connection, scope, everyone if shard_only else None)
    observations = take_observations(
        connection, ispbs=scope, everyone=everyone if shard_only else None
    )
    report.timings["load_seconds"] = time.perf_counter() - started
    mark = time.perf_counter()
    after, transitions = advance(tracks, observations, participants, now, rules)
    report.timings["compute_seconds"] = time.perf_counter() - mark
    mark = time.perf_counter()
    save(connection, tracks, after, transitions, source, runbook_base_url)
    report.timings["write_seconds"] = time.perf_counter() - mark
    report.evaluations_applied = len(observations)
    report.transitions = transitions
    for track in after.values():
        episode = track.episode
        if episode is None:
            continue
        if episode.status == Status.NODATA:
            report.nodata_open += 1
        else:
            name = episode.severity.name
            report.open_by_severity[name] = report.open_by_severity.get(name, 0) + 1
    return report
