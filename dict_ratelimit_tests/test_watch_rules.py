"""The watch lane's pure decisions: which buckets are hot, how often they are read, and the
budget it never exceeds."""

from __future__ import annotations

import datetime as dt
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from dict_ratelimit.domain.watch import (
    BucketView,
    BudgetView,
    WatchItem,
    WatchRules,
    counted_demand_per_min,
    hot_buckets,
    plan_reads,
)
from dict_ratelimit.storage.watch import budgets

NOW = dt.datetime(2028, 2, 29, 23, 59, 50, tzinfo=dt.timezone.utc)  # a leap day's last minute
RULES = WatchRules()
ANTISCAN = "ENTRIES_READ_PARTICIPANT_ANTISCAN"


def bucket(
    policy: str = ANTISCAN,
    *,
    ispb: str = "12345678",
    available: int = 50_000,
    capacity: int = 50_000,
    refill: int = 25_000,
    level_rank: int = 0,
    ttl: float | None = None,
    upper: float | None = None,
    age_s: float = 15.0,
) -> BucketView:
    return BucketView(
        ispb=ispb,
        policy=policy,
        capacity=capacity,
        refill_tokens=refill,
        refill_period_sec=60,
        available=available,
        level_rank=level_rank,
        time_to_429_s=ttl,
        demand_upper_per_min=upper,
        received_at=NOW - dt.timedelta(seconds=age_s),
    )


def test_a_404_surge_costs_three_tokens_each_on_the_anti_scan_bucket() -> None:
    # 1,000 found and 4,000 not found in 30 s: (1,000 + 3 × 4,000) × 2 per minute
    assert counted_demand_per_min(ANTISCAN, {200: 1_000, 404: 4_000}, 30) == 26_000
    assert counted_demand_per_min(ANTISCAN, {429: 10_000}, 30) == 0  # rejected: no token
    assert counted_demand_per_min(ANTISCAN, {200: 10}, 0) == 0


def test_a_calm_bucket_is_not_hot() -> None:
    counts = {"12345678": {ANTISCAN: {200: 1_000}}}
    assert hot_buckets([bucket()], counts, {"12345678": 60.0}, RULES, NOW) == []


def test_a_scan_in_the_counts_makes_the_bucket_hot_before_any_reading_shows_it() -> None:
    counts = {"12345678": {ANTISCAN: {200: 1_500, 404: 6_000}}}  # 19,500 tokens in 15 s
    [item] = hot_buckets([bucket()], counts, {"12345678": 15.0}, RULES, NOW)
    assert item.interval_s == RULES.urgent_interval_s
    assert item.reason == "demand 312% of the refill"


def test_dicts_429s_make_a_bucket_due_at_once_whatever_its_last_reading() -> None:
    counts = {"12345678": {"KEYS_CHECK": {200: 30, 429: 12}}}
    fresh = bucket("KEYS_CHECK", capacity=70, refill=70, available=70, age_s=1)
    [item] = hot_buckets([fresh], counts, {"12345678": 15.0}, RULES, NOW)
    assert (item.interval_s, item.reason) == (0.0, "DICT answered 12 429s")


def test_the_most_urgent_reason_sets_the_interval_and_a_recent_reading_is_not_due() -> None:
    warning = bucket(level_rank=1, ttl=600, age_s=20)
    assert hot_buckets([warning], {}, {}, RULES, NOW) == []  # read 20 s ago, due every 30 s
    [item] = hot_buckets([bucket(level_rank=1, ttl=600, age_s=30)], {}, {}, RULES, NOW)
    assert (item.interval_s, item.reason) == (30.0, "WARNING")
    [item] = hot_buckets([bucket(level_rank=1, ttl=90, age_s=15)], {}, {}, RULES, NOW)
    assert (item.interval_s, item.reason) == (15.0, "first 429 in 90 s")
    [item] = hot_buckets([bucket(level_rank=2, age_s=15)], {}, {}, RULES, NOW)
    assert item.reason == "CRITICAL or worse"


def test_a_fast_bucket_that_could_empty_before_the_next_sweep_is_read_every_minute() -> None:
    # ENTRIES_UPDATE: 600 tokens, 600/min; demand up to 900/min drains 600 in 120 s < 300 s
    fast = bucket("ENTRIES_UPDATE", capacity=600, refill=600, available=600, upper=900, age_s=60)
    [item] = hot_buckets([fast], {}, {}, RULES, NOW)
    assert (item.interval_s, item.reason) == (60.0, "could be empty in 120 s")
    slow = bucket("ENTRIES_UPDATE", capacity=600, refill=600, available=600, upper=650, age_s=60)
    assert hot_buckets([slow], {}, {}, RULES, NOW) == []  # 600 / 50 per min = 12 min


def test_the_lane_never_reads_its_own_budget_buckets() -> None:
    counts = {"12345678": {"POLICIES_READ": {200: 80, 429: 3}}}
    own = bucket("POLICIES_READ", capacity=200, refill=60, available=0, level_rank=3)
    assert hot_buckets([own], counts, {"12345678": 60.0}, RULES, NOW) == []


def _items(n: int, ispb: str = "12345678") -> list[WatchItem]:
    return [WatchItem(ispb, f"P{i}", 15.0, "CRITICAL or worse") for i in range(n)]


def test_several_hot_buckets_of_a_participant_are_read_with_one_listing() -> None:
    [plan] = plan_reads(_items(3), {}, RULES)
    assert plan.listing and plan.reads == [] and plan.calls == (1, 0)
    [plan] = plan_reads(_items(2), {}, RULES)
    assert not plan.listing and plan.reads == ["P0", "P1"] and plan.calls == (0, 2)


def test_with_no_listing_left_the_reads_go_one_by_one_within_the_budget() -> None:
    budget = BudgetView("12345678", list_calls_last_minute=1, get_calls_last_minute=28)
    [plan] = plan_reads(_items(5), {"12345678": budget}, RULES)
    assert plan.reads == ["P0", "P1"]  # 30 a minute, 28 spent
    assert set(plan.skipped) == {"P2", "P3", "P4"}
    assert "28 reads in the last minute" in plan.skipped["P2"]


def test_the_lane_halves_its_pace_below_half_and_stops_below_a_quarter() -> None:
    def allowed(available: float) -> tuple[int, str]:
        budget = BudgetView("12345678", read_available=available, list_calls_last_minute=2)
        [plan] = plan_reads(_items(40), {"12345678": budget}, RULES)
        return len(plan.reads), next(iter(plan.skipped.values()))

    assert allowed(150)[0] == 30
    count, why = allowed(90)
    assert count == 15 and why == "POLICIES_READ at 45%: the lane slows down below 50%"
    count, why = allowed(49)
    assert count == 0 and why == "POLICIES_READ at 24%: the lane stops below 25%"


@settings(max_examples=300, deadline=None)
@given(
    hot=st.integers(min_value=0, max_value=60),
    refill=st.sampled_from([6.0, 60.0, 120.0]),
    capacity=st.sampled_from([20, 200, 400]),
    available=st.one_of(st.none(), st.floats(min_value=0, max_value=400)),
    gets=st.integers(min_value=0, max_value=200),
    lists=st.integers(min_value=0, max_value=10),
    ratio=st.floats(min_value=0, max_value=1),
)
def test_a_round_never_spends_more_than_the_budget_allows(
    hot: int,
    refill: float,
    capacity: int,
    available: float | None,
    gets: int,
    lists: int,
    ratio: float,
) -> None:
    rules = WatchRules(read_budget_ratio=ratio)
    budget = BudgetView(
        "12345678",
        read_refill_per_min=refill,
        read_capacity=capacity,
        read_available=available,
        get_calls_last_minute=gets,
        list_calls_last_minute=lists,
    )
    plans = plan_reads(_items(hot), {"12345678": budget}, rules)
    listings = sum(p.calls[0] for p in plans)
    reads = sum(p.calls[1] for p in plans)
    assert listings + lists <= max(lists, math.floor(rules.list_budget_ratio * 6.0))
    assert gets + reads <= max(gets, math.floor(ratio * refill))
    if available is not None and available < rules.stop_below * capacity:
        assert reads == 0
    for plan in plans:  # everything due is either called for or held back with a reason
        assert plan.listing or len(plan.reads) + len(plan.skipped) == len(plan.items)


def test_the_read_budget_counts_the_other_clients_and_the_monitors_own_calls() -> None:
    read = bucket("POLICIES_READ", capacity=200, refill=60, available=100, upper=90, age_s=60)
    listing = bucket("POLICIES_LIST", capacity=20, refill=6, available=20, age_s=60)
    calls = [("12345678", "get", NOW - dt.timedelta(seconds=s)) for s in (10, 20, 90)]
    calls.append(("12345678", "list", NOW - dt.timedelta(seconds=30)))
    [view] = budgets([read, listing], calls, NOW).values()
    # 100 + (60 − 90) per minute × 1 min − 2 of our reads since the reading
    assert view.read_available == 68
    assert (view.get_calls_last_minute, view.list_calls_last_minute) == (2, 1)
    drained = bucket("POLICIES_READ", capacity=200, refill=60, available=5, upper=600, age_s=60)
    [view] = budgets([drained], [], NOW).values()
    assert view.read_available == 0  # never below empty
