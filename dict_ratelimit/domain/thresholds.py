"""Threshold evaluation: a level (OK, WARNING, CRITICAL, EXHAUSTED) and the reasons for it.

Two kinds of reasons raise the level:
- the remaining ratio at or below a threshold (inclusive: 7,200 of 36,000 is WARNING at 20 %,
  3,600 of 36,000 is CRITICAL at 10 %, the boundaries of the system we replace);
- the forecast: time to the first 429 shorter than a horizon (defaults: one polling interval
  → CRITICAL, three → WARNING), because a 20 % bucket that refills in two minutes can be
  empty in 24 seconds.
A balance at or below zero is EXHAUSTED. Thresholds are global with per-policy overrides; each
evaluation records the thresholds it used.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from enum import IntEnum
from typing import Any


class Level(IntEnum):
    """Ordered: a higher value is worse."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    EXHAUSTED = 3


class ThresholdConfigError(ValueError):
    """An invalid thresholds file; the message names the policy and the field."""


@dataclass(frozen=True)
class Thresholds:
    """Limits for one policy (ratios of capacity, horizons in seconds)."""

    warning_ratio: float = 0.20
    critical_ratio: float = 0.10
    clear_ratio: float = 0.30
    warning_horizon_seconds: float = 900.0
    critical_horizon_seconds: float = 300.0

    def validate(self, where: str) -> Thresholds:
        for name in ("warning_ratio", "critical_ratio", "clear_ratio"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ThresholdConfigError(f"{where}: {name} must be between 0 and 1, got {value}")
        for name in ("warning_horizon_seconds", "critical_horizon_seconds"):
            value = getattr(self, name)
            if value < 0 or math.isnan(value):
                raise ThresholdConfigError(f"{where}: {name} must be >= 0, got {value}")
        if self.critical_ratio > self.warning_ratio:
            raise ThresholdConfigError(
                f"{where}: critical_ratio ({self.critical_ratio}) is above warning_ratio "
                f"({self.warning_ratio})"
            )
        if self.clear_ratio < self.warning_ratio:
            raise ThresholdConfigError(
                f"{where}: clear_ratio ({self.clear_ratio}) is below warning_ratio "
                f"({self.warning_ratio}); alerts would flap"
            )
        if self.critical_horizon_seconds > self.warning_horizon_seconds:
            raise ThresholdConfigError(
                f"{where}: critical_horizon_seconds ({self.critical_horizon_seconds}) is above "
                f"warning_horizon_seconds ({self.warning_horizon_seconds})"
            )
        return self

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class ThresholdConfig:
    """Global thresholds and per-policy overrides."""

    defaults: Thresholds = field(default_factory=Thresholds)
    policies: Mapping[str, Thresholds] = field(default_factory=dict)

    def for_policy(self, policy: str) -> Thresholds:
        return self.policies.get(policy, self.defaults)


_FIELDS = {f.name for f in fields(Thresholds)}


def _thresholds(raw: Any, base: Thresholds, where: str) -> Thresholds:
    if raw is None:
        return base
    if not isinstance(raw, Mapping):
        raise ThresholdConfigError(f"{where}: expected a mapping of thresholds")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise ThresholdConfigError(
            f"{where}: unknown field(s) {sorted(unknown)}; expected {sorted(_FIELDS)}"
        )
    values = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ThresholdConfigError(f"{where}: {key} must be a number, got {value!r}")
        values[key] = float(value)
    return replace(base, **values).validate(where)


def parse_threshold_config(raw: Any, known_policies: frozenset[str]) -> ThresholdConfig:
    """Validate a thresholds document (``defaults`` and ``policies`` mappings)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ThresholdConfigError("thresholds: expected a mapping with defaults and policies")
    unknown_sections = set(raw) - {"defaults", "policies"}
    if unknown_sections:
        raise ThresholdConfigError(f"thresholds: unknown section(s) {sorted(unknown_sections)}")
    defaults = _thresholds(raw.get("defaults"), Thresholds(), "defaults")
    policies_raw = raw.get("policies") or {}
    if not isinstance(policies_raw, Mapping):
        raise ThresholdConfigError("policies: expected a mapping of policy name to thresholds")
    unknown = sorted(set(policies_raw) - known_policies)
    if unknown:
        raise ThresholdConfigError(f"policies: unknown policy name(s) {unknown}")
    return ThresholdConfig(
        defaults=defaults,
        policies={
            name: _thresholds(values, defaults, f"policies.{name}")
            for name, values in policies_raw.items()
        },
    )


@dataclass(frozen=True)
class Reason:
    """Why a level was raised: a stable code, the level it implies and a sentence."""

    code: str
    level: Level
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "level": self.level.name, "detail": self.detail}


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def evaluate(
    available: float,
    capacity: float,
    time_to_429_seconds: float | None,
    thresholds: Thresholds,
    *,
    throttled: int | None = None,
    throttled_since: dt.datetime | None = None,
    policy: str = "",
) -> tuple[Level, list[Reason]]:
    """The level of one reading and every reason that contributed (worst first).

    ``time_to_429_seconds`` is None when the forecast is unknown or "never". ``throttled`` is
    the number of 429s DICT answered for the policy since the previous reading (the Bridge's
    counts; None: unknown): any is EXHAUSTED, even when the bucket has refilled since, because
    the institution's requests were refused.
    """
    reasons: list[Reason] = []
    if throttled:
        since = f" since {throttled_since:%H:%M:%S} UTC" if throttled_since is not None else ""
        reasons.append(
            Reason(
                "throttled",
                Level.EXHAUSTED,
                f"DICT throttled {throttled:,} requests of {policy or 'this policy'}{since}",
            )
        )
    ratio = available / capacity
    if available <= 0:
        reasons.append(
            Reason("exhausted", Level.EXHAUSTED, f"{available:.0f} tokens left: DICT answers 429")
        )
    elif ratio <= thresholds.critical_ratio:
        reasons.append(
            Reason(
                "remaining_ratio",
                Level.CRITICAL,
                f"{ratio:.1%} left ≤ {thresholds.critical_ratio:.0%} (critical)",
            )
        )
    elif ratio <= thresholds.warning_ratio:
        reasons.append(
            Reason(
                "remaining_ratio",
                Level.WARNING,
                f"{ratio:.1%} left ≤ {thresholds.warning_ratio:.0%} (warning)",
            )
        )
    if available > 0 and time_to_429_seconds is not None:
        if time_to_429_seconds < thresholds.critical_horizon_seconds:
            reasons.append(
                Reason(
                    "time_to_429",
                    Level.CRITICAL,
                    f"first 429 expected in {_duration(time_to_429_seconds)} "
                    f"< {_duration(thresholds.critical_horizon_seconds)}",
                )
            )
        elif time_to_429_seconds < thresholds.warning_horizon_seconds:
            reasons.append(
                Reason(
                    "time_to_429",
                    Level.WARNING,
                    f"first 429 expected in {_duration(time_to_429_seconds)} "
                    f"< {_duration(thresholds.warning_horizon_seconds)}",
                )
            )
    level = max((reason.level for reason in reasons), default=Level.OK)
    return level, sorted(reasons, key=lambda reason: -reason.level)
