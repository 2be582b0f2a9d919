"""The alert machine's vocabulary: rules, observations, episodes, tracks, transitions.

See ``domain.alerts`` for the machine itself; everything here is plain immutable data.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from dict_ratelimit.domain.thresholds import Level

#: The policy name of a participant-level alert (monitor NODATA) and of the category track.
PARTICIPANT = "*"


class AlertRulesError(ValueError):
    """Invalid alert rules; the message names the field."""


class Kind(str, Enum):
    """What happened to an episode (the CloudEvents type suffix)."""

    OPENED = "alert.opened"
    ESCALATED = "alert.escalated"
    DEESCALATED = "alert.deescalated"
    RESOLVED = "alert.resolved"
    NODATA = "alert.nodata"
    DATA_RESTORED = "alert.data_restored"
    CATEGORY_CHANGED = "participant.category_changed"


class Status(str, Enum):
    OPEN = "open"
    NODATA = "nodata"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class AlertRules:
    """When episodes open, resolve and go stale."""

    fire_after: int = 1
    clear_after: int = 2
    stale_after: dt.timedelta = dt.timedelta(minutes=15)
    #: how long a calmer state must hold (as well as ``clear_after`` readings) to resolve or
    #: de-escalate: two sweeps five minutes apart qualify, two watch reads 15 s apart do not
    settle_after: dt.timedelta = dt.timedelta(minutes=4)

    def validate(self) -> AlertRules:
        if self.fire_after < 1:
            raise AlertRulesError(f"fire_after must be >= 1, got {self.fire_after}")
        if self.clear_after < 1:
            raise AlertRulesError(f"clear_after must be >= 1, got {self.clear_after}")
        if self.stale_after <= dt.timedelta(0):
            raise AlertRulesError(f"stale_after must be positive, got {self.stale_after}")
        if self.settle_after < dt.timedelta(0):
            raise AlertRulesError(f"settle_after must be >= 0, got {self.settle_after}")
        return self


@dataclass(frozen=True)
class Observation:
    """One threshold evaluation with the reading and forecast behind it."""

    ispb: str
    policy: str
    category: str
    at: dt.datetime  # DICT ResponseTime of the reading
    level: Level
    available_tokens: int
    capacity: int
    time_to_429_s: float | None
    reasons: tuple[Mapping[str, str], ...]
    clear_ratio: float
    demand_per_min: float | None = None
    refill_per_min: float | None = None
    received_at: dt.datetime | None = None  # our clock when the reading reached us

    @property
    def received(self) -> dt.datetime:
        """When the reading reached us (our clock); DICT's time when that is unknown."""
        return self.received_at or self.at

    @property
    def remaining_ratio(self) -> float:
        return self.available_tokens / self.capacity

    @property
    def has_forecast_reason(self) -> bool:
        return any(reason.get("code") == "time_to_429" for reason in self.reasons)

    @property
    def is_clear(self) -> bool:
        """Safe enough to count towards resolving: past the clear threshold, no forecast."""
        return (
            self.level == Level.OK
            and self.remaining_ratio > self.clear_ratio
            and not self.has_forecast_reason
        )


@dataclass(frozen=True)
class Episode:
    """One alert, from opening to resolution. ``key`` is deterministic (identity + opening
    time), so re-applying the same evaluations yields the same events with the same ids."""

    key: str
    ispb: str
    policy: str
    category: str | None
    opened_at: dt.datetime
    status: Status
    severity: Level
    peak_severity: Level
    last_observed_at: dt.datetime
    lowest_remaining_ratio: float | None
    lowest_available_tokens: int | None
    severity_history: tuple[tuple[str, str], ...]  # (ISO time, severity or NODATA/RESOLVED)
    reasons: tuple[Mapping[str, str], ...]
    message: str
    sequence: int  # transitions emitted so far (the last event's sequence)
    clear_streak: int = 0
    resolved_at: dt.datetime | None = None
    calm_streak: int = 0  # consecutive readings below the current severity
    calm_level: Level | None = None  # the worst of those readings
    clear_since: dt.datetime | None = None  # DICT time of the first of the clear readings
    calm_since: dt.datetime | None = None  # ... of the first of the readings below severity
    last_received_at: dt.datetime | None = None  # our clock: when the newest reading came

    @property
    def freshness(self) -> dt.datetime:
        """Our clock's time of the newest reading (DICT's time for episodes stored before)."""
        return self.last_received_at or self.last_observed_at

    @property
    def is_open(self) -> bool:
        return self.status != Status.RESOLVED


@dataclass(frozen=True)
class Track:
    """What the machine remembers about one identity between evaluations."""

    ispb: str
    policy: str
    last_observed_at: dt.datetime | None = None  # DICT time of the newest evaluation applied
    category: str | None = None
    fire_streak: int = 0
    episode: Episode | None = None  # the open episode, if any
    last_received_at: dt.datetime | None = None  # our clock: when that reading reached us

    @property
    def freshness(self) -> dt.datetime | None:
        """Our clock's time of the newest reading (DICT's time for tracks stored before)."""
        return self.last_received_at or self.last_observed_at


@dataclass(frozen=True)
class Transition:
    """One change worth telling the notification service about."""

    kind: Kind
    at: dt.datetime
    ispb: str
    policy: str
    episode: Episode | None  # the episode after the change; None for a category change
    severity: Level | None
    previous_severity: Level | None
    observation: Observation | None
    message: str
    previous_category: str | None = None
    category: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def event_id(self) -> str:
        """Deterministic per transition: ``<alert key>:<sequence>``."""
        if self.episode is not None:
            return f"{self.episode.key}:{self.episode.sequence}"
        return f"{self.ispb}/category/{stamp(self.at)}"


def stamp(at: dt.datetime) -> str:
    return at.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def iso(at: dt.datetime) -> str:
    return at.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def episode_key(ispb: str, policy: str, opened_at: dt.datetime) -> str:
    return f"{ispb}/{policy}/{stamp(opened_at)}"
