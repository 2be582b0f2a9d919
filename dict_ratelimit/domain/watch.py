"""The watch lane's decisions: which buckets to re-read between two sweeps, and how often,
within the monitor's own DICT budget. Pure: the callers bring the state and the clock.

A bucket is *hot* when one of these holds (the most urgent reason sets how often it is read):

- DICT answered 429 on it since its last stored counts (the Bridge's counts): read at once;
- the Bridge's counts say its demand is near or above its refill (a key scan shows as a
  surge of 404s, three tokens each, long before the bucket is read low): every 15 s;
- its latest level is CRITICAL or worse, or its first 429 is expected within two minutes:
  every 15 s;
- its latest level is WARNING, or its first 429 is expected within the warning horizon:
  every 30 s;
- it could be emptied before the next sweep at the demand its readings allow (a fast bucket:
  ENTRIES_UPDATE, KEYS_CHECK, the anti-scan ones): every 60 s.

Each read costs the participant a ``POLICIES_READ`` token (or, for several hot buckets at once,
one ``POLICIES_LIST`` token for a listing); the other clients of the same ISPB share those
buckets. The lane spends at most a share of their refill (by default half of POLICIES_READ's,
a quarter of POLICIES_LIST's, the sweeps' own listings included), halves its pace when
POLICIES_READ is below half full and stops below a quarter: it never drives them to zero.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dict_ratelimit.domain.catalog import POLICIES_BY_NAME

READ_POLICY = "POLICIES_READ"
LIST_POLICY = "POLICIES_LIST"
#: The lane's own budget buckets: reading one costs a token of it (reading POLICIES_READ when it
#: runs low would speed up what it watches). Every sweep's listing reads them.
LANE_NEVER_READS = frozenset({READ_POLICY, LIST_POLICY})


@dataclass(frozen=True)
class WatchRules:
    """How the lane decides; the defaults are the production settings."""

    sweep_interval_s: float = 300.0
    warning_horizon_s: float = 900.0
    urgent_interval_s: float = 15.0
    urgent_horizon_s: float = 120.0  # first 429 expected this soon: read as often as possible
    warning_interval_s: float = 30.0
    fast_interval_s: float = 60.0
    surge_ratio: float = 0.8  # demand from the Bridge's counts at this share of the refill
    read_budget_ratio: float = 0.5
    list_budget_ratio: float = 0.25
    list_when_hot: int = 3  # this many hot buckets of a participant: one listing instead
    backoff_below: float = 0.5  # POLICIES_READ below this share: half the pace
    stop_below: float = 0.25  # below this share: no reads at all


@dataclass(frozen=True)
class BucketView:
    """What is known of one bucket from its newest reading and evaluation."""

    ispb: str
    policy: str
    capacity: int
    refill_tokens: int
    refill_period_sec: int
    available: int
    level_rank: int
    time_to_429_s: float | None
    demand_upper_per_min: float | None
    received_at: dt.datetime  # our clock: when its newest reading reached us

    @property
    def refill_per_min(self) -> float:
        return self.refill_tokens * 60.0 / self.refill_period_sec


@dataclass(frozen=True)
class BudgetView:
    """The monitor's own spend and what is left of a participant's POLICIES_* buckets."""

    ispb: str
    read_refill_per_min: float = 60.0
    read_capacity: int = 200
    read_available: float | None = None  # estimate now; None: never read
    list_refill_per_min: float = 6.0
    get_calls_last_minute: int = 0
    list_calls_last_minute: int = 0


@dataclass(frozen=True)
class WatchItem:
    """One bucket to re-read, how often, and why."""

    ispb: str
    policy: str
    interval_s: float
    reason: str


@dataclass
class ParticipantPlan:
    """What to call for one participant this round."""

    ispb: str
    listing: bool = False  # one ListPolicies (several hot buckets)
    reads: list[str] = field(default_factory=list)  # GetPolicy, one per policy
    items: list[WatchItem] = field(default_factory=list)  # everything due, with reasons
    skipped: dict[str, str] = field(default_factory=dict)  # policy -> why not now

    @property
    def calls(self) -> tuple[int, int]:
        """(POLICIES_LIST, POLICIES_READ) tokens this plan spends."""
        return (1 if self.listing else 0), len(self.reads)


def counted_demand_per_min(policy: str, counts: Mapping[int, int], seconds: float) -> float:
    """Tokens per minute the responses DICT counted have cost (a 404 costs what DICT charges
    for it on that policy, a 429 costs nothing); credits for payments are ignored (this is a
    signal to look closer, not an estimate to store)."""
    if seconds <= 0:
        return 0.0
    spec = POLICIES_BY_NAME.get(policy)
    not_found_cost = spec.not_found_cost if spec is not None else 1
    tokens = 0
    for status, count in counts.items():
        if status in (429, 500):
            continue
        tokens += count * (not_found_cost if status == 404 else 1)
    return tokens * 60.0 / seconds


def _reasons(
    bucket: BucketView,
    counts: Mapping[int, int] | None,
    counted_seconds: float,
    rules: WatchRules,
) -> list[tuple[float, str]]:
    found: list[tuple[float, str]] = []
    if counts and counts.get(429):
        found.append((0.0, f"DICT answered {counts[429]:,} 429s"))
    if counts is not None:
        demand = counted_demand_per_min(bucket.policy, counts, counted_seconds)
        if demand >= rules.surge_ratio * bucket.refill_per_min > 0:
            share = demand / bucket.refill_per_min
            found.append((rules.urgent_interval_s, f"demand {share:.0%} of the refill"))
    ttl = bucket.time_to_429_s
    if bucket.level_rank >= 2:
        found.append((rules.urgent_interval_s, "CRITICAL or worse"))
    elif ttl is not None and ttl < rules.urgent_horizon_s:
        found.append((rules.urgent_interval_s, f"first 429 in {ttl:.0f} s"))
    if bucket.level_rank == 1:
        found.append((rules.warning_interval_s, "WARNING"))
    elif ttl is not None and ttl < rules.warning_horizon_s:
        found.append((rules.warning_interval_s, f"first 429 in {ttl / 60:.1f} min"))
    upper = bucket.demand_upper_per_min
    if upper is not None and upper > bucket.refill_per_min:
        net = (upper - bucket.refill_per_min) / 60.0
        drain = max(bucket.available, 0) / net
        if drain < rules.sweep_interval_s:
            found.append((rules.fast_interval_s, f"could be empty in {drain:.0f} s"))
    return found


def hot_buckets(
    buckets: Iterable[BucketView],
    counts: Mapping[str, Mapping[str, Mapping[int, int]]],
    counted_seconds: Mapping[str, float],
    rules: WatchRules,
    now: dt.datetime,
) -> list[WatchItem]:
    """The buckets due for a read now, most urgent first (``counts``: per participant and
    policy, the Bridge's counts since the last stored ones, over ``counted_seconds``)."""
    due = []
    for bucket in buckets:
        if bucket.policy in LANE_NEVER_READS:
            continue
        participant_counts = counts.get(bucket.ispb)
        policy_counts = (
            participant_counts.get(bucket.policy, {}) if participant_counts is not None else None
        )
        found = _reasons(bucket, policy_counts, counted_seconds.get(bucket.ispb, 0.0), rules)
        if not found:
            continue
        interval, reason = min(found)
        age = (now - bucket.received_at).total_seconds()
        if interval == 0.0 or age >= interval - 0.5:  # (half a second of scheduling slack)
            due.append(WatchItem(bucket.ispb, bucket.policy, interval, reason))
    return sorted(due, key=lambda item: (item.interval_s, item.ispb, item.policy))


def plan_reads(
    due: Iterable[WatchItem], budgets: Mapping[str, BudgetView], rules: WatchRules
) -> list[ParticipantPlan]:
    """Per participant, the calls this round may make within the budget (most urgent first)."""
    plans: dict[str, ParticipantPlan] = {}
    for item in due:
        plans.setdefault(item.ispb, ParticipantPlan(item.ispb)).items.append(item)
    for plan in plans.values():
        budget = budgets.get(plan.ispb, BudgetView(plan.ispb))
        reads_left = _reads_allowed(budget, rules)
        lists_left = math.floor(
            rules.list_budget_ratio * budget.list_refill_per_min - budget.list_calls_last_minute
        )
        hot = [item.policy for item in plan.items]
        if len(hot) >= rules.list_when_hot and lists_left >= 1:
            plan.listing = True
            continue
        for item in plan.items:
            if reads_left >= 1:
                plan.reads.append(item.policy)
                reads_left -= 1
            else:
                plan.skipped[item.policy] = _why_not(budget, rules)
    return [plans[ispb] for ispb in sorted(plans)]


def _reads_allowed(budget: BudgetView, rules: WatchRules) -> int:
    per_minute = rules.read_budget_ratio * budget.read_refill_per_min
    if budget.read_available is not None and budget.read_capacity > 0:
        share = budget.read_available / budget.read_capacity
        if share < rules.stop_below:
            return 0
        if share < rules.backoff_below:
            per_minute /= 2
    return max(0, math.floor(per_minute - budget.get_calls_last_minute))


def _why_not(budget: BudgetView, rules: WatchRules) -> str:
    if budget.read_available is not None and budget.read_capacity > 0:
        share = budget.read_available / budget.read_capacity
        if share < rules.stop_below:
            return f"POLICIES_READ at {share:.0%}: the lane stops below {rules.stop_below:.0%}"
        if share < rules.backoff_below:
            return (
                f"POLICIES_READ at {share:.0%}: the lane slows down below {rules.backoff_below:.0%}"
            )
    return (
        f"budget of {rules.read_budget_ratio:.0%} of POLICIES_READ's refill spent "
        f"({budget.get_calls_last_minute} reads in the last minute)"
    )
