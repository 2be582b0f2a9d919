"""DICT's answers per policy and HTTP status, as the Bridge counted them (``GetRequestStats``).

Optional everywhere: a Bridge that does not keep them, or answers something unusable, makes
the 404 share (and the 429 count) of that participant *unknown* for the sweep, never 0, and
never costs the participant its reading.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from dict_ratelimit.domain.readings import (
    BIGINT_MAX,
    POLICY_NAME_PATTERN,
    InvalidReading,
    check_instant,
    shown,
)


class InvalidRequestStats(InvalidReading):
    """A ``GetRequestStats`` answer that cannot be used; names the participant and the field."""


@dataclass(frozen=True)
class RequestStats:
    """DICT responses by HTTP status per policy over a window, as the Bridge counted them."""

    window_start: dt.datetime
    window_end: dt.datetime
    by_policy: dict[str, dict[int, int]] = field(default_factory=dict)

    def not_found_share(self, policy: str) -> float | None:
        """Share of 404 among the policy's responses; None when there were none."""
        counts = self.by_policy.get(policy)
        total = sum(counts.values()) if counts else 0
        if not counts or not total:
            return None
        return counts.get(404, 0) / total


@dataclass(frozen=True)
class RawRequestStats:
    """A ``GetRequestStats`` answer before validation: (policy, [(status, count)]) items."""

    window_start: dt.datetime | None
    window_end: dt.datetime | None
    policies: tuple[tuple[str, tuple[tuple[int, int], ...]], ...]


def validate_request_stats(ispb: str, raw: RawRequestStats) -> RequestStats:
    """Checked counts (what ``policy_request_stats`` can store), or :class:`InvalidRequestStats`.

    Counts are non-negative and their sum fits a bigint, statuses are HTTP statuses, policy
    names are policy names (once each), the window is in range and not reversed.
    """
    try:
        start = check_instant(ispb, "window_start", raw.window_start)
        end = check_instant(ispb, "window_end", raw.window_end)
    except InvalidReading as error:
        raise InvalidRequestStats(ispb, f"GetRequestStats.{error.field}", error.problem) from None
    if end < start:
        raise InvalidRequestStats(ispb, "GetRequestStats.window", "ends before it starts")
    by_policy: dict[str, dict[int, int]] = {}
    for name, responses in raw.policies:
        where = f"GetRequestStats.{shown(name, 30)}"
        if not isinstance(name, str) or not POLICY_NAME_PATTERN.fullmatch(name):
            raise InvalidRequestStats(
                ispb, "GetRequestStats.policy", f"{shown(name)} is not a name"
            )
        if name in by_policy:
            raise InvalidRequestStats(ispb, where, "appears twice")
        counts: dict[int, int] = {}
        for status, count in responses:
            if not 100 <= status <= 599:
                raise InvalidRequestStats(ispb, where, f"{status} is not an HTTP status")
            if not 0 <= count <= BIGINT_MAX:
                raise InvalidRequestStats(
                    ispb, where, f"count {count} for {status} is outside 0..{BIGINT_MAX}"
                )
            counts[status] = counts.get(status, 0) + count
        if sum(counts.values()) > BIGINT_MAX:
            raise InvalidRequestStats(ispb, where, "the counts add up beyond a bigint")
        by_policy[name] = counts
    return RequestStats(window_start=start, window_end=end, by_policy=by_policy)
