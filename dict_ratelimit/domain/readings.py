"""A reading of one DICT bucket, as the rest of the system sees it."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class PolicyReading:
    """One policy's bucket in one DICT response.

    ``response_time`` is DICT's ResponseTime (timezone-aware, authoritative);
    ``polled_at`` is when our poll started. ``available_tokens`` may be negative.
    """

    ispb: str
    policy: str
    response_time: dt.datetime
    polled_at: dt.datetime
    category: str
    available_tokens: int
    capacity: int
    refill_tokens: int
    refill_period_sec: int
    correlation_id: str | None = None

    @property
    def remaining_ratio(self) -> float:
        """Available over capacity; below 0 when the bucket is overdrawn."""
        return self.available_tokens / self.capacity


ISPB_PATTERN = re.compile(r"^[0-9]{8}$")
CATEGORY_PATTERN = re.compile(r"^[A-Z]$")
POLICY_NAME_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]*$")
#: How far DICT's ResponseTime may lie from our own clock before the reading is suspect.
MAX_CLOCK_SKEW = dt.timedelta(minutes=10)


class InvalidReading(ValueError):
    """A participant's reading that cannot be stored; names the participant and the field."""

    def __init__(self, ispb: str, field: str, problem: str) -> None:
        self.ispb = ispb
        self.field = field
        self.problem = problem
        super().__init__(f"participant {ispb}: invalid {field}: {problem}")


@dataclass(frozen=True)
class RawPolicy:
    """One policy of a Bridge answer, before validation."""

    name: str
    available_tokens: int
    capacity: int
    refill_tokens: int
    refill_period_sec: int


@dataclass(frozen=True)
class RawListing:
    """A Bridge answer for one participant, before validation (``response_time`` may be None)."""

    ispb: str
    response_time: dt.datetime | None
    correlation_id: str
    category: str
    policies: tuple[RawPolicy, ...]


def validate_listing(
    listing: RawListing,
    polled_at: dt.datetime,
    known_policies: frozenset[str],
    *,
    max_skew: dt.timedelta | None = MAX_CLOCK_SKEW,
) -> list[PolicyReading]:
    """Turn a Bridge answer into readings, or raise :class:`InvalidReading`.

    All or nothing: the first problem rejects the participant's whole reading, so a
    participant is never half-stored. Negative available tokens are valid (DICT allows them).
    A ResponseTime further than ``max_skew`` from our clock is refused (a Bridge sending local
    time as UTC would shift every rate); ``None`` disables the check (replays, manual clocks).
    """
    ispb = listing.ispb
    if not ISPB_PATTERN.match(ispb or ""):
        raise InvalidReading(ispb, "participant", f"{ispb!r} is not an 8-digit ISPB")
    if listing.response_time is None:
        raise InvalidReading(ispb, "ResponseTime", "missing")
    if listing.response_time.tzinfo is None:
        raise InvalidReading(ispb, "ResponseTime", "has no time zone")
    skew = abs(listing.response_time - polled_at)
    if max_skew is not None and skew > max_skew:
        raise InvalidReading(
            ispb,
            "ResponseTime",
            f"{listing.response_time.isoformat()} is {skew} away from the poll time",
        )
    if not CATEGORY_PATTERN.match(listing.category or ""):
        raise InvalidReading(ispb, "Category", f"{listing.category!r} is not one capital letter")
    if not listing.policies:
        raise InvalidReading(ispb, "Policies", "the answer lists no policy")
    seen: set[str] = set()
    readings = []
    for policy in listing.policies:
        name = policy.name
        if not POLICY_NAME_PATTERN.match(name or ""):
            raise InvalidReading(ispb, "Policy.Name", f"{name!r} is not a policy name")
        if name not in known_policies:
            raise InvalidReading(ispb, "Policy.Name", f"unknown policy {name}")
        if name in seen:
            raise InvalidReading(ispb, "Policy.Name", f"{name} appears twice")
        seen.add(name)
        for field_name, value in (
            ("Capacity", policy.capacity),
            ("RefillTokens", policy.refill_tokens),
            ("RefillPeriodSec", policy.refill_period_sec),
        ):
            if value <= 0:
                raise InvalidReading(ispb, f"{name}.{field_name}", f"must be > 0, got {value}")
        if policy.available_tokens > policy.capacity:
            raise InvalidReading(
                ispb,
                f"{name}.AvailableTokens",
                f"{policy.available_tokens} is above the capacity {policy.capacity}",
            )
        readings.append(
            PolicyReading(
                ispb=ispb,
                policy=name,
                response_time=listing.response_time,
                polled_at=polled_at,
                category=listing.category,
                available_tokens=policy.available_tokens,
                capacity=policy.capacity,
                refill_tokens=policy.refill_tokens,
                refill_period_sec=policy.refill_period_sec,
                correlation_id=listing.correlation_id or None,
            )
        )
    return readings


@dataclass(frozen=True)
class BucketShape:
    """Capacity and refill of a bucket as last reported."""

    capacity: int
    refill_tokens: int
    refill_period_sec: int


@dataclass(frozen=True)
class ShapeChange:
    """A bucket whose capacity or refill differs from its previous reading."""

    ispb: str
    policy: str
    before: BucketShape
    after: BucketShape

    def describe(self) -> str:
        b, a = self.before, self.after
        return (
            f"{self.ispb}/{self.policy}: capacity {b.capacity}→{a.capacity}, refill "
            f"{b.refill_tokens}/{b.refill_period_sec}s→{a.refill_tokens}/{a.refill_period_sec}s"
        )


def vanished_policies(
    previous: dict[tuple[str, str], BucketShape], readings: list[PolicyReading], answered: set[str]
) -> list[tuple[str, str]]:
    """(ispb, policy) seen before but absent from the answer of a participant that answered."""
    present = {(r.ispb, r.policy) for r in readings}
    return sorted(key for key in previous if key[0] in answered and key not in present)


def shape_changes(
    previous: dict[tuple[str, str], BucketShape], readings: list[PolicyReading]
) -> list[ShapeChange]:
    """Readings whose capacity or refill differs from the previous reading of the policy."""
    changes = []
    for r in readings:
        before = previous.get((r.ispb, r.policy))
        after = BucketShape(r.capacity, r.refill_tokens, r.refill_period_sec)
        if before is not None and before != after:
            changes.append(ShapeChange(r.ispb, r.policy, before, after))
    return changes
