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

_TAKE_BACKLOG = """
DELETE FROM dict_ratelimit.alert_backlog AS b USING (
    SELECT ispb, policy, response_time FROM dict_ratelimit.alert_backlog
    ORDER BY response_time LIMIT %(limit)s FOR UPDATE SKIP LOCKED) AS pick
WHERE b.ispb = pick.ispb AND b.policy = pick.policy AND b.response_time = pick.response_time
RETURNING b.ispb, b.policy, b.response_time
"""

# The evaluations of the taken keys with the reading and forecast behind them. The constant
# bounds (the keys' oldest and newest time) let the planner prune the monthly partitions.
_OBSERVATIONS = """
WITH keys AS (
    SELECT * FROM unnest(%(ispbs)s::char(8)[], %(policies)s::text[], %(times)s::timestamptz[])
        AS k(ispb, policy, response_time)
)
SELECT e.ispb, e.policy, e.response_time, e.level, e.reasons,
       coalesce((e.thresholds ->> 'clear_ratio')::double precision, 0.30) AS clear_ratio,
       m.available_tokens, m.capacity, m.time_to_429_s, m.demand_per_min, m.refill_per_min,
       s.category, s.polled_at
FROM keys AS k
JOIN dict_ratelimit.threshold_evaluation AS e
  ON e.ispb = k.ispb AND e.policy = k.policy AND e.response_time = k.response_time
 AND e.response_time BETWEEN %(first)s AND %(last)s
JOIN dict_ratelimit.policy_metric AS m
  ON m.ispb = k.ispb AND m.policy = k.policy AND m.response_time = k.response_time
 AND m.response_time BETWEEN %(first)s AND %(last)s
JOIN dict_ratelimit.policy_snapshot AS s
  ON s.ispb = k.ispb AND s.policy = k.policy AND s.response_time = k.response_time
 AND s.response_time BETWEEN %(first)s AND %(last)s
ORDER BY e.ispb, e.policy, e.response_time
"""


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


def load_tracks(connection: Connection) -> dict[tuple[str, str], Track]:
    rows = connection.execute(sa.text(_TRACKS)).fetchall()
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


def take_observations(connection: Connection, limit: int = BATCH_LIMIT) -> list[Observation]:
    """Remove the waiting evaluations from ``alert_backlog`` (the caller's transaction: a
    failure puts them back) and return them as observations, oldest first per identity."""
    keys = connection.exec_driver_sql(_TAKE_BACKLOG, {"limit": limit}).fetchall()
    if not keys:
        return []
    times = [key[2] for key in keys]
    cursor = connection.exec_driver_sql(
        _OBSERVATIONS,
        {
            "ispbs": [key[0] for key in keys],
            "policies": [key[1] for key in keys],
            "times": times,
            "first": min(times),
            "last": max(times),
        },
    )
    return [
        Observation(
            ispb=row[0],
            policy=row[1],
            at=row[2],
            level=Level[row[3]],
            reasons=tuple(row[4]),
            clear_ratio=row[5],
            available_tokens=row[6],
            capacity=row[7],
            time_to_429_s=row[8],
            demand_per_min=row[9],
            refill_per_min=row[10],
            category=row[11],
            received_at=row[12],
        )
        for row in cursor.fetchall()
    ]


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
) -> None:
    """Write changed tracks, changed episodes and the outbox rows (caller's transaction)."""
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
                    "payload": json.dumps(to_cloudevent(t, source), ensure_ascii=False),
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
) -> AlertReport:
    """Apply every evaluation waiting in the backlog, check staleness against ``now`` (the
    injected clock), write everything (one transaction: the caller's). Safe to repeat: a second
    call finds nothing new."""
    report = AlertReport()
    started = time.perf_counter()
    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ALERTS_LOCK})")
    tracks = load_tracks(connection)
    observations = take_observations(connection)
    report.timings["load_seconds"] = time.perf_counter() - started
    mark = time.perf_counter()
    after, transitions = advance(tracks, observations, participants, now, rules)
    report.timings["compute_seconds"] = time.perf_counter() - mark
    mark = time.perf_counter()
    save(connection, tracks, after, transitions, source)
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
