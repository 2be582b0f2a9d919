"""Alert episodes: a pure state machine over threshold evaluations.

Identity is (participant, policy). An episode opens when ``fire_after`` consecutive evaluations
are at WARNING or above; while it is open its severity follows the level (escalated /
de-escalated, never a second alert). It resolves only when ``clear_after`` consecutive readings
are *clear*: level OK **and** remaining ratio above the separate clear threshold (default 30 %)
**and** no forecast reason. The system we replace resolved at the threshold it fired at, so a
signal wandering around 20 % opened and closed an alert every few minutes.

Readings between the warning and the clear threshold keep the episode open at WARNING: the
bucket is no longer low, but not yet safe either.

Severity has hysteresis too: it escalates at once, but de-escalates only after ``clear_after``
consecutive readings below it (to the worst of them). A stepped bucket read at different
refill phases swings between CRITICAL and WARNING every tick; without this, each swing would
page someone.

No fresh reading for longer than ``stale_after`` puts an open episode in NODATA (an event, not a
resolution); the next reading brings it back. A participant whose readings stop altogether
gets one participant-level NODATA episode (policy ``*``): the monitor's dead man's switch.
A participant's category change is an event of its own.

Everything here is a pure function of the state it is given; storage lives elsewhere.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
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

    def validate(self) -> AlertRules:
        if self.fire_after < 1:
            raise AlertRulesError(f"fire_after must be >= 1, got {self.fire_after}")
        if self.clear_after < 1:
            raise AlertRulesError(f"clear_after must be >= 1, got {self.clear_after}")
        if self.stale_after <= dt.timedelta(0):
            raise AlertRulesError(f"stale_after must be positive, got {self.stale_after}")
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

    @property
    def is_open(self) -> bool:
        return self.status != Status.RESOLVED


@dataclass(frozen=True)
class Track:
    """What the machine remembers about one identity between evaluations."""

    ispb: str
    policy: str
    last_observed_at: dt.datetime | None = None
    category: str | None = None
    fire_streak: int = 0
    episode: Episode | None = None  # the open episode, if any


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
        return f"{self.ispb}/category/{_stamp(self.at)}"


def _stamp(at: dt.datetime) -> str:
    return at.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _clock(at: dt.datetime) -> str:
    return at.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def episode_key(ispb: str, policy: str, opened_at: dt.datetime) -> str:
    return f"{ispb}/{policy}/{_stamp(opened_at)}"


def describe(obs: Observation) -> str:
    """The reading in words: where the bucket is and the forecast."""
    text = f"{obs.remaining_ratio:.1%} left ({obs.available_tokens:,} of {obs.capacity:,} tokens)"
    if obs.time_to_429_s is not None and math.isfinite(obs.time_to_429_s):
        text += f"; first 429 expected in {_duration(obs.time_to_429_s)}"
    return text


def _message(kind: Kind, episode: Episode, obs: Observation | None, now: dt.datetime) -> str:
    """The sentence the notification service shows as is."""
    where = f"{episode.policy} of participant {episode.ispb}"
    since = _duration((now - episode.opened_at).total_seconds())
    if kind == Kind.OPENED:
        assert obs is not None
        return f"{episode.severity.name}: {where} at {describe(obs)}."
    if kind in (Kind.ESCALATED, Kind.DEESCALATED):
        assert obs is not None
        verb = "worse" if kind == Kind.ESCALATED else "better"
        return (
            f"{episode.severity.name} ({verb}): {where} at {describe(obs)}; alert open for {since}."
        )
    if kind == Kind.DATA_RESTORED:
        assert obs is not None
        return f"{episode.severity.name}: readings of {where} are back: {describe(obs)}."
    if kind == Kind.NODATA:
        return (
            f"NODATA: no reading of {where} since {_clock(episode.last_observed_at)}; "
            f"last known {episode.severity.name}. The alert stays open."
        )
    assert kind == Kind.RESOLVED
    assert obs is not None
    lowest = (
        f", lowest {episode.lowest_remaining_ratio:.1%}"
        if episode.lowest_remaining_ratio is not None
        else ""
    )
    return (
        f"RESOLVED: {where} back to {obs.remaining_ratio:.1%} after {since} "
        f"(peak {episode.peak_severity.name}{lowest})."
    )


def _open(track: Track, obs: Observation) -> Transition:
    key = episode_key(obs.ispb, obs.policy, obs.at)
    episode = Episode(
        key=key,
        ispb=obs.ispb,
        policy=obs.policy,
        category=obs.category,
        opened_at=obs.at,
        status=Status.OPEN,
        severity=obs.level,
        peak_severity=obs.level,
        last_observed_at=obs.at,
        lowest_remaining_ratio=obs.remaining_ratio,
        lowest_available_tokens=obs.available_tokens,
        severity_history=((_iso(obs.at), obs.level.name),),
        reasons=obs.reasons,
        message="",
        sequence=1,
    )
    episode = replace(episode, message=_message(Kind.OPENED, episode, obs, obs.at))
    return Transition(Kind.OPENED, obs.at, obs.ispb, obs.policy, episode, obs.level, None, obs,
                      episode.message)  # fmt: skip


def _lowest(episode: Episode, obs: Observation) -> dict[str, Any]:
    lowest_ratio = episode.lowest_remaining_ratio
    lowest_tokens = episode.lowest_available_tokens
    return {
        "lowest_remaining_ratio": obs.remaining_ratio
        if lowest_ratio is None
        else min(lowest_ratio, obs.remaining_ratio),
        "lowest_available_tokens": obs.available_tokens
        if lowest_tokens is None
        else min(lowest_tokens, obs.available_tokens),
    }


def _emit(
    kind: Kind,
    episode: Episode,
    obs: Observation | None,
    at: dt.datetime,
    previous: Level | None,
    history_label: str,
) -> tuple[Episode, Transition]:
    episode = replace(
        episode,
        sequence=episode.sequence + 1,
        severity_history=(*episode.severity_history, (_iso(at), history_label)),
    )
    episode = replace(episode, message=_message(kind, episode, obs, at))
    transition = Transition(
        kind, at, episode.ispb, episode.policy, episode, episode.severity, previous, obs,
        episode.message,
    )  # fmt: skip
    return episode, transition


def apply(track: Track, obs: Observation, rules: AlertRules) -> tuple[Track, list[Transition]]:
    """Feed one evaluation (newer than the track's last) to the machine.

    An evaluation at or before ``track.last_observed_at`` changes nothing: re-running a tick
    emits nothing.
    """
    if track.last_observed_at is not None and obs.at <= track.last_observed_at:
        return track, []
    alarming = obs.level >= Level.WARNING
    fire_streak = track.fire_streak + 1 if alarming else 0
    track = replace(track, last_observed_at=obs.at, category=obs.category, fire_streak=fire_streak)
    episode = track.episode
    if episode is None:
        if alarming and fire_streak >= rules.fire_after:
            opened = _open(track, obs)
            return replace(track, episode=opened.episode), [opened]
        return track, []

    transitions: list[Transition] = []
    episode = replace(
        episode,
        last_observed_at=obs.at,
        category=obs.category,
        **_lowest(episode, obs),
    )
    was_nodata = episode.status == Status.NODATA
    previous = episode.severity
    level = max(obs.level, Level.WARNING)  # never below WARNING while the episode is open
    severity, calm_streak, calm_level = previous, 0, None
    if level > previous:
        severity = level
    elif level < previous:
        calm_streak = episode.calm_streak + 1
        calm_level = level if episode.calm_level is None else max(episode.calm_level, level)
        if calm_streak >= rules.clear_after:
            severity, calm_streak, calm_level = calm_level, 0, None
    clear_streak = episode.clear_streak + 1 if obs.is_clear else 0
    episode = replace(
        episode,
        status=Status.OPEN,
        clear_streak=clear_streak,
        calm_streak=calm_streak,
        calm_level=calm_level,
        severity=severity,
        peak_severity=max(episode.peak_severity, severity),
        reasons=obs.reasons if alarming else episode.reasons,
    )
    if clear_streak >= rules.clear_after:
        resolved = replace(episode, status=Status.RESOLVED, resolved_at=obs.at)
        resolved, transition = _emit(Kind.RESOLVED, resolved, obs, obs.at, previous, "RESOLVED")
        transitions.append(transition)
        return replace(track, episode=None, fire_streak=0), transitions
    if severity != previous:
        kind = Kind.ESCALATED if severity > previous else Kind.DEESCALATED
        episode, transition = _emit(kind, episode, obs, obs.at, previous, severity.name)
        transitions.append(transition)
    elif was_nodata:
        episode, transition = _emit(
            Kind.DATA_RESTORED, episode, obs, obs.at, previous, severity.name
        )
        transitions.append(transition)
    return replace(track, episode=episode), transitions


def check_stale(
    track: Track, now: dt.datetime, rules: AlertRules
) -> tuple[Track, list[Transition]]:
    """An open episode whose newest reading is older than ``stale_after`` goes NODATA (once)."""
    episode = track.episode
    if episode is None or episode.status != Status.OPEN:
        return track, []
    if now - episode.last_observed_at <= rules.stale_after:
        return track, []
    stale = replace(episode, status=Status.NODATA, clear_streak=0, calm_streak=0, calm_level=None)
    stale, transition = _emit(Kind.NODATA, stale, None, now, episode.severity, "NODATA")
    return replace(track, episode=stale), [transition]


def check_participant(
    track: Track,
    newest_reading_at: dt.datetime | None,
    category: str | None,
    now: dt.datetime,
    rules: AlertRules,
) -> tuple[Track, list[Transition]]:
    """The participant-level track (policy ``*``): category changes and the dead man's switch.

    ``newest_reading_at`` is the participant's newest snapshot (None: never read). Its NODATA
    episode opens when that is older than ``stale_after`` and resolves with the next reading.
    """
    transitions: list[Transition] = []
    if category is not None and track.category is not None and category != track.category:
        transitions.append(
            Transition(
                Kind.CATEGORY_CHANGED,
                newest_reading_at or now,
                track.ispb,
                PARTICIPANT,
                None,
                None,
                None,
                None,
                f"Participant {track.ispb} changed DICT category from {track.category} to "
                f"{category}: its bucket sizes change with it.",
                previous_category=track.category,
                category=category,
            )
        )
    if category is not None:
        track = replace(track, category=category)
    reference = newest_reading_at or track.last_observed_at
    if reference is None:  # never read: start the clock now, no alert yet
        return replace(track, last_observed_at=now), transitions
    stale = now - reference > rules.stale_after
    episode = track.episode
    if stale and episode is None:
        opened = Episode(
            key=episode_key(track.ispb, PARTICIPANT, now),
            ispb=track.ispb,
            policy=PARTICIPANT,
            category=track.category,
            opened_at=now,
            status=Status.NODATA,
            severity=Level.CRITICAL,
            peak_severity=Level.CRITICAL,
            last_observed_at=reference,
            lowest_remaining_ratio=None,
            lowest_available_tokens=None,
            severity_history=((_iso(now), "NODATA"),),
            reasons=(
                {
                    "code": "no_snapshot",
                    "level": "CRITICAL",
                    "detail": "no reading for more than "
                    f"{_duration(rules.stale_after.total_seconds())}",
                },
            ),
            message=(
                f"NODATA: no DICT reading of participant {track.ispb} "
                + (f"since {_clock(newest_reading_at)}" if newest_reading_at else "yet")
                + f" (more than {_duration(rules.stale_after.total_seconds())}): its buckets "
                "are not being watched."
            ),
            sequence=1,
        )
        transitions.append(
            Transition(
                Kind.NODATA,
                now,
                track.ispb,
                PARTICIPANT,
                opened,
                Level.CRITICAL,
                None,
                None,
                opened.message,
            )
        )
        track = replace(track, episode=opened, last_observed_at=reference)
    elif not stale and episode is not None and newest_reading_at is not None:
        resolved = replace(
            episode,
            status=Status.RESOLVED,
            resolved_at=newest_reading_at,
            last_observed_at=newest_reading_at,
            sequence=episode.sequence + 1,
            severity_history=(*episode.severity_history, (_iso(newest_reading_at), "RESOLVED")),
            message=f"RESOLVED: readings of participant {track.ispb} are back "
            f"({_clock(newest_reading_at)}) after "
            f"{_duration((newest_reading_at - episode.opened_at).total_seconds())} without.",
        )
        transitions.append(
            Transition(
                Kind.RESOLVED,
                newest_reading_at,
                track.ispb,
                PARTICIPANT,
                resolved,
                None,
                Level.CRITICAL,
                None,
                resolved.message,
            )
        )
        track = replace(track, episode=None, last_observed_at=newest_reading_at)
    elif newest_reading_at is not None:
        track = replace(track, last_observed_at=newest_reading_at)
    return track, transitions


def apply_all(
    track: Track, observations: Sequence[Observation], rules: AlertRules
) -> tuple[Track, list[Transition]]:
    """Feed evaluations in time order (they are sorted here)."""
    transitions: list[Transition] = []
    for obs in sorted(observations, key=lambda o: o.at):
        track, emitted = apply(track, obs, rules)
        transitions.extend(emitted)
    return track, transitions


def advance(
    tracks: dict[tuple[str, str], Track],
    observations: Sequence[Observation],
    participants: Iterable[str],
    now: dt.datetime,
    rules: AlertRules,
) -> tuple[dict[tuple[str, str], Track], list[Transition]]:
    """One tick for every identity: feed each its new evaluations, check staleness, then the
    participant-level tracks. Returns the new tracks and the transitions in the order to
    publish them (time order; per identity the order they happened)."""
    by_identity: dict[tuple[str, str], list[Observation]] = {}
    for obs in observations:
        by_identity.setdefault((obs.ispb, obs.policy), []).append(obs)
    updated = dict(tracks)
    transitions: list[Transition] = []
    for identity, batch in by_identity.items():
        track = updated.get(identity) or Track(*identity)
        updated[identity], emitted = apply_all(track, batch, rules)
        transitions.extend(emitted)
    newest: dict[str, tuple[dt.datetime, str | None]] = {}
    for (ispb, policy), track in updated.items():
        if policy == PARTICIPANT:
            continue
        track, emitted = check_stale(track, now, rules)
        updated[(ispb, policy)] = track
        transitions.extend(emitted)
        if track.last_observed_at is not None and (
            ispb not in newest or track.last_observed_at > newest[ispb][0]
        ):
            newest[ispb] = (track.last_observed_at, track.category)
    # the monitored participants; without a list, every participant the tracks know
    watched = set(participants) or {ispb for ispb, policy in updated if policy != PARTICIPANT}
    for ispb in sorted(watched):
        identity = (ispb, PARTICIPANT)
        track = updated.get(identity) or Track(ispb, PARTICIPANT)
        newest_at, category = newest.get(ispb, (None, None))
        updated[identity], emitted = check_participant(track, newest_at, category, now, rules)
        transitions.extend(emitted)
    transitions.sort(key=lambda t: t.at)  # stable: keeps per-identity order at equal times
    return updated, transitions
