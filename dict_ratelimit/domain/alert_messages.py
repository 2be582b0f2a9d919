"""The sentences of alert events: the notification service shows them as they are."""

from __future__ import annotations

import datetime as dt
import math

from dict_ratelimit.domain.alert_model import Episode, Kind, Observation


def clock(at: dt.datetime) -> str:
    return at.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe(obs: Observation) -> str:
    """The reading in words: where the bucket is and the forecast."""
    text = f"{obs.remaining_ratio:.1%} left ({obs.available_tokens:,} of {obs.capacity:,} tokens)"
    if obs.time_to_429_s is not None and math.isfinite(obs.time_to_429_s):
        text += f"; first 429 expected in {duration(obs.time_to_429_s)}"
    return text


def compose_message(kind: Kind, episode: Episode, obs: Observation | None, now: dt.datetime) -> str:
    """The sentence the notification service shows as is."""
    where = f"{episode.policy} of participant {episode.ispb}"
    since = duration((now - episode.opened_at).total_seconds())
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
            f"NODATA: no reading of {where} since {clock(episode.last_observed_at)}; "
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
