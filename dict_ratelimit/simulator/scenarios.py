"""Traffic scenarios: per-policy demand over time, from a YAML/JSON file or a built-in.

A scenario file::

    name: my-scenario
    repeat_every_s: 3600          # optional: loop the timeline
    traffic:
      - policy: ENTRIES_READ_PARTICIPANT_ANTISCAN
        from_s: 0                 # seconds since the simulator started
        to_s: 600
        refill_factor: 0.5        # demand as a multiple of the bucket's refill rate...
        # rpm: 12000              # ...or in requests per minute (exactly one of the two)
        not_found_share: 0.02     # share of lookups answered 404 (costlier on anti-scan)
        payment_share: 0.6        # share of successful lookups followed by a payment (+credit)
        participant: "12345678"   # optional: only this participant
        growth_per_week: 0.04     # optional: +4 % a week since the start (whole hours)
    events:
      - at_s: 900
        category: D               # BACEN moves the participant to category D
        participant: "12345678"   # optional: every participant

Entries of the same policy add up where their windows overlap, so a burst is one more entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dict_ratelimit.domain.catalog import KNOWN_POLICY_NAMES, LISTED_POLICY_NAMES

WEEK_SECONDS = 7 * 86_400


class ScenarioError(ValueError):
    """A scenario that cannot be loaded; the message says which entry and why."""


class Traffic(BaseModel):
    """Demand on one policy during ``[from_s, to_s)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: str
    from_s: float = Field(ge=0)
    to_s: float
    rpm: float | None = Field(default=None, ge=0)
    refill_factor: float | None = Field(default=None, ge=0)
    not_found_share: float = Field(default=0.0, ge=0, le=1)
    payment_share: float = Field(default=0.0, ge=0, le=1)
    participant: str | None = None
    #: Compound growth of this entry's demand per week since the simulator started, applied
    #: in whole hours (0.04: +4 % a week), for capacity-planning scenarios with a known trend.
    growth_per_week: float = Field(default=0.0, ge=-0.5, le=1.0)

    def growth_factor(self, elapsed: float) -> float:
        """The demand multiplier ``elapsed`` seconds after the start (constant per hour)."""
        if not self.growth_per_week:
            return 1.0
        hours = elapsed // 3600
        return float((1 + self.growth_per_week) ** (hours * 3600 / WEEK_SECONDS))

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in KNOWN_POLICY_NAMES:
            raise ValueError(f"unknown policy {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Traffic:
        if self.to_s <= self.from_s:
            raise ValueError(f"to_s ({self.to_s}) must be after from_s ({self.from_s})")
        if (self.rpm is None) == (self.refill_factor is None):
            raise ValueError("give exactly one of rpm and refill_factor")
        return self

    def requests_per_minute(self, refill_per_minute: float) -> float:
        if self.rpm is not None:
            return self.rpm
        assert self.refill_factor is not None
        return self.refill_factor * refill_per_minute


class CategoryEvent(BaseModel):
    """BACEN changes a participant's category at ``at_s``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at_s: float = Field(ge=0)
    category: str = Field(pattern=r"^[A-H]$")
    participant: str | None = None


class Scenario(BaseModel):
    """A named traffic timeline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    repeat_every_s: float | None = Field(default=None, gt=0)
    traffic: tuple[Traffic, ...] = ()
    events: tuple[CategoryEvent, ...] = ()

    def timeline_seconds(self, elapsed: float) -> float:
        """Position in the timeline after ``elapsed`` seconds (looping when it repeats)."""
        if self.repeat_every_s:
            return elapsed % self.repeat_every_s
        return elapsed

    def demand(self, policy: str, participant: str, elapsed: float) -> list[Traffic]:
        """Traffic entries active for (participant, policy) at ``elapsed``."""
        position = self.timeline_seconds(elapsed)
        return [
            t
            for t in self.traffic
            if t.policy == policy
            and t.from_s <= position < t.to_s
            and (t.participant is None or t.participant == participant)
        ]

    def policies_with_traffic(self) -> set[str]:
        return {t.policy for t in self.traffic}


def _everything(factor: float, *, until: float = 10**9) -> list[dict[str, Any]]:
    return [
        {"policy": name, "from_s": 0, "to_s": until, "refill_factor": factor}
        for name in LISTED_POLICY_NAMES
        if not name.startswith("POLICIES_") and name != "ENTRIES_READ_PARTICIPANT_ANTISCAN"
    ]


def _antiscan(from_s: float, to_s: float, factor: float, not_found: float, payment: float = 0.5):
    return {
        "policy": "ENTRIES_READ_PARTICIPANT_ANTISCAN",
        "from_s": from_s,
        "to_s": to_s,
        "refill_factor": factor,
        "not_found_share": not_found,
        "payment_share": payment,
    }


_BUSINESS_HOURS = [0.05] * 7 + [0.3, 0.6, 0.8, 0.85, 0.9, 0.7, 0.8, 0.85, 0.8, 0.7, 0.5, 0.3]
_BUSINESS_HOURS += [0.15] * (24 - len(_BUSINESS_HOURS))
_BUSY_POLICIES = (
    "ENTRIES_WRITE",
    "CLAIMS_READ",
    "REFUNDS_WRITE",
    "KEYS_CHECK",
    "PERSONS_STATISTICS_READ",
    "FRAUD_MARKERS_READ",
)

#: A working day's demand by hour (peak at 10:00) and each weekday's scale (Monday busiest).
WORKDAY_HOURS = (0.05,) * 6 + (0.15, 0.35, 0.6, 0.85, 1.0, 0.9, 0.7, 0.8, 0.85, 0.8, 0.65,
                              0.45, 0.3, 0.2, 0.15, 0.1, 0.08, 0.06)  # fmt: skip
WEEKDAY_SCALE = (1.0, 0.9, 0.9, 0.9, 0.9, 0.35, 0.25)


def weekly_cycle(policy: str, peak_factor: float, growth_per_week: float) -> list[dict[str, Any]]:
    """168 hourly entries: ``peak_factor`` times the refill on Mondays 10:00, the rest of the
    week in proportion (``WORKDAY_HOURS`` x ``WEEKDAY_SCALE``), all growing together."""
    return [
        {
            "policy": policy,
            "from_s": (day * 24 + hour) * 3600,
            "to_s": (day * 24 + hour + 1) * 3600,
            "refill_factor": peak_factor * WEEKDAY_SCALE[day] * WORKDAY_HOURS[hour],
            "growth_per_week": growth_per_week,
        }
        for day in range(7)
        for hour in range(24)
    ]


BUILTIN_SCENARIOS: dict[str, dict[str, Any]] = {
    "steady": {
        "name": "steady",
        "description": "Every policy at 30 % of its refill, anti-scan at 50 %: never exhausts.",
        "traffic": [*_everything(0.3), _antiscan(0, 10**9, 0.5, 0.02, 0.6)],
    },
    "business-day": {
        "name": "business-day",
        "description": "A day's curve (quiet night, busy 9-17 h) with a lunch-time anti-scan "
        "surge at 12:00-12:10 that exhausts it; repeats every 24 h.",
        "repeat_every_s": 86_400,
        "traffic": [
            *[
                {"policy": p, "from_s": h * 3600, "to_s": (h + 1) * 3600, "refill_factor": f}
                for p in _BUSY_POLICIES
                for h, f in enumerate(_BUSINESS_HOURS)
            ],
            *[
                _antiscan(h * 3600, (h + 1) * 3600, f, 0.02, 0.6)
                for h, f in enumerate(_BUSINESS_HOURS)
            ],
            _antiscan(12 * 3600, 12 * 3600 + 600, 0.6, 0.1, 0.3),
        ],
    },
    "scan-attack": {
        "name": "scan-attack",
        "description": "Normal lookups, then from 10 min a key scan (404-heavy) ramps up and "
        "drains the participant anti-scan bucket until 25 min; then it recovers.",
        "traffic": [
            *_everything(0.2),
            _antiscan(0, 10**9, 0.4, 0.02, 0.5),
            _antiscan(600, 900, 0.4, 0.6, 0.0),
            _antiscan(900, 1500, 1.0, 0.8, 0.0),
        ],
    },
    "key-scan": {
        "name": "key-scan",
        "description": "Normal lookups, then from 10 min a key scan (80 % 404s at three tokens "
        "each) that empties the participant anti-scan bucket in about three minutes, between "
        "two five-minute readings; it stops at 25 min.",
        "traffic": [
            *_everything(0.2),
            _antiscan(0, 600, 0.4, 0.02, 0.5),
            _antiscan(600, 1500, 0.54, 0.8, 0.0),
            _antiscan(1500, 10**9, 0.4, 0.02, 0.5),
        ],
    },
    "slow-leak": {
        "name": "slow-leak",
        "description": "ENTRIES_WRITE demand creeps up (1.05, 1.2, 1.5, 2 then 3 times its "
        "refill, ten minutes each): half-full at about 38 min, empty at about 46 min.",
        "traffic": [
            *[t for t in _everything(0.2) if t["policy"] != "ENTRIES_WRITE"],
            _antiscan(0, 10**9, 0.4, 0.02, 0.5),
            *[
                {
                    "policy": "ENTRIES_WRITE",
                    "from_s": i * 600,
                    "to_s": (i + 1) * 600 if i < 4 else 10**9,
                    "refill_factor": factor,
                }
                for i, factor in enumerate((1.05, 1.2, 1.5, 2.0, 3.0))
            ],
        ],
    },
    "burst-recovery": {
        "name": "burst-recovery",
        "description": "Bursts on fast buckets (KEYS_CHECK, ENTRIES_UPDATE, CLAIMS_LIST_WITH_ROLE)"
        " from 10 to 13 min that empty them, then silence while they refill.",
        "traffic": [
            *_everything(0.2, until=600),
            {"policy": "KEYS_CHECK", "from_s": 600, "to_s": 780, "refill_factor": 3.0},
            {"policy": "ENTRIES_UPDATE", "from_s": 600, "to_s": 780, "refill_factor": 2.0},
            {"policy": "CLAIMS_LIST_WITH_ROLE", "from_s": 600, "to_s": 1200, "refill_factor": 2.0},
        ],
    },
    "category-downgrade": {
        "name": "category-downgrade",
        "description": "Anti-scan demand of 15,000/min (60 % of category A); at 15 min BACEN "
        "moves the participant to category D (8,000/min) and the bucket runs dry.",
        "traffic": [
            *_everything(0.2),
            {
                "policy": "ENTRIES_READ_PARTICIPANT_ANTISCAN",
                "from_s": 0,
                "to_s": 10**9,
                "rpm": 15_000,
                "not_found_share": 0.02,
                "payment_share": 0.2,
            },
        ],
        "events": [{"at_s": 900, "category": "D"}],
    },
    "weekly-growth": {
        "name": "weekly-growth",
        "description": "For capacity planning, started on a Monday 00:00: a working week "
        "(peak Mondays 10:00) repeating weekly. KEYS_CHECK peaks at 61 % of its refill and "
        "grows 8 %/week, so it first throttles at the eighth Monday peak; ENTRIES_WRITE peaks "
        "at 50 % and grows 1 %/week.",
        "repeat_every_s": WEEK_SECONDS,
        "traffic": [
            *weekly_cycle("KEYS_CHECK", 0.61, 0.08),
            *weekly_cycle("ENTRIES_WRITE", 0.5, 0.01),
        ],
    },
    "demo": {
        "name": "demo",
        "description": "For `dict-ratelimit dev`, in real time, looping every 30 min: calm, a "
        "scan attack (5-15 min), bursts on fast buckets (15-20 min), then a busy period.",
        "repeat_every_s": 1800,
        "traffic": [
            *_everything(0.3),
            _antiscan(0, 1800, 0.4, 0.02, 0.5),
            _antiscan(300, 480, 0.4, 0.5, 0.0),
            _antiscan(480, 900, 1.0, 0.8, 0.0),
            {"policy": "KEYS_CHECK", "from_s": 900, "to_s": 1200, "refill_factor": 2.5},
            {"policy": "ENTRIES_UPDATE", "from_s": 900, "to_s": 1080, "refill_factor": 2.0},
            {"policy": "CLAIMS_LIST_WITH_ROLE", "from_s": 900, "to_s": 1500, "refill_factor": 1.8},
            {"policy": "ENTRIES_WRITE", "from_s": 1200, "to_s": 1800, "refill_factor": 0.6},
        ],
    },
}


def parse_scenario(data: dict[str, Any], source: str) -> Scenario:
    """Validate a scenario document; errors name the source and the offending entry."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise ScenarioError(f"scenario {source}: {problems}") from None


def load_scenario(spec: str) -> Scenario:
    """A built-in by name, or a YAML/JSON file by path."""
    if spec in BUILTIN_SCENARIOS:
        return parse_scenario(BUILTIN_SCENARIOS[spec], spec)
    path = Path(spec)
    if not path.is_file():
        raise ScenarioError(
            f"scenario {spec!r} is neither a built-in ({', '.join(BUILTIN_SCENARIOS)}) nor a file"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ScenarioError(f"scenario {path}: not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"scenario {path}: expected a mapping at the top level")
    data.setdefault("name", path.stem)
    return parse_scenario(data, str(path))
