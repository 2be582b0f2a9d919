"""Per-snapshot metrics on arrays (numpy): bounds, demand estimates, forecasts, headroom.

The same quantities as :mod:`dict_ratelimit.domain.bucket_math`, computed for every snapshot
of a batch at once (a 30-day backfill is ~260k snapshots; a Python loop per row with a
bisection each would take minutes). A test holds both implementations equal on random inputs.

Input: one row per snapshot with its previous snapshot of the same (participant, policy).
Output: a dict of arrays (one entry per column of ``dict_ratelimit.policy_metric``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from dict_ratelimit.domain.bucket_math import KEEPS_UP

#: Phases tried for the stepped model: the first refill step falls θ = f·P after a reading.
STEPPED_PHASE_FRACTIONS = (0.125, 0.375, 0.625, 0.875)
#: Windows longer than this (monitor down, gap in readings) get no demand estimate.
MAX_ESTIMATE_WINDOW_SECONDS = 3600.0
#: Readings closer than this (a manual tick seconds after the scheduled one) get no demand
#: estimate: one token over 9 s already reads as 6.7/min, and a stepped refill may or may not
#: have fallen inside so short a window.
MIN_ESTIMATE_WINDOW_SECONDS = 10.0
BISECTION_STEPS = 44
EPSILON = 1e-9


@dataclass
class SnapshotPairs:
    """Arrays of equal length: each snapshot and the previous one of its policy (NaN if none)."""

    available: np.ndarray
    capacity: np.ndarray
    refill_tokens: np.ndarray
    refill_period: np.ndarray
    prev_available: np.ndarray  # NaN: no previous reading
    elapsed: np.ndarray  # seconds since the previous reading (NaN: none)
    shape_changed: np.ndarray  # bool: capacity or refill differ from the previous reading
    max_overdraft: np.ndarray  # most a single request can overdraw (its cost - 1)
    own_calls: np.ndarray | None = None  # tokens the monitor itself spent in between


def _drain(level: np.ndarray, demand: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    drained = np.maximum(0.0, level - demand * np.maximum(seconds, 0.0))
    return np.where(level <= 0, level, drained)


def level_after_stepped(
    a0: np.ndarray,
    demand: np.ndarray,
    elapsed: np.ndarray,
    capacity: np.ndarray,
    refill: np.ndarray,
    period: np.ndarray,
    theta: np.ndarray,
) -> np.ndarray:
    """Vectorised :func:`bucket_math.level_after_stepped`."""
    level = a0.astype(float).copy()
    t = np.zeros_like(level)
    steps = np.floor((elapsed - theta) / period + EPSILON) + 1
    steps = np.where(elapsed + EPSILON >= theta, steps, 0)
    for k in range(int(np.nanmax(steps, initial=0))):
        at = theta + k * period
        active = k < steps
        stepped = np.minimum(capacity, _drain(level, demand, at - t) + refill)
        level = np.where(active, stepped, level)
        t = np.where(active, at, t)
    return _drain(level, demand, elapsed - t)


def level_after_continuous(
    a0: np.ndarray,
    demand: np.ndarray,
    elapsed: np.ndarray,
    capacity: np.ndarray,
    rate: np.ndarray,
) -> np.ndarray:
    """Vectorised :func:`bucket_math.level_after_continuous`."""
    rise = np.where(a0 < 0, -a0 / rate, 0.0)
    overdrawn_throughout = rise >= elapsed
    remaining = np.maximum(elapsed - rise, 0.0)
    start = np.maximum(a0, 0.0)
    falling = np.where(start > 0, np.maximum(0.0, start - (demand - rate) * remaining), 0.0)
    rising = np.minimum(capacity, start + (rate - demand) * remaining)
    level = np.where(demand >= rate, falling, rising)
    return np.where(overdrawn_throughout, a0 + rate * elapsed, level)


def _invert(level_after, a0, a1, elapsed, capacity, rate):  # type: ignore[no-untyped-def]
    """Vectorised bisection; returns (estimate, censored code: 0 exact, 1 empty, 2 full).

    NaN where no demand is consistent with the readings (e.g. a phase that would have put a
    refill step right before a low reading).
    """
    full = a1 >= capacity
    empty = a1 <= 0
    target = np.where(full, capacity - EPSILON, np.where(empty, EPSILON, a1))
    low = np.zeros_like(a0, dtype=float)
    high = rate + (np.maximum(a0, 0.0) + capacity) / elapsed + capacity
    at_zero = level_after(low)
    at_high = level_after(high)
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        above = level_after(middle) > target
        low = np.where(above, middle, low)
        high = np.where(above, high, middle)
    estimate = np.where(full, low, (low + high) / 2)
    estimate = np.where(~full & (at_zero <= target), 0.0, estimate)
    estimate = np.where(full & (at_zero < target), 0.0, estimate)
    estimate = np.where(~full & (at_high > target), np.nan, estimate)
    censored = np.where(full, 2, np.where(empty, 1, 0))
    return estimate, censored


def estimate_continuous(a0, a1, elapsed, capacity, rate):  # type: ignore[no-untyped-def]
    """Closed form of the continuous-model inversion (equal to bisecting
    :func:`level_after_continuous`, which the tests check): after an overdraft has been
    refilled, the balance moves at ``r - c`` between the floor and the cap."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rise = np.where(a0 < 0, -a0 / rate, 0.0)
        still_negative = rise >= elapsed
        start = np.maximum(a0, 0.0)
        remaining = elapsed - rise
        full = a1 >= capacity
        empty = a1 <= 0
        exact = rate + (start - a1) / remaining
        estimate = np.where(
            full,
            np.maximum(0.0, rate - (capacity - start) / remaining),
            np.where(empty, rate + start / remaining, np.maximum(0.0, exact)),
        )
        level_without_demand = a0 + rate * elapsed
        estimate = np.where(
            still_negative,
            np.where(full | (level_without_demand <= np.where(empty, EPSILON, a1)), 0.0, np.nan),
            estimate,
        )
    censored = np.where(full, 2, np.where(empty, 1, 0))
    return estimate, censored


def time_to_first_429_stepped(a, demand, capacity, refill, period, theta):  # type: ignore[no-untyped-def]
    """Vectorised reference formula; ``inf`` = never, 0 = already at or below zero."""
    with np.errstate(divide="ignore", invalid="ignore"):
        c = demand
        level = np.minimum(capacity, a - c * theta + refill)
        loss = c * period - refill
        m = np.floor((level - c * period) / loss) + 1
        result = theta + m * period + (level - m * loss) / c
        result = np.where(loss <= KEEPS_UP * refill, np.inf, result)
        result = np.where(level <= c * period, theta + level / c, result)
        result = np.where(a <= c * theta, a / c, result)
        result = np.where(c <= 0, np.inf, result)
        return np.where(a <= 0, 0.0, result)


def time_to_first_429_continuous(a, demand, rate):  # type: ignore[no-untyped-def]
    with np.errstate(divide="ignore", invalid="ignore"):
        result = np.where(demand > rate * (1 + KEEPS_UP), a / (demand - rate), np.inf)
    return np.where(a <= 0, 0.0, result)


def recovery_time_stepped(a, demand, target, refill, period, theta):  # type: ignore[no-untyped-def]
    """Seconds until the balance before each step stays >= target; ``inf`` = never."""
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = refill - demand * period
        pre1 = a - demand * theta
        k = 1 + np.ceil((target - pre1) / gain)
        result = np.maximum(0.0, theta + (k - 2) * period)
        result = np.where(gain <= 0, np.inf, result)
        return np.where((pre1 >= target) & (gain >= 0), 0.0, result)


def time_to_full_stepped(a, demand, capacity, refill, period, theta):  # type: ignore[no-untyped-def]
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = refill - demand * period
        pre1 = a - demand * theta
        j = 1 + np.ceil((capacity - refill - pre1) / gain)
        result = theta + (j - 1) * period
        result = np.where(gain <= 0, np.inf, result)
        result = np.where(pre1 + refill >= capacity, theta, result)
        return np.where((a >= capacity) & (demand <= 0), 0.0, result)


def compute_metrics(pairs: SnapshotPairs, clear_ratio: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric column for every snapshot of the batch.

    ``clear_ratio``: per-row remaining ratio an alert needs to clear (recovery target).
    """
    a1 = pairs.available.astype(float)
    capacity = pairs.capacity.astype(float)
    refill = pairs.refill_tokens.astype(float)
    period = pairs.refill_period.astype(float)
    rate = refill / period
    a0 = pairs.prev_available.astype(float)
    elapsed = pairs.elapsed.astype(float)
    n = len(a1)

    own = np.zeros(n) if pairs.own_calls is None else pairs.own_calls.astype(float)

    has_previous = ~np.isnan(a0) & ~np.isnan(elapsed) & (elapsed > 0)
    in_range = (elapsed >= MIN_ESTIMATE_WINDOW_SECONDS) & (elapsed <= MAX_ESTIMATE_WINDOW_SECONDS)
    estimable = has_previous & ~pairs.shape_changed & in_range
    note = np.full(n, None, dtype=object)
    note[~has_previous] = "no previous reading"
    note[has_previous & pairs.shape_changed] = "capacity or refill changed since previous reading"
    note[has_previous & ~pairs.shape_changed & (elapsed > MAX_ESTIMATE_WINDOW_SECONDS)] = (
        "previous reading too old for an estimate"
    )
    note[has_previous & ~pairs.shape_changed & (elapsed < MIN_ESTIMATE_WINDOW_SECONDS)] = (
        "previous reading too close for an estimate"
    )

    out: dict[str, np.ndarray] = {
        "remaining_ratio": a1 / capacity,
        "utilization_ratio": 1 - a1 / capacity,
        "refill_per_min": rate * 60,
    }
    nan = np.full(n, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["naive_drop_per_min"] = np.where(has_previous, (a0 - a1) / elapsed * 60, nan)
        fewest = np.floor(elapsed / period + EPSILON)
        ratio = elapsed / period
        most = np.where(np.abs(ratio - np.round(ratio)) < EPSILON, fewest, fewest + 1)
        lower = np.maximum(0.0, a0 - a1)
        step_floor = np.minimum(capacity, refill - pairs.max_overdraft) - a1
        lower_stepped = np.where(fewest >= 1, np.maximum(lower, step_floor), lower)
        out["consumed_lower_stepped"] = np.where(has_previous, lower_stepped, nan)
        out["consumed_upper_stepped"] = np.where(
            has_previous, np.maximum(lower_stepped, a0 - a1 + most * refill), nan
        )
        out["consumed_lower_continuous"] = np.where(has_previous, lower, nan)
        out["consumed_upper_continuous"] = np.where(
            has_previous, np.maximum(lower, a0 - a1 + rate * elapsed), nan
        )
        drain = np.where(a1 >= capacity, 0.0, np.maximum(0.0, rate + (a0 - a1) / elapsed))
        out["drain_rate_lower_continuous_per_min"] = np.where(has_previous, drain * 60, nan)

    # demand estimates (tokens/s) on the estimable rows only
    idx = np.flatnonzero(estimable)
    e_a0, e_a1, e_dt = a0[idx], a1[idx], elapsed[idx]
    e_cap, e_refill, e_period, e_rate = capacity[idx], refill[idx], period[idx], rate[idx]
    continuous, censored = _invert(
        lambda c: level_after_continuous(e_a0, c, e_dt, e_cap, e_rate),
        e_a0,
        e_a1,
        e_dt,
        e_cap,
        e_rate,
    )
    stepped = []
    for fraction in STEPPED_PHASE_FRACTIONS:
        theta = fraction * e_period
        estimate, _ = _invert(
            lambda c, theta=theta: level_after_stepped(
                e_a0, c, e_dt, e_cap, e_refill, e_period, theta
            ),
            e_a0,
            e_a1,
            e_dt,
            e_cap,
            e_rate,
        )
        stepped.append(estimate)
    stepped_stack = np.vstack(stepped) if stepped else np.empty((0, len(idx)))
    with _quiet_nanwarnings():
        stepped_min = np.nanmin(stepped_stack, axis=0) if len(idx) else np.empty(0)
        stepped_max = np.nanmax(stepped_stack, axis=0) if len(idx) else np.empty(0)
    every = np.vstack([continuous, stepped_stack]) if len(idx) else np.empty((0, 0))
    with _quiet_nanwarnings():
        lowest = np.nanmin(every, axis=0) if len(idx) else np.empty(0)
        highest = np.nanmax(every, axis=0) if len(idx) else np.empty(0)
        middle = np.nanmedian(every, axis=0) if len(idx) else np.empty(0)

    # The monitor's own calls are demand it knows exactly: what the others consume is the rest.
    own_rate = own[idx] / e_dt
    continuous = np.maximum(continuous - own_rate, 0.0)
    stepped_min = np.maximum(stepped_min - own_rate, 0.0)
    stepped_max = np.maximum(stepped_max - own_rate, 0.0)
    lowest = np.maximum(lowest - own_rate, 0.0)
    highest = np.maximum(highest - own_rate, 0.0)
    middle = np.maximum(middle - own_rate, 0.0)

    def scatter(values: np.ndarray) -> np.ndarray:
        column = np.full(n, np.nan)
        column[idx] = values
        return column

    censored_full = scatter(censored == 2) == 1
    censored_empty = scatter(censored == 1) == 1
    out["demand_continuous_per_min"] = scatter(continuous * 60)
    out["demand_stepped_min_per_min"] = scatter(stepped_min * 60)
    out["demand_stepped_max_per_min"] = scatter(stepped_max * 60)
    out["demand_lower_per_min"] = np.where(censored_full, 0.0, scatter(lowest * 60))
    out["demand_upper_per_min"] = np.where(censored_empty, np.nan, scatter(highest * 60))
    # headline: the median over both models and the four phases. The continuous model alone
    # is pinned to the refill rate whenever two readings of a bucket that refills faster than
    # the polling interval agree (A0 = A1 < C means c = r there), which a stepped refill
    # explains with far less demand. A full bucket only bounds demand from above: no point.
    out["demand_per_min"] = np.where(censored_full, np.nan, scatter(middle * 60))
    censored_text = np.full(n, None, dtype=object)
    censored_text[censored_empty] = "empty"
    censored_text[censored_full] = "full"
    out["censored"] = censored_text
    out["estimate_note"] = note

    # forecasts with the headline estimate (for a full bucket: the median of the upper bounds,
    # the prudent side); stepped forecasts at the worst phase (next step a period away)
    demand = scatter(middle)
    known = ~np.isnan(demand)
    d = np.where(known, demand, 0.0)
    ttl_stepped = time_to_first_429_stepped(a1, d, capacity, refill, period, period)
    ttl_continuous = time_to_first_429_continuous(a1, d, rate)
    ttl = np.minimum(ttl_stepped, ttl_continuous)
    exhaustion_state = np.full(n, "unknown", dtype=object)
    exhaustion_state[known & np.isinf(ttl)] = "never"
    exhaustion_state[known & np.isfinite(ttl)] = "finite"
    exhaustion_state[a1 <= 0] = "exhausted"
    out["forecast_demand_per_min"] = np.where(known, demand * 60, np.nan)
    out["exhaustion_state"] = exhaustion_state
    out["time_to_429_stepped_s"] = _finite(np.where(known | (a1 <= 0), ttl_stepped, np.nan))
    out["time_to_429_continuous_s"] = _finite(np.where(known | (a1 <= 0), ttl_continuous, np.nan))
    out["time_to_429_s"] = _finite(np.where(known | (a1 <= 0), ttl, np.nan))

    target = clear_ratio * capacity
    with np.errstate(divide="ignore", invalid="ignore"):
        continuous_recovery = np.where(
            a1 >= target, 0.0, np.where(d >= rate, np.inf, (target - a1) / (rate - d))
        )
    recovery_clear = np.maximum(
        recovery_time_stepped(a1, d, target, refill, period, period),
        continuous_recovery,
    )
    recovery_full = time_to_full_stepped(a1, d, capacity, refill, period, period)
    recovery_state = np.full(n, "unknown", dtype=object)
    recovery_state[known & np.isinf(recovery_clear)] = "never"
    recovery_state[known & np.isfinite(recovery_clear)] = "finite"
    recovery_state[known & (recovery_clear == 0)] = "recovered"
    out["recovery_state"] = recovery_state
    out["recovery_to_clear_s"] = _finite(np.where(known, recovery_clear, np.nan))
    out["recovery_to_full_s"] = _finite(np.where(known, recovery_full, np.nan))

    out["headroom_per_min"] = np.where(known, (rate - d) * 60, np.nan)
    out["burst_absorbable_tokens"] = np.maximum(a1, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["demand_seconds_left"] = np.where(known & (d > 0), np.maximum(a1, 0.0) / d, np.nan)
    return out


def _finite(values: np.ndarray) -> np.ndarray:
    """Infinity ("never") is stored as NULL; the *_state columns say which NULL is which."""
    return np.where(np.isfinite(values), values, np.nan)


@contextlib.contextmanager
def _quiet_nanwarnings() -> Iterator[None]:
    """nanmin/nanmax of an all-NaN column (no consistent phase) warns; NaN is the answer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        yield
