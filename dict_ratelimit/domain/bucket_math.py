"""Refill-aware token-bucket math for a monitor that only sees snapshots (scalar reference).

Follows ``shared/reference/token-bucket.md``. Notation: capacity ``C``, refill ``R`` tokens every
``P`` seconds (``r = R/P`` tokens/s), readings ``(t0, A0)`` and ``(t1, A1)``, ``Δ = t1 - t0``.
Demand ``c`` is in tokens per second, net of credits. Two refill models, because the DICT
manual does not say which one BACEN uses:

- stepped: every ``P`` seconds, at an unknown phase, ``R`` tokens are added, capped at ``C``;
- continuous: tokens flow in at ``r``, capped at ``C``.

A bucket serves a request while its balance is above zero; requests arriving at zero or below
are rejected (and invisible in the readings). ``θ`` is the time from a reading to the next
refill step; with an unknown phase the worst case for exhaustion is ``θ = P``.

This module is the readable reference; :mod:`dict_ratelimit.domain.metrics_batch` computes the
same quantities on arrays, and a test holds the two equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

INFINITY = math.inf
BISECTION_STEPS = 44
#: Demand within this relative distance of the refill rate "keeps up": no float artefacts such
#: as a first 429 in 10^13 seconds when two readings agree.
KEEPS_UP = 1e-9


@dataclass(frozen=True)
class Bucket:
    """Capacity and refill of one bucket."""

    capacity: float
    refill_tokens: float
    refill_period: float

    @property
    def rate(self) -> float:
        """Refill in tokens per second."""
        return self.refill_tokens / self.refill_period


# -- consumption between two readings ---------------------------------------------------------


def steps_in_window(elapsed: float, period: float) -> tuple[int, int]:
    """(fewest, most) refill steps a window of ``elapsed`` seconds can contain."""
    ratio = elapsed / period
    fewest = math.floor(ratio + 1e-9)
    most = fewest if abs(ratio - round(ratio)) < 1e-9 else fewest + 1
    return fewest, most


def consumed_bounds_stepped(
    a0: float, a1: float, elapsed: float, bucket: Bucket, max_overdraft: float = 0.0
) -> tuple[float, float]:
    """Tokens consumed (net) in the window, stepped model: ``(lower, upper)``.

    ``N = A0 - A1 + F - W`` with ``F = n·R``, ``0 <= W <= F``. With at least one step in the
    window, right after the last step the balance was at least ``min(C, R - overdraft)`` and
    the demand since then brought it to ``A1``.
    """
    fewest, most = steps_in_window(elapsed, bucket.refill_period)
    lower = max(0.0, a0 - a1)
    if fewest >= 1:
        lower = max(lower, min(bucket.capacity, bucket.refill_tokens - max_overdraft) - a1)
    upper = a0 - a1 + most * bucket.refill_tokens
    return lower, max(lower, upper)


def consumed_bounds_continuous(
    a0: float, a1: float, elapsed: float, bucket: Bucket
) -> tuple[float, float]:
    """Tokens consumed (net) in the window, continuous model: ``(lower, upper)``."""
    lower = max(0.0, a0 - a1)
    upper = a0 - a1 + bucket.rate * elapsed
    return lower, max(lower, upper)


def drain_rate_lower_continuous(a0: float, a1: float, elapsed: float, bucket: Bucket) -> float:
    """Continuous model: while below capacity the demand averaged at least ``r + (A0-A1)/Δ``.

    Meaningful when the bucket ends below full (else 0). Category A, full → 5,000 in five
    minutes: 25,000/min + 9,000/min = 34,000/min, where the naive rate says 9,000/min.
    """
    if a1 >= bucket.capacity:
        return 0.0
    return max(0.0, bucket.rate + (a0 - a1) / elapsed)


def naive_drop_rate(a0: float, a1: float, elapsed: float) -> float:
    """What the replaced system reported: ``(A0 - A1) / Δ`` (ignores refill; for comparison)."""
    return (a0 - a1) / elapsed


# -- exact evolution under constant demand ---------------------------------------------------


def level_after_stepped(
    a0: float, demand: float, elapsed: float, bucket: Bucket, theta: float
) -> float:
    """Balance after ``elapsed`` s of constant ``demand``, stepped refill, first step at ``θ``.

    Between steps the balance falls at ``demand`` while above zero (requests at zero or below
    are rejected, so it never falls below ``min(0, A0)``); each step adds ``R``, capped at ``C``.
    """
    level, t = a0, 0.0
    next_step = theta
    while next_step <= elapsed + 1e-9:
        level = _drain(level, demand, next_step - t)
        level = min(bucket.capacity, level + bucket.refill_tokens)
        t = next_step
        next_step += bucket.refill_period
    return _drain(level, demand, elapsed - t)


def _drain(level: float, demand: float, seconds: float) -> float:
    if level <= 0 or seconds <= 0:
        return level
    return max(0.0, level - demand * seconds)


def level_after_continuous(a0: float, demand: float, elapsed: float, bucket: Bucket) -> float:
    """Balance after ``elapsed`` s of constant ``demand``, continuous refill."""
    r, level = bucket.rate, a0
    if level < 0:  # overdrawn: everything is rejected until refill lifts it above zero
        rise = -level / r
        if rise >= elapsed:
            return level + r * elapsed
        elapsed -= rise
        level = 0.0
    if demand >= r:
        return max(0.0, level - (demand - r) * elapsed) if level > 0 else 0.0
    return min(bucket.capacity, level + (r - demand) * elapsed)


@dataclass(frozen=True)
class DemandEstimate:
    """Constant demand (tokens/s) consistent with two readings.

    ``censored``: "empty" when the later reading is at or below zero (``value`` is then the
    smallest demand that empties the bucket: a lower bound, requests beyond were rejected);
    "full" when it is at capacity (``value`` is the largest demand that still ends full: an
    upper bound); None when the estimate is exact.
    """

    value: float  # NaN when no constant demand is consistent with the readings
    censored: str | None = None


def invert(level_after, a0: float, a1: float, elapsed: float, bucket: Bucket) -> DemandEstimate:  # type: ignore[no-untyped-def]
    """Solve ``level_after(c) = A1`` for ``c`` by bisection (``level_after`` never increases
    with ``c``); handles the censored ends."""
    high = bucket.rate + (max(a0, 0.0) + bucket.capacity) / elapsed + bucket.capacity
    full, empty = a1 >= bucket.capacity, a1 <= 0
    target = bucket.capacity - 1e-9 if full else (1e-9 if empty else a1)
    censored = "full" if full else ("empty" if empty else None)
    at_zero = level_after(0.0)
    if full and at_zero < target:
        return DemandEstimate(0.0, censored)  # even no demand would not have filled it
    if not full and at_zero <= target:
        return DemandEstimate(0.0, censored)  # no demand (or net credits) explains it
    if not full and level_after(high) > target:
        return DemandEstimate(math.nan, censored)  # no constant demand fits (e.g. phase)
    low = 0.0
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        if level_after(middle) > target:
            low = middle
        else:
            high = middle
    # full: the largest demand that still ends full; else the crossing point
    return DemandEstimate(low if full else (low + high) / 2, censored)


def estimate_stepped(
    a0: float, a1: float, elapsed: float, bucket: Bucket, theta: float
) -> DemandEstimate:
    """Constant demand under stepped refill with the first step ``θ`` after ``t0``."""
    return invert(
        lambda c: level_after_stepped(a0, c, elapsed, bucket, theta), a0, a1, elapsed, bucket
    )


def estimate_continuous(a0: float, a1: float, elapsed: float, bucket: Bucket) -> DemandEstimate:
    """Constant demand under continuous refill (closed form where exact)."""
    return invert(lambda c: level_after_continuous(a0, c, elapsed, bucket), a0, a1, elapsed, bucket)


# -- forecasts ------------------------------------------------------------------------------


def time_to_first_429_stepped(a: float, demand: float, bucket: Bucket, theta: float) -> float:
    """Seconds until the balance reaches zero under constant ``demand``; ``inf`` = never.

    Exact for stepped refill with the next step ``θ`` seconds away (the reference formula).
    """
    c, capacity, refill, period = (
        demand,
        bucket.capacity,
        bucket.refill_tokens,
        bucket.refill_period,
    )
    if a <= 0:
        return 0.0
    if c <= 0:
        return INFINITY
    # "<=": a balance that reaches exactly zero as the step arrives still answers a 429 to the
    # request of that instant (DICT rejects at zero or below)
    if a <= c * theta:
        return a / c
    level = min(capacity, a - c * theta + refill)  # right after the next step
    if level <= c * period:
        return theta + level / c
    loss = c * period - refill  # net loss per period
    if loss <= KEEPS_UP * refill:  # keeps up (a relative tolerance absorbs float noise)
        return INFINITY
    m = math.floor((level - c * period) / loss) + 1
    return theta + m * period + (level - m * loss) / c


def time_to_first_429_continuous(a: float, demand: float, bucket: Bucket) -> float:
    """Seconds until the balance reaches zero under constant ``demand``; ``inf`` = never."""
    if a <= 0:
        return 0.0
    if demand <= bucket.rate * (1 + KEEPS_UP):
        return INFINITY
    return a / (demand - bucket.rate)


def recovery_time_stepped(
    a: float, demand: float, target: float, bucket: Bucket, theta: float
) -> float:
    """Seconds until the balance just before every step stays at or above ``target``.

    ``0`` when it already does; ``inf`` when demand keeps up with refill (no recovery).
    """
    c, refill, period = demand, bucket.refill_tokens, bucket.refill_period
    gain = refill - c * period
    pre1 = a - c * theta
    if pre1 >= target and gain >= 0:
        return 0.0
    if gain <= 0:
        return INFINITY
    k = 1 + math.ceil((target - pre1) / gain)
    return max(0.0, theta + (k - 2) * period)


def time_to_full_stepped(a: float, demand: float, bucket: Bucket, theta: float) -> float:
    """Seconds until a step brings the balance to capacity; ``inf`` if it never does."""
    c, capacity, refill, period = (
        demand,
        bucket.capacity,
        bucket.refill_tokens,
        bucket.refill_period,
    )
    if a >= capacity and c <= 0:
        return 0.0
    gain = refill - c * period
    pre1 = a - c * theta
    if pre1 + refill >= capacity:
        return theta
    if gain <= 0:
        return INFINITY
    j = 1 + math.ceil((capacity - refill - pre1) / gain)
    return theta + (j - 1) * period


def recovery_time_continuous(a: float, demand: float, target: float, bucket: Bucket) -> float:
    """Seconds until the balance reaches ``target`` under continuous refill; ``inf`` = never."""
    if a >= target:
        return 0.0
    if demand >= bucket.rate:
        return INFINITY
    return (target - a) / (bucket.rate - demand)
