"""Alert observations and outbox rows from the real alert machine, without a simulator."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.engine import Engine

from dict_ratelimit.domain.alerts import AlertRules, Observation, Track, apply_all
from dict_ratelimit.domain.thresholds import Thresholds, evaluate
from dict_ratelimit.storage.alerts import save
from dict_ratelimit_tests.timebase import base_time

#: The time of the first reading of these fixtures: the suite's base instant.
T0 = base_time()


def observation(
    ispb: str,
    policy: str,
    minute: int,
    ratio: float,
    ttl: float | None = None,
    category: str = "A",
    received_late_by: float = 0.0,
) -> Observation:
    """A reading ``minute`` minutes after T0 of a 36,000-token bucket at ``ratio``, evaluated
    with the default thresholds as the pipeline does (``ttl``: seconds to the first 429).
    ``received_late_by``: seconds our clock is ahead of DICT's when the reading arrives."""
    capacity = 36_000
    available = round(ratio * capacity)
    level, reasons = evaluate(available, capacity, ttl, Thresholds())
    return Observation(
        ispb=ispb,
        policy=policy,
        category=category,
        at=T0 + dt.timedelta(minutes=minute),
        level=level,
        available_tokens=available,
        capacity=capacity,
        time_to_429_s=ttl,
        reasons=tuple(r.as_dict() for r in reasons),
        clear_ratio=Thresholds().clear_ratio,
        received_at=T0 + dt.timedelta(minutes=minute, seconds=received_late_by),
    )


#: Per identity: opened, escalated, escalated, de-escalated (after two calm readings), resolved.
EPISODE = [0.15, 0.05, 0.0, 0.15, 0.15, 0.5, 0.5]


def write_episodes(engine: Engine, identities: list[tuple[str, str]]) -> int:
    """One full episode per identity, interleaved in time; returns the outbox rows written."""
    tracks, transitions = {}, []
    for ispb, policy in identities:
        series = [observation(ispb, policy, 5 * i, r) for i, r in enumerate(EPISODE)]
        tracks[(ispb, policy)], emitted = apply_all(Track(ispb, policy), series, AlertRules())
        transitions.extend(emitted)
    transitions.sort(key=lambda t: t.at)
    with engine.begin() as connection:
        save(connection, {}, tracks, transitions, "urn:test")
    return len(transitions)
