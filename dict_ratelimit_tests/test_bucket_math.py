"""The bucket formulas against hand-computed cases (token-bucket.md)."""

from __future__ import annotations

import math

import pytest

from dict_ratelimit.domain import bucket_math as bm

CATEGORY_A = bm.Bucket(capacity=50_000, refill_tokens=25_000, refill_period=60)
WRITE = bm.Bucket(capacity=36_000, refill_tokens=1_200, refill_period=60)


def per_min(tokens_per_second: float) -> float:
    return tokens_per_second * 60


def test_worked_example_full_to_5000_in_five_minutes() -> None:
    """Naive says 9,000/min (below the refill: could not have drained it); 34,000/min did."""
    assert per_min(bm.naive_drop_rate(50_000, 5_000, 300)) == pytest.approx(9_000)
    lower = bm.drain_rate_lower_continuous(50_000, 5_000, 300, CATEGORY_A)
    assert per_min(lower) == pytest.approx(34_000)
    estimate = bm.estimate_continuous(50_000, 5_000, 300, CATEGORY_A)
    assert per_min(estimate.value) == pytest.approx(34_000, rel=1e-6)
    assert estimate.censored is None


def test_steps_in_window() -> None:
    assert bm.steps_in_window(300, 60) == (5, 5)  # aligned: exactly five
    assert bm.steps_in_window(290, 60) == (4, 5)
    assert bm.steps_in_window(30, 60) == (0, 1)


def test_consumption_bounds_by_hand() -> None:
    # stepped: 5 steps of 1,200 in 300 s; 30,000 -> 28,000
    assert bm.consumed_bounds_stepped(30_000, 28_000, 300, WRITE) == (2_000, 8_000)
    # at least one step: right after it the bucket held min(C, R) = 25,000; now 5,000
    assert bm.consumed_bounds_stepped(50_000, 5_000, 300, CATEGORY_A) == (45_000, 170_000)
    assert bm.consumed_bounds_stepped(10_000, 5_000, 300, CATEGORY_A)[0] == 20_000
    # a 404 can overdraw by cost - 1: the step floor accounts for it
    assert bm.consumed_bounds_stepped(10_000, 5_000, 300, CATEGORY_A, max_overdraft=2)[0] == (
        19_998
    )
    # continuous: 6,000 refilled in 300 s
    assert bm.consumed_bounds_continuous(30_000, 28_000, 300, WRITE) == (2_000, 8_000)
    # rising bucket: at least nothing, at most the refill minus the rise
    assert bm.consumed_bounds_continuous(20_000, 25_000, 300, WRITE) == (0.0, 1_000)


def test_level_after_constant_demand_by_hand() -> None:
    # stepped, first step at 10 s: 1,000 - 10·10 = 900, +1,200 = 2,100, -50·10 = 1,600
    assert bm.level_after_stepped(1_000, 10, 60, WRITE, theta=10) == pytest.approx(1_600)
    # floor at 0 between steps, then the step adds R
    assert bm.level_after_stepped(100, 50, 30, WRITE, theta=20) == pytest.approx(700)
    # continuous: overdrawn -100 first climbs at 20/s for 5 s (all rejected), then falls
    assert bm.level_after_continuous(-100, 30, 20, WRITE) == 0.0
    assert bm.level_after_continuous(-100, 10, 20, WRITE) == pytest.approx(150)
    assert bm.level_after_continuous(35_990, 0, 60, WRITE) == 36_000  # capped


def test_censored_estimates() -> None:
    empty = bm.estimate_continuous(10_000, 0, 300, WRITE)
    assert empty.censored == "empty"
    assert per_min(empty.value) == pytest.approx(1_200 + 2_000, rel=1e-6)  # r + A0/Δ
    full = bm.estimate_continuous(30_000, 36_000, 300, WRITE)
    assert full.censored == "full"
    assert per_min(full.value) == pytest.approx(0, abs=1e-6)  # r - (C - A0)/Δ = 0
    # stepped, known phase: constant 500/min from 36,000 leaves 36,000 - 2,500 + ... capped
    exact = bm.estimate_stepped(20_000, 20_000 - 5 * 900 + 5 * 1_200, 300, WRITE, theta=60)
    assert per_min(exact.value) == pytest.approx(900, rel=1e-6)


def test_time_to_first_429_of_a_20_percent_bucket_can_be_24_seconds() -> None:
    """Category A at 20 % (10,000) under 25,000/min: empty before the next refill step."""
    demand = 25_000 / 60
    assert bm.time_to_first_429_stepped(10_000, demand, CATEGORY_A, theta=60) == (pytest.approx(24))
    # continuous model: demand equals refill, so it never empties
    assert bm.time_to_first_429_continuous(10_000, demand, CATEGORY_A) == math.inf


def test_time_to_first_429_stepped_cases() -> None:
    assert bm.time_to_first_429_stepped(0, 10, WRITE, 60) == 0
    assert bm.time_to_first_429_stepped(500, 0, WRITE, 60) == math.inf
    # 1,000/min < refill 1,200/min: never
    assert bm.time_to_first_429_stepped(30_000, 1_000 / 60, WRITE, 60) == math.inf
    # 2,400/min on 36,000: loses 1,200 per period; after the first step L = min(C, A - cθ + R)
    c = 40.0  # tokens/s
    t = bm.time_to_first_429_stepped(3_000, c, WRITE, theta=30)
    # by hand: 3,000 - 1,200 = 1,800 at 30 s, +1,200 = 3,000; 600 left at 90 s, +1,200 =
    # 1,800, which 40/s spends in 45 s, before the step at 150 s
    assert t == pytest.approx(30 + 60 + 45)
    assert bm.time_to_first_429_continuous(6_000, c, WRITE) == pytest.approx(300)


def test_recovery_and_time_to_full() -> None:
    # no demand, stepped worst phase: ceil((C - A)/R)·P
    assert bm.time_to_full_stepped(30_000, 0, WRITE, theta=60) == 5 * 60
    assert bm.time_to_full_stepped(35_000, 0, WRITE, theta=60) == 60
    # recovery to 10,800 (30 %) from 5,000 with 600/min demand: +600 per period
    t = bm.recovery_time_stepped(5_000, 10.0, 10_800, WRITE, theta=60)
    # pre1 = 5,000 - 600 = 4,400; k = 1 + ceil((10,800 - 4,400)/600) = 12; T = 60 + 10·60
    assert t == 660
    assert bm.recovery_time_stepped(20_000, 10.0, 10_800, WRITE, theta=60) == 0
    assert bm.recovery_time_stepped(5_000, 25.0, 10_800, WRITE, theta=60) == math.inf
    assert bm.recovery_time_continuous(5_000, 10.0, 10_800, WRITE) == pytest.approx(580)
    assert bm.recovery_time_continuous(5_000, 20.0, 10_800, WRITE) == math.inf


def test_a_fast_bucket_read_at_the_same_refill_phase_is_not_an_alarm() -> None:
    """ENTRIES_UPDATE (600, refilled each minute) read at 543 twice: the continuous model
    alone says demand = refill (first 429 in 54 s, CRITICAL); a stepped refill explains it
    with 57 tokens drained since the last step. The headline is the median over models and
    phases, so the forecast is "never" and the level stays OK."""
    import numpy as np

    from dict_ratelimit.domain.metrics_batch import SnapshotPairs, compute_metrics
    from dict_ratelimit.domain.thresholds import Level, Thresholds, evaluate

    out = compute_metrics(
        SnapshotPairs(
            available=np.array([543.0]),
            capacity=np.array([600.0]),
            refill_tokens=np.array([600.0]),
            refill_period=np.array([60.0]),
            prev_available=np.array([543.0]),
            elapsed=np.array([300.0]),
            shape_changed=np.array([False]),
            max_overdraft=np.array([0.0]),
        ),
        clear_ratio=np.array([0.3]),
    )
    assert out["demand_continuous_per_min"][0] == pytest.approx(600)
    assert out["demand_stepped_min_per_min"][0] < 100
    assert out["demand_per_min"][0] < 600
    assert out["exhaustion_state"][0] == "never" and np.isnan(out["time_to_429_s"][0])
    assert evaluate(543, 600, None, Thresholds())[0] is Level.OK


def test_a_reading_more_than_a_day_old_is_no_previous_reading() -> None:
    """The SQL bounds its previous-reading lookups to a day; the frame applies the same rule,
    so a tick and a backfill agree even when a day-old reading is still in the window."""
    import pandas as pd

    from dict_ratelimit.analysis import metrics_frame
    from dict_ratelimit.domain.thresholds import ThresholdConfig

    now = pd.Timestamp("2026-11-29 12:00", tz="UTC")
    pairs = pd.DataFrame(
        {
            "ispb": ["12345678", "12345678"],
            "policy": ["ENTRIES_WRITE", "KEYS_CHECK"],
            "response_time": [now, now],
            "available_tokens": [30_000, 60],
            "capacity": [36_000, 70],
            "refill_tokens": [1_200, 70],
            "refill_period_sec": [60, 60],
            "prev_response_time": [now - pd.Timedelta(hours=25), now - pd.Timedelta(minutes=5)],
            "prev_available": [36_000, 70],
            "prev_capacity": [36_000, 70],
            "prev_refill_tokens": [1_200, 70],
            "prev_refill_period_sec": [60, 60],
            "not_found": [None, None],
            "total": [None, None],
        }
    )
    frame = metrics_frame(pairs, ThresholdConfig())
    assert frame["estimate_note"][0] == "no previous reading"
    assert pd.isna(frame["estimate_note"][1])  # stored as NULL
    assert pd.isna(frame["elapsed_seconds"][0]) and frame["elapsed_seconds"][1] == 300


def test_the_monitors_own_calls_are_taken_off_every_demand_estimate() -> None:
    """POLICIES_LIST (20, 1 per 10 s) read at 15 and at 10 one minute later, with 3 listings
    of the monitor's own in between: 3 tokens/min of the estimates are ours, not demand."""
    import numpy as np

    from dict_ratelimit.domain.metrics_batch import SnapshotPairs, compute_metrics

    def run(own: float) -> dict:
        return compute_metrics(
            SnapshotPairs(
                available=np.array([10.0]),
                capacity=np.array([20.0]),
                refill_tokens=np.array([1.0]),
                refill_period=np.array([10.0]),
                prev_available=np.array([15.0]),
                elapsed=np.array([60.0]),
                shape_changed=np.array([False]),
                max_overdraft=np.array([0.0]),
                own_calls=np.array([own]),
            ),
            clear_ratio=np.array([0.3]),
        )

    theirs, ours = run(0.0), run(3.0)
    for column in ("demand_per_min", "demand_lower_per_min", "demand_upper_per_min",
                   "demand_continuous_per_min"):  # fmt: skip
        assert ours[column][0] == pytest.approx(max(0.0, theirs[column][0] - 3.0)), column
    assert ours["demand_per_min"][0] < theirs["demand_per_min"][0]


def test_readings_seconds_apart_give_no_estimate_rather_than_a_wild_one() -> None:
    import numpy as np

    from dict_ratelimit.domain.metrics_batch import SnapshotPairs, compute_metrics

    out = compute_metrics(
        SnapshotPairs(
            available=np.array([18.0, 18.0]),
            capacity=np.array([20.0, 20.0]),
            refill_tokens=np.array([1.0, 1.0]),
            refill_period=np.array([10.0, 10.0]),
            prev_available=np.array([19.0, 19.0]),
            elapsed=np.array([9.0, 15.0]),
            shape_changed=np.array([False, False]),
            max_overdraft=np.array([0.0, 0.0]),
        ),
        clear_ratio=np.array([0.3, 0.3]),
    )
    assert np.isnan(out["demand_per_min"][0])
    assert out["estimate_note"][0] == "previous reading too close for an estimate"
    assert out["exhaustion_state"][0] == "unknown"
    assert not np.isnan(out["demand_per_min"][1])  # 15 s apart: an estimate
