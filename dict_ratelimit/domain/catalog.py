"""DICT's policies as the reference documents them (``shared/reference/dict-api.md``).

Used by the simulator (to build realistic buckets), by validation (to recognise policy names)
and for sanity checks. Never as the limits themselves: the monitor always uses what DICT
returns, which may differ (the manual's PDF already disagrees with the OpenAPI in places).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Scope(str, Enum):
    """Who a bucket belongs to."""

    PSP = "psp"  # the participant as a whole
    USER = "user"  # one end user (per payer); not returned by the list call


@dataclass(frozen=True)
class BucketSpec:
    """Capacity and refill of one bucket: ``refill_tokens`` every ``refill_period_sec``."""

    capacity: int
    refill_tokens: int
    refill_period_sec: int

    @property
    def refill_per_second(self) -> float:
        return self.refill_tokens / self.refill_period_sec

    @property
    def depth_seconds(self) -> float:
        """Seconds from empty to full with no demand (continuous refill)."""
        return self.capacity / self.refill_per_second


@dataclass(frozen=True)
class PolicySpec:
    """One DICT policy: scope, operations, bucket, and the cost of a 404 on it."""

    name: str
    scope: Scope
    operations: str
    bucket: BucketSpec | None  # None: depends on the participant's category
    not_found_cost: int = 1
    payment_credit: int = 0  # tokens credited when a payment follows a successful lookup


def _per_min(per_minute: int, capacity: int) -> BucketSpec:
    return BucketSpec(capacity=capacity, refill_tokens=per_minute, refill_period_sec=60)


#: ENTRIES_READ_PARTICIPANT_ANTISCAN and ENTRIES_STATISTICS_READ by category.
CATEGORY_BUCKETS: dict[str, BucketSpec] = {
    "A": _per_min(25_000, 50_000),
    "B": _per_min(20_000, 40_000),
    "C": _per_min(15_000, 30_000),
    "D": _per_min(8_000, 16_000),
    "E": _per_min(2_500, 5_000),
    "F": _per_min(250, 500),
    "G": _per_min(25, 250),
    "H": _per_min(2, 50),
}

CATEGORY_DEPENDENT = ("ENTRIES_READ_PARTICIPANT_ANTISCAN", "ENTRIES_STATISTICS_READ")

POLICIES: tuple[PolicySpec, ...] = (
    PolicySpec(
        "ENTRIES_READ_USER_ANTISCAN",
        Scope.USER,
        "getEntry (EMAIL, PHONE)",
        _per_min(2, 100),  # PF; PJ is 20/min, 1,000
        not_found_cost=20,
        payment_credit=1,
    ),
    PolicySpec(
        "ENTRIES_READ_USER_ANTISCAN_V2",
        Scope.USER,
        "getEntry (CPF, CNPJ, EVP)",
        _per_min(2, 100),
        not_found_cost=20,
        payment_credit=1,
    ),
    PolicySpec(
        "ENTRIES_READ_PARTICIPANT_ANTISCAN",
        Scope.PSP,
        "getEntry",
        None,
        not_found_cost=3,
        payment_credit=1,
    ),
    PolicySpec("ENTRIES_STATISTICS_READ", Scope.PSP, "getEntryStatistics", None),
    PolicySpec("ENTRIES_WRITE", Scope.PSP, "createEntry, deleteEntry", _per_min(1_200, 36_000)),
    PolicySpec("ENTRIES_UPDATE", Scope.PSP, "updateEntry", _per_min(600, 600)),
    PolicySpec("CLAIMS_READ", Scope.PSP, "getClaim", _per_min(600, 18_000)),
    PolicySpec(
        "CLAIMS_WRITE",
        Scope.PSP,
        "create/ack/cancel/confirm/completeClaim",
        _per_min(1_200, 36_000),
    ),
    PolicySpec("CLAIMS_LIST_WITH_ROLE", Scope.PSP, "listClaims (role)", _per_min(40, 200)),
    PolicySpec("CLAIMS_LIST_WITHOUT_ROLE", Scope.PSP, "listClaims", _per_min(10, 50)),
    PolicySpec("SYNC_VERIFICATIONS_WRITE", Scope.PSP, "createSyncVerification", _per_min(10, 50)),
    PolicySpec(
        "CIDS_FILES_WRITE",
        Scope.PSP,
        "createCidSetFile",
        BucketSpec(capacity=200, refill_tokens=40, refill_period_sec=86_400),
    ),
    PolicySpec("CIDS_FILES_READ", Scope.PSP, "getCidSetFile", _per_min(10, 50)),
    PolicySpec("CIDS_EVENTS_LIST", Scope.PSP, "listCidSetEvents", _per_min(20, 100)),
    PolicySpec("CIDS_ENTRIES_READ", Scope.PSP, "getEntryByCid", _per_min(1_200, 36_000)),
    PolicySpec("INFRACTION_REPORTS_READ", Scope.PSP, "getInfractionReport", _per_min(600, 18_000)),
    PolicySpec(
        "INFRACTION_REPORTS_WRITE",
        Scope.PSP,
        "create/ack/cancel/closeInfractionReport",
        _per_min(1_200, 36_000),
    ),
    PolicySpec(
        "INFRACTION_REPORTS_LIST_WITH_ROLE", Scope.PSP, "listInfractionReports", _per_min(40, 200)
    ),
    PolicySpec(
        "INFRACTION_REPORTS_LIST_WITHOUT_ROLE", Scope.PSP, "listInfractionReports", _per_min(10, 50)
    ),
    PolicySpec("KEYS_CHECK", Scope.PSP, "checkKeys", _per_min(70, 70)),
    PolicySpec("REFUNDS_READ", Scope.PSP, "getRefund", _per_min(1_200, 36_000)),
    PolicySpec("REFUNDS_WRITE", Scope.PSP, "create/cancel/closeRefund", _per_min(2_400, 72_000)),
    PolicySpec("REFUND_LIST_WITH_ROLE", Scope.PSP, "listRefunds (role)", _per_min(40, 200)),
    PolicySpec("REFUND_LIST_WITHOUT_ROLE", Scope.PSP, "listRefunds", _per_min(10, 50)),
    PolicySpec("FRAUD_MARKERS_READ", Scope.PSP, "getFraudMarker", _per_min(600, 18_000)),
    PolicySpec(
        "FRAUD_MARKERS_WRITE", Scope.PSP, "create/cancelFraudMarker", _per_min(1_200, 36_000)
    ),
    PolicySpec("FRAUD_MARKERS_LIST", Scope.PSP, "listFrauds", _per_min(600, 18_000)),
    PolicySpec(
        "PERSONS_STATISTICS_READ", Scope.PSP, "getPersonStatistics", _per_min(12_000, 36_000)
    ),
    PolicySpec("POLICIES_READ", Scope.PSP, "getBucketState", _per_min(60, 200)),
    PolicySpec("POLICIES_LIST", Scope.PSP, "listBucketStates", _per_min(6, 20)),
)

POLICIES_BY_NAME: dict[str, PolicySpec] = {spec.name: spec for spec in POLICIES}
KNOWN_POLICY_NAMES: frozenset[str] = frozenset(POLICIES_BY_NAME)
#: Policies the list call returns (the per-user buckets are per payer, not listed).
LISTED_POLICY_NAMES: tuple[str, ...] = tuple(s.name for s in POLICIES if s.scope is Scope.PSP)
CATEGORIES: tuple[str, ...] = tuple(CATEGORY_BUCKETS)


def bucket_for(policy: str, category: str) -> BucketSpec:
    """The reference bucket of ``policy`` for a participant of ``category``."""
    spec = POLICIES_BY_NAME[policy]
    if spec.bucket is not None:
        return spec.bucket
    try:
        return CATEGORY_BUCKETS[category]
    except KeyError:
        raise ValueError(f"unknown category {category!r}; expected one of A-H") from None
