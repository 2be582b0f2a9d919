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
consecutive readings below it (to the worst of them). Both resolving and de-escalating also
need the calmer state to have held for ``settle_after`` (4 minutes): with readings every 15 s
(the watch lane), two readings are no evidence of a calm bucket. A stepped bucket read at different
refill phases swings between CRITICAL and WARNING every tick; without this, each swing would
page someone.

No fresh reading for longer than ``stale_after`` puts an open episode in NODATA (an event, not a
resolution); the next reading brings it back. Freshness is measured on *our* clock (when a
reading reached us), never by comparing DICT's ResponseTime with our "now": a DICT clock running
20 minutes behind ours would otherwise make every reading stale on arrival, and a CRITICAL
evaluation would turn into NODATA instead of an alert. A participant whose readings stop altogether
gets one participant-level NODATA episode (policy ``*``): the monitor's dead man's switch.
A participant's category change is an event of its own.

Everything here is a pure function of the state it is given; storage lives elsewhere.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from dict_ratelimit.domain.alert_messages import clock, compose_message, duration
from dict_ratelimit.domain.alert_model import (
    PARTICIPANT,
    AlertRules,
    AlertRulesError,
    Episode,
    Kind,
    Observation,
    Status,
    Track,
    Transition,
    episode_key,
    iso,
)
from dict_ratelimit.domain.thresholds import Level

__all__ = [
    "PARTICIPANT", "AlertRules", "AlertRulesError", "Episode", "Kind", "Observation", "Status",
    "Track", "Transition", "advance", "apply", "apply_all", "check_participant", "check_stale",
    "episode_key",
]  # fmt: skip


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
        severity_history=((iso(obs.at), obs.level.name),),
        reasons=obs.reasons,
        message="",
        sequence=1,
        last_received_at=obs.received,
    )
    episode = replace(episode, message=compose_message(Kind.OPENED, episode, obs, obs.at))
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


def _settled(since: dt.datetime | None, at: dt.datetime, rules: AlertRules) -> bool:
    """Whether a calmer state has held long enough: readings every 15 s (the watch lane) must
    not resolve or de-escalate an episode faster than two five-minute sweeps would."""
    return since is not None and at - since >= rules.settle_after


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
        severity_history=(*episode.severity_history, (iso(at), history_label)),
    )
    episode = replace(episode, message=compose_message(kind, episode, obs, at))
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
    track = replace(
        track,
        last_observed_at=obs.at,
        last_received_at=obs.received,
        category=obs.category,
        fire_streak=fire_streak,
    )
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
        last_received_at=obs.received,
        category=obs.category,
        **_lowest(episode, obs),
    )
    was_nodata = episode.status == Status.NODATA
    previous = episode.severity
    level = max(obs.level, Level.WARNING)  # never below WARNING while the episode is open
    severity, calm_streak, calm_level, calm_since = previous, 0, None, None
    if level > previous:
        severity = level
    elif level < previous:
        calm_streak = episode.calm_streak + 1
        calm_level = level if episode.calm_level is None else max(episode.calm_level, level)
        calm_since = episode.calm_since if calm_streak > 1 else obs.at
        if calm_streak >= rules.clear_after and _settled(calm_since, obs.at, rules):
            severity, calm_streak, calm_level, calm_since = calm_level, 0, None, None
    clear_streak = episode.clear_streak + 1 if obs.is_clear else 0
    clear_since = (episode.clear_since if clear_streak > 1 else obs.at) if clear_streak else None
    episode = replace(
        episode,
        status=Status.OPEN,
        clear_streak=clear_streak,
        clear_since=clear_since,
        calm_streak=calm_streak,
        calm_level=calm_level,
        calm_since=calm_since,
        severity=severity,
        peak_severity=max(episode.peak_severity, severity),
        reasons=obs.reasons if alarming else episode.reasons,
    )
    if clear_streak >= rules.clear_after and _settled(clear_since, obs.at, rules):
        # The episode resolves at the severity it had until now (the clear readings that
        # resolve it may also have de-escalated it, which would tell the pager "WARNING" about
        # an episode that was only ever CRITICAL), with this reading's (empty) reasons rather
        # than the forecast of an older reading.
        resolved = replace(
            episode,
            status=Status.RESOLVED,
            resolved_at=obs.at,
            severity=previous,
            reasons=obs.reasons,
        )
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
    if now - episode.freshness <= rules.stale_after:
        return track, []
    stale = replace(
        episode,
        status=Status.NODATA,
        clear_streak=0,
        clear_since=None,
        calm_streak=0,
        calm_level=None,
        calm_since=None,
    )
    stale, transition = _emit(Kind.NODATA, stale, None, now, episode.severity, "NODATA")
    return replace(track, episode=stale), [transition]


def check_participant(
    track: Track,
    newest: tuple[dt.datetime, dt.datetime] | None,
    category: str | None,
    now: dt.datetime,
    rules: AlertRules,
) -> tuple[Track, list[Transition]]:
    """The participant-level track (policy ``*``): category changes and the dead man's switch.

    ``newest`` is the participant's newest evaluated reading as (DICT time, our receipt time);
    None: never read. Its NODATA episode opens when the receipt is older than ``stale_after``
    on our clock, and resolves with the next reading.
    """
    newest_at, newest_received = newest if newest is not None else (None, None)
    transitions: list[Transition] = []
    if category is not None and track.category is not None and category != track.category:
        transitions.append(
            Transition(
                Kind.CATEGORY_CHANGED,
                newest_at or now,
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
    fresh = newest_received or track.freshness
    if fresh is None:  # never read: start the clock now, no alert yet
        return replace(track, last_received_at=now), transitions
    last_seen = newest_at or track.last_observed_at
    stale = now - fresh > rules.stale_after
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
            last_observed_at=last_seen or fresh,
            last_received_at=fresh,
            lowest_remaining_ratio=None,
            lowest_available_tokens=None,
            severity_history=((iso(now), "NODATA"),),
            reasons=(
                {
                    "code": "no_snapshot",
                    "level": "CRITICAL",
                    "detail": "no reading for more than "
                    f"{duration(rules.stale_after.total_seconds())}",
                },
            ),
            message=(
                f"NODATA: no DICT reading of participant {track.ispb} "
                + (f"since {clock(last_seen)}" if last_seen else "yet")
                + f" (more than {duration(rules.stale_after.total_seconds())}): its buckets "
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
        track = replace(track, episode=opened)
    elif not stale and episode is not None and newest_at is not None:
        resolved = replace(
            episode,
            status=Status.RESOLVED,
            resolved_at=newest_at,
            last_observed_at=newest_at,
            last_received_at=newest_received,
            sequence=episode.sequence + 1,
            severity_history=(*episode.severity_history, (iso(newest_at), "RESOLVED")),
            message=f"RESOLVED: readings of participant {track.ispb} are back "
            f"({clock(newest_at)}) after "
            f"{duration(max(0.0, (newest_at - episode.opened_at).total_seconds()))} without.",
        )
        transitions.append(
            Transition(
                Kind.RESOLVED,
                newest_at,
                track.ispb,
                PARTICIPANT,
                resolved,
                Level.CRITICAL,
                Level.CRITICAL,
                None,
                resolved.message,
            )
        )
        track = replace(track, episode=None)
    if newest is not None:
        track = replace(track, last_observed_at=newest_at, last_received_at=newest_received)
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
    # per participant: its newest evaluated reading (DICT time, receipt time) and category
    newest: dict[str, tuple[tuple[dt.datetime, dt.datetime], str | None]] = {}
    for (ispb, policy), track in updated.items():
        if policy == PARTICIPANT:
            continue
        track, emitted = check_stale(track, now, rules)
        updated[(ispb, policy)] = track
        transitions.extend(emitted)
        fresh = track.freshness
        if track.last_observed_at is None or fresh is None:
            continue
        if ispb not in newest or fresh > newest[ispb][0][1]:
            newest[ispb] = ((track.last_observed_at, fresh), track.category)
    # the monitored participants; without a list, every participant the tracks know
    watched = set(participants) or {ispb for ispb, policy in updated if policy != PARTICIPANT}
    for ispb in sorted(watched):
        identity = (ispb, PARTICIPANT)
        track = updated.get(identity) or Track(ispb, PARTICIPANT)
        reading, category = newest.get(ispb, (None, None))
        updated[identity], emitted = check_participant(track, reading, category, now, rules)
        transitions.extend(emitted)
    transitions.sort(key=lambda t: t.at)  # stable: keeps per-identity order at equal times
    return updated, transitions
