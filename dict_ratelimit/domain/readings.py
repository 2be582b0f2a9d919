"""A reading of one DICT bucket, as the rest of the system sees it."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class PolicyReading:
    """One policy's bucket in one DICT response.

    ``response_time`` is DICT's ResponseTime (timezone-aware, authoritative for every rate);
    ``polled_at`` is our clock when the poll started (authoritative for freshness).
    ``available_tokens`` may be negative. ``source`` says which call read it: ``list``
    (ListPolicies, a POLICIES_LIST token) or ``get`` (GetPolicy, a POLICIES_READ token).
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
    source: str = "list"

    @property
    def remaining_ratio(self) -> float:
        """Available over capacity; below 0 when the bucket is overdrawn."""
        return self.available_tokens / self.capacity


ISPB_PATTERN = re.compile(r"[0-9]{8}")  # always with fullmatch
CATEGORY_PATTERN = re.compile(r"[A-Z]")  # always with fullmatch: "$" accepts a trailing "\n"
POLICY_NAME_PATTERN = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
#: How far DICT's ResponseTime may lie from our own clock before the reading is suspect.
MAX_CLOCK_SKEW = dt.timedelta(minutes=10)

# What the storage columns accept (bigint, integer, text without NUL), and sanity ranges a
# reading must fall in before it may reach them.
BIGINT_MAX = 2**63 - 1
INTEGER_MAX = 2**31 - 1
CORRELATION_ID_MAX_LENGTH = 64
#: ResponseTimes outside this range are refused: far outside any real reading, and they would
#: overflow date arithmetic (a window a day before year 1, a month after year 9999).
EARLIEST_READING = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
LATEST_READING = dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidReading(ValueError):
    """A participant's reading that cannot be stored; names the participant and the field."""

    def __init__(self, ispb: str, field: str, problem: str) -> None:
        self.ispb = ispb
        self.field = field
        self.problem = problem
        super().__init__(f"participant {ispb}: invalid {field}: {problem}")


@dataclass(frozen=True)
class RawPolicy:
    """One policy of a Bridge answer, before validation (None: the field was absent)."""

    name: str
    available_tokens: int | None
    capacity: int | None
    refill_tokens: int | None
    refill_period_sec: int | None


@dataclass(frozen=True)
class RawListing:
    """A Bridge answer for one participant, before validation (``response_time`` may be None)."""

    ispb: str
    response_time: dt.datetime | None
    correlation_id: str
    category: str
    policies: tuple[RawPolicy, ...]


def shown(value: object, limit: int = 40) -> str:
    """A value for an error message: repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_text(ispb: str, field: str, value: str, max_length: int) -> None:
    """Text that storage (and a COPY) accepts: no control character, bounded length."""
    if len(value) > max_length:
        raise InvalidReading(ispb, field, f"{len(value)} characters, at most {max_length}")
    if _CONTROL.search(value):
        raise InvalidReading(ispb, field, f"{shown(value)} contains a control character")


def check_instant(ispb: str, field: str, value: dt.datetime | None) -> dt.datetime:
    """A present, zone-aware instant within the range readings can have."""
    if value is None:
        raise InvalidReading(ispb, field, "missing")
    if value.tzinfo is None:
        raise InvalidReading(ispb, field, "has no time zone")
    if not EARLIEST_READING <= value < LATEST_READING:
        raise InvalidReading(
            ispb,
            field,
            f"{value.isoformat()} is outside {EARLIEST_READING.year}-{LATEST_READING.year}",
        )
    return value


def _integer(ispb: str, field: str, value: int | None, low: int, high: int) -> int:
    if value is None:
        raise InvalidReading(ispb, field, "missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidReading(ispb, field, f"{shown(value)} is not an integer")
    if not low <= value <= high:
        raise InvalidReading(ispb, field, f"{value} is outside {low}..{high}")
    return value


def validate_listing(
    listing: RawListing,
    polled_at: dt.datetime,
    known_policies: frozenset[str],
    *,
    max_skew: dt.timedelta | None = MAX_CLOCK_SKEW,
    source: str = "list",
) -> list[PolicyReading]:
    """Turn a Bridge answer into readings, or raise :class:`InvalidReading`.

    All or nothing: the first problem rejects the participant's whole reading, so a
    participant is never half-stored. Every value is checked against the column it goes to
    (integer ranges, one capital letter, no control character in any text, a bounded
    CorrelationId, a ResponseTime in range), so that nothing this function accepts can make
    the database refuse the batch of every participant. Negative available tokens are valid
    (DICT allows them). A ResponseTime further than ``max_skew`` from our clock is refused (a
    Bridge sending local time as UTC would shift every rate); ``None`` disables the check.
    """
    ispb = listing.ispb
    if not isinstance(ispb, str) or not ISPB_PATTERN.fullmatch(ispb):
        raise InvalidReading(str(ispb), "participant", f"{shown(ispb)} is not an 8-digit ISPB")
    response_time = check_instant(ispb, "ResponseTime", listing.response_time)
    skew = abs(response_time - polled_at)
    if max_skew is not None and skew > max_skew:
        raise InvalidReading(
            ispb,
            "ResponseTime",
            f"{response_time.isoformat()} is {skew} away from the poll time",
        )
    if not isinstance(listing.category, str) or not CATEGORY_PATTERN.fullmatch(listing.category):
        raise InvalidReading(
            ispb, "Category", f"{shown(listing.category)} is not one capital letter"
        )
    correlation_id = listing.correlation_id or ""
    check_text(ispb, "CorrelationId", correlation_id, CORRELATION_ID_MAX_LENGTH)
    if not listing.policies:
        raise InvalidReading(ispb, "Policies", "the answer lists no policy")
    seen: set[str] = set()
    readings = []
    for policy in listing.policies:
        name = policy.name
        if not isinstance(name, str) or not POLICY_NAME_PATTERN.fullmatch(name):
            raise InvalidReading(ispb, "Policy.Name", f"{shown(name)} is not a policy name")
        if name not in known_policies:
            raise InvalidReading(ispb, "Policy.Name", f"unknown policy {name}")
        if name in seen:
            raise InvalidReading(ispb, "Policy.Name", f"{name} appears twice")
        seen.add(name)
        capacity = _integer(ispb, f"{name}.Capacity", policy.capacity, 1, BIGINT_MAX)
        refill_tokens = _integer(ispb, f"{name}.RefillTokens", policy.refill_tokens, 1, BIGINT_MAX)
        refill_period = _integer(
            ispb, f"{name}.RefillPeriodSec", policy.refill_period_sec, 1, INTEGER_MAX
        )
        available = _integer(
            ispb, f"{name}.AvailableTokens", policy.available_tokens, -BIGINT_MAX, BIGINT_MAX
        )
        if available > capacity:
            raise InvalidReading(
                ispb,
                f"{name}.AvailableTokens",
                f"{available} is above the capacity {capacity}",
            )
        readings.append(
            PolicyReading(
                ispb=ispb,
                policy=name,
                response_time=response_time,
                polled_at=polled_at,
                category=listing.category,
                available_tokens=available,
                capacity=capacity,
                refill_tokens=refill_tokens,
                refill_period_sec=refill_period,
                correlation_id=correlation_id or None,
                source=source,
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
