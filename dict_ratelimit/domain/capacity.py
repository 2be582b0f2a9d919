"""Capacity planning: the weekly profile of demand, its trend, and when a bucket would throttle.

Pure functions on plain numbers and datetimes (no storage, no Dagster), so that the outlook
an analyst reads can be checked against a simulator with a known weekly cycle and growth.

The unit throughout is the *share of the refill*: demand per minute divided by the bucket's
refill per minute. Above 1 a bucket drains; how long it survives then depends on its capacity,
which is why the projection runs a bucket through the grown weekly profile instead of only
asking when the peak crosses 1.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from zoneinfo import ZoneInfo

from dict_ratelimit.domain.catalog import CATEGORY_BUCKETS, CATEGORY_DEPENDENT

HOURS_PER_WEEK = 168
WEEK = dt.timedelta(weeks=1)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
#: Fewer usable weeks than this and no trend is fitted (four points barely make a line).
MIN_WEEKS = 4
#: A week counts only if at least this share of its hours has a demand figure.
MIN_WEEK_COVERAGE = 0.5
#: How far ahead the projection looks for a first 429.
HORIZON = dt.timedelta(weeks=104)
#: "At risk" when the first 429 is expected within this long (a quarter).
AT_RISK_WITHIN = dt.timedelta(weeks=13)


def hour_of_week(local: dt.datetime) -> int:
    """0 for Monday 00:00-01:00, 167 for Sunday 23:00-24:00 (of a local wall-clock time)."""
    return local.weekday() * 24 + local.hour


def describe_hour(how: int) -> str:
    """``Mondays 10:00`` for hour of the week 10."""
    return f"{WEEKDAYS[how // 24]}s {how % 24:02d}:00"


@dataclass(frozen=True)
class Trend:
    """A Theil-Sen line through (weeks, log share): robust to a few odd weeks.

    ``slope`` is the log growth per week; ``slope_low``/``slope_high`` bound it at the
    requested confidence (Sen's rank interval); ``mad`` is the median absolute residual (log),
    about the typical relative scatter of a week around the line.
    """

    slope: float
    intercept: float
    slope_low: float
    slope_high: float
    mad: float
    points: int

    @property
    def growth_per_week(self) -> float:
        return math.expm1(self.slope)

    @property
    def growth_band(self) -> tuple[float, float]:
        return math.expm1(self.slope_low), math.expm1(self.slope_high)


def theil_sen(xs: Sequence[float], ys: Sequence[float], confidence: float = 0.95) -> Trend:
    """Median of the pairwise slopes, with Sen's (1968) distribution-free band."""
    n = len(xs)
    if n != len(ys) or n < 3:
        raise ValueError(f"a trend needs at least 3 paired points, got {n}")
    slopes = sorted(
        (ys[j] - ys[i]) / (xs[j] - xs[i])
        for i in range(n)
        for j in range(i + 1, n)
        if xs[j] != xs[i]
    )
    if not slopes:
        raise ValueError("a trend needs at least two distinct x values")
    slope = _median(slopes)
    intercept = _median([y - slope * x for x, y in zip(xs, ys, strict=True)])
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    spread = z * math.sqrt(n * (n - 1) * (2 * n + 5) / 18)
    count = len(slopes)
    # Sen: the lower limit is the M1-th smallest slope and the upper the (M2 + 1)-th, with
    # M1 = (N - C) / 2 and M2 = (N + C) / 2 (1-based; here 0-based indexes)
    low_rank = max(0, min(count - 1, round((count - spread) / 2) - 1))
    high_rank = max(0, min(count - 1, round((count + spread) / 2)))
    residuals = [abs(y - (intercept + slope * x)) for x, y in zip(xs, ys, strict=True)]
    return Trend(slope, intercept, slopes[low_rank], slopes[high_rank], _median(residuals), n)


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


@dataclass(frozen=True)
class WeeklyPeak:
    """The highest hourly demand share of one seven-day block, and when it happened."""

    block_start: dt.datetime
    share: float
    at: dt.datetime
    hours_seen: int

    @property
    def usable(self) -> bool:
        return self.share > 0 and self.hours_seen >= MIN_WEEK_COVERAGE * HOURS_PER_WEEK


@dataclass(frozen=True)
class Projection:
    """When demand, grown by a trend through the weekly profile, first exceeds the refill and
    first empties the bucket (``None``: not within the horizon)."""

    exceeds_refill_at: dt.datetime | None
    first_429_at: dt.datetime | None


def project(
    shape: Sequence[float],
    peak_share: float,
    slope: float,
    start: dt.datetime,
    *,
    capacity_minutes: float,
    time_zone: ZoneInfo,
    horizon: dt.timedelta = HORIZON,
) -> Projection:
    """Run a bucket hour by hour from ``start`` through the weekly ``shape``.

    ``shape`` holds 168 hourly demand shares (any scale; missing hours as 0). At time ``t`` an
    hour's demand is ``shape[h] / max(shape) * peak_share * exp(slope * weeks since start)``
    of the refill: the profile keeps its form and its peak follows the trend. The bucket
    starts full; ``capacity_minutes`` is its capacity in minutes of refill. Demand is taken as
    constant within an hour, so an hour above the refill drains ``(share - 1) * 60`` minutes of
    refill and the first 429 falls inside the hour where the bucket runs out.
    """
    if len(shape) != HOURS_PER_WEEK:
        raise ValueError(f"a weekly shape has {HOURS_PER_WEEK} hours, got {len(shape)}")
    top = max(shape)
    if top <= 0 or peak_share <= 0:
        return Projection(None, None)
    start = start.astimezone(dt.timezone.utc)  # real hours, whatever the zone's clock does
    # Until the peak share crosses 1 no hour drains and the bucket stays full: start there.
    if peak_share >= 1:
        crossing = 0.0
    elif slope <= 0:
        return Projection(None, None)
    else:
        crossing = -math.log(peak_share) / slope  # weeks
    if crossing * WEEK >= horizon:
        return Projection(None, None)
    end = start + horizon
    hour = (start + max(0.0, crossing - 1 / HOURS_PER_WEEK) * WEEK).astimezone(dt.timezone.utc)
    hour = hour.replace(minute=0, second=0, microsecond=0)
    if hour < start:
        hour += dt.timedelta(hours=1)
    level = capacity_minutes  # minutes of refill left in the bucket
    exceeds: dt.datetime | None = None
    week_started_full = True
    hours_walked = 0
    while hour < end:
        weeks = (hour - start) / WEEK
        how = hour_of_week(hour.astimezone(time_zone))
        share = shape[how] / top * peak_share * math.exp(slope * weeks)
        if share > 1 and exceeds is None:
            exceeds = hour
        drain = (share - 1) * 60  # minutes of refill lost over the hour (negative: regained)
        if drain > level:
            minutes = level / (share - 1)
            return Projection(exceeds, hour + dt.timedelta(minutes=minutes))
        level = min(capacity_minutes, level - drain)
        hour += dt.timedelta(hours=1)
        hours_walked += 1
        if hours_walked % HOURS_PER_WEEK == 0:
            # demand that does not grow repeats the same week: a week that starts and ends
            # with a full bucket will be survived for ever
            if slope <= 0 and week_started_full and level >= capacity_minutes:
                return Projection(exceeds, None)
            week_started_full = level >= capacity_minutes
    return Projection(exceeds, None)


def buffer_minutes(capacity: float, refill_tokens: float, refill_per_min: float) -> float:
    """Minutes of refill a bucket can lend to demand above its refill.

    DICT refills in steps (``refill_tokens`` every period) and a bucket never holds more than
    its capacity, so at the worst phase only ``capacity - refill_tokens`` carry over: a bucket
    whose capacity equals one period's refill (KEYS_CHECK) throttles within the first period
    whose demand exceeds the refill.
    """
    if refill_per_min <= 0:
        return 0.0
    return max(capacity - refill_tokens, 0.0) / refill_per_min


@dataclass(frozen=True)
class CategoryWhatIf:
    """The same demand against another DICT category's bucket (the reference tables)."""

    category: str
    refill_per_min: float
    capacity: float
    weekly_peak_share: float
    first_429_at: dt.datetime | None


@dataclass(frozen=True)
class OutlookInput:
    """What the outlook of one (participant, policy) is computed from."""

    ispb: str
    policy: str
    as_of: dt.datetime
    time_zone: ZoneInfo
    capacity: float
    refill_tokens: float
    refill_per_min: float
    category: str | None
    weekly_peaks: Sequence[WeeklyPeak]
    shape: Sequence[float]  # 168 typical hourly shares (missing as 0)
    throttled_429_30d: int | None = None
    minutes_exhausted_30d: float | None = None


@dataclass(frozen=True)
class Outlook:
    """The outlook of one (participant, policy): trend, dates, what-ifs and a recommendation."""

    status: str  # throttling | at_risk | growing | stable | insufficient_history
    weeks_used: int
    weekly_peak_share: float | None
    peak_hour_of_week: int | None
    trend: Trend | None
    projection: Projection
    earliest_429_at: dt.datetime | None
    latest_429_at: dt.datetime | None
    categories: tuple[CategoryWhatIf, ...] = field(default_factory=tuple)
    recommendation: str = ""

    def weeks_until(self, as_of: dt.datetime) -> float | None:
        first = self.projection.first_429_at
        return None if first is None else round((first - as_of) / WEEK, 2)


def weekly_peaks(
    hours: Sequence[tuple[dt.datetime, float]], end: dt.datetime, weeks: int
) -> list[WeeklyPeak]:
    """The peak of each seven-day block ending at ``end`` (oldest first).

    ``hours`` are (start of the hour, demand share) pairs; hours without a figure are absent,
    never zero, and a block with too few of them is marked unusable.
    """
    blocks: list[list[tuple[dt.datetime, float]]] = [[] for _ in range(weeks)]
    # blocks of real elapsed time: aware arithmetic in a local zone is wall-clock arithmetic,
    # and 13 "weeks" across a clock change are an hour longer or shorter than 13 x 168 hours
    end = end.astimezone(dt.timezone.utc)
    first = end - weeks * WEEK
    for at, share in hours:
        if first <= at < end and not math.isnan(share):
            blocks[min(int((at - first) / WEEK), weeks - 1)].append((at, share))
    peaks = []
    for index, block in enumerate(blocks):
        start = first + index * WEEK
        if block:
            at, share = max(block, key=lambda pair: pair[1])
            peaks.append(WeeklyPeak(start, share, at, len(block)))
        else:
            peaks.append(WeeklyPeak(start, 0.0, start, 0))
    return peaks


def outlook(data: OutlookInput) -> Outlook:
    """Fit the weekly peaks, project the bucket forward, try the other categories, and say it."""
    usable = [peak for peak in data.weekly_peaks if peak.usable]
    throttled = bool(data.throttled_429_30d) or bool(data.minutes_exhausted_30d)
    capacity_minutes = buffer_minutes(data.capacity, data.refill_tokens, data.refill_per_min)
    peak_how = _peak_hour(data.shape)
    if len(usable) < MIN_WEEKS or peak_how is None:
        result = Outlook(
            "throttling" if throttled else "insufficient_history",
            len(usable),
            usable[-1].share if usable else None,
            peak_how,
            None,
            Projection(None, None),
            None,
            None,
        )
        return _with_recommendation(data, result)
    xs = [(peak.at - data.as_of) / WEEK for peak in usable]
    ys = [math.log(peak.share) for peak in usable]
    trend = theil_sen(xs, ys)
    peak_now = math.exp(trend.intercept)  # the line's value at as_of

    def run(slope: float, peak_share: float, minutes: float) -> Projection:
        return project(
            data.shape,
            peak_share,
            slope,
            data.as_of,
            capacity_minutes=minutes,
            time_zone=data.time_zone,
        )

    projection = run(trend.slope, peak_now, capacity_minutes)
    earliest = run(trend.slope_high, peak_now, capacity_minutes).first_429_at
    latest = run(trend.slope_low, peak_now, capacity_minutes).first_429_at
    categories: tuple[CategoryWhatIf, ...] = ()
    if data.policy in CATEGORY_DEPENDENT:
        demand_peak = peak_now * data.refill_per_min
        options = []
        for name, spec in CATEGORY_BUCKETS.items():
            refill = spec.refill_per_second * 60
            share = demand_peak / refill
            minutes = buffer_minutes(spec.capacity, spec.refill_tokens, refill)
            first_429 = run(trend.slope, share, minutes).first_429_at
            options.append(CategoryWhatIf(name, refill, spec.capacity, share, first_429))
        categories = tuple(options)
    first = projection.first_429_at
    if throttled or (first is not None and first - data.as_of <= WEEK):
        status = "throttling"
    elif first is not None and first - data.as_of <= AT_RISK_WITHIN:
        status = "at_risk"
    elif trend.slope_low > 0 or first is not None:
        status = "growing"
    else:
        status = "stable"
    result = Outlook(
        status,
        len(usable),
        peak_now,
        peak_how,
        trend,
        projection,
        earliest,
        latest,
        categories,
    )
    return _with_recommendation(data, result)


def _peak_hour(shape: Sequence[float]) -> int | None:
    top = max(shape) if shape else 0.0
    return None if top <= 0 else list(shape).index(top)


def _day(at: dt.datetime | None, time_zone: ZoneInfo) -> str:
    return "—" if at is None else at.astimezone(time_zone).strftime("%Y-%m-%d %H:%M")


def _with_recommendation(data: OutlookInput, result: Outlook) -> Outlook:
    return Outlook(**{**result.__dict__, "recommendation": recommendation(data, result)})


def recommendation(data: OutlookInput, result: Outlook) -> str:
    """One paragraph an analyst can paste: where the peak is, where the trend leads, what to do."""
    policy = data.policy
    if result.trend is None or result.weekly_peak_share is None or result.peak_hour_of_week is None:
        said = (
            f"{policy}: only {result.weeks_used} usable week(s) of history; a trend needs "
            f"{MIN_WEEKS}."
        )
        if result.status == "throttling":
            said += (
                f" It was throttled in the last 30 days ({data.throttled_429_30d or 0} 429s, "
                f"{data.minutes_exhausted_30d or 0:.0f} min exhausted): reduce or spread demand."
            )
        return said
    trend = result.trend
    low, high = trend.growth_band
    text = (
        f"{policy} peaks at {result.weekly_peak_share:.0%} of its refill on "
        f"{describe_hour(result.peak_hour_of_week)} ({data.time_zone.key}); demand grows "
        f"{trend.growth_per_week:+.1%}/week (95 % band {low:+.1%} to {high:+.1%}, "
        f"{result.weeks_used} weeks, typical scatter {math.expm1(trend.mad):.0%})."
    )
    first = result.projection.first_429_at
    if first is not None:
        weeks = (first - data.as_of) / WEEK
        text += (
            f" At that rate it throttles in about {max(weeks, 0):.1f} weeks, around "
            f"{_day(first, data.time_zone)} (between {_day(result.earliest_429_at, data.time_zone)}"
            f" and {_day(result.latest_429_at, data.time_zone)})."
        )
    else:
        text += " At that rate it does not throttle within two years."
    if data.throttled_429_30d or data.minutes_exhausted_30d:
        text += (
            f" It was throttled in the last 30 days ({data.throttled_429_30d or 0} 429s, "
            f"{data.minutes_exhausted_30d or 0:.0f} min exhausted)."
        )
    advice = {
        "throttling": " Act now: spread the peak, cut retries, or ask BACEN for more capacity.",
        "at_risk": " Plan within the quarter: spread the peak hour or prepare a capacity request.",
        "growing": " Not at risk this quarter: review monthly.",
        "stable": " No action needed.",
    }
    text += advice.get(result.status, "")
    if result.categories:
        text += " " + _category_advice(data, result)
    return text


def _category_advice(data: OutlookInput, result: Outlook) -> str:
    current = data.category
    safe = [c for c in result.categories if c.first_429_at is None and c.weekly_peak_share <= 1]
    parts = []
    for option in result.categories:
        if option.category == current:
            continue
        if option.first_429_at is None:
            fate = "no 429 within two years"
        else:
            fate = f"first 429 around {_day(option.first_429_at, data.time_zone)}"
        share = option.weekly_peak_share
        peak = f"{share:.0%}" if share < 10 else f"{share:,.0f}x the refill"
        parts.append(f"{option.category}: {option.refill_per_min:,.0f}/min, peak {peak}, {fate}")
    lowest_safe = max(safe, key=lambda c: c.category).category if safe else None
    summary = (
        f"Lowest category that would hold this demand: {lowest_safe}."
        if lowest_safe
        else "No category holds this demand for two years."
    )
    return (
        f"Category what-if (DICT's reference tables, category {current or '?'} today): "
        + "; ".join(parts)
        + f". {summary}"
    )


def category_rows(result: Outlook) -> list[Mapping[str, object]]:
    """The what-ifs as JSON-ready rows."""
    return [
        {
            "category": c.category,
            "refill_per_min": c.refill_per_min,
            "capacity": c.capacity,
            "weekly_peak_share": round(c.weekly_peak_share, 4),
            "first_429_at": None if c.first_429_at is None else c.first_429_at.isoformat(),
        }
        for c in result.categories
    ]
