"""The DICT sandbox: participants with real token buckets, driven by a scenario and a clock.

Every call first replays the scenario's traffic up to the clock's now, in steps of ``step``
seconds (1 s by default), so the state is always exact for "now" whether the clock is real,
accelerated or manual. Buckets without traffic are advanced lazily in closed form.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import uuid
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from dict_ratelimit.domain.catalog import (
    CATEGORY_DEPENDENT,
    LISTED_POLICY_NAMES,
    POLICIES_BY_NAME,
    bucket_for,
)
from dict_ratelimit.domain.readings import RawPolicy
from dict_ratelimit.simulator.bucket import RefillMode, TokenBucket
from dict_ratelimit.simulator.clock import Clock
from dict_ratelimit.simulator.scenarios import Scenario, Traffic

#: The Bridge's response counts are kept in 10-second slots for two hours: fine enough for a
#: watch read every 15 s, small enough for a thousand simulated participants.
STATS_SLOT_SECONDS = 10
STATS_RETENTION_SLOTS = 2 * 3600 // STATS_SLOT_SECONDS


class UnknownParticipant(LookupError):
    """The simulator does not serve this ISPB (DICT would answer 403)."""


class UnknownPolicy(LookupError):
    """No such policy (DICT would answer 404)."""


class MonitorBudgetExhausted(RuntimeError):
    """The caller's own POLICIES_LIST / POLICIES_READ bucket is empty (DICT 429)."""

    def __init__(self, policy: str, retry_after: int) -> None:
        self.policy = policy
        self.retry_after = retry_after
        super().__init__(f"{policy} bucket empty; retry after {retry_after}s")


@dataclass(frozen=True)
class Listing:
    """A ListPolicies/GetPolicy answer."""

    response_time: dt.datetime
    correlation_id: str
    category: str
    policies: tuple[RawPolicy, ...]


@dataclass
class _Participant:
    ispb: str
    category: str
    buckets: dict[str, TokenBucket]
    carries: dict[str, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0, 0.0]))
    # policy -> deque of (10-second slot index, {http status: count})
    stats: dict[str, deque[tuple[int, dict[int, int]]]] = field(
        default_factory=lambda: defaultdict(deque)
    )


class Simulator:
    """Thread-safe DICT sandbox for a set of participants."""

    def __init__(
        self,
        participants: dict[str, str],
        scenario: Scenario,
        clock: Clock,
        *,
        refill_mode: RefillMode = RefillMode.STEPPED,
        phase: float = 0.0,
        step: float = 1.0,
    ) -> None:
        if not participants:
            raise ValueError("the simulator needs at least one participant")
        if step <= 0:
            raise ValueError("step must be > 0")
        self.scenario = scenario
        self.clock = clock
        self.refill_mode = refill_mode
        self.phase = phase
        self.step = step
        self.epoch = clock.now()
        self._t = 0.0
        self._lock = threading.RLock()
        self._events_done: set[int] = set()
        self._rate_cache: dict[
            tuple[str, str], tuple[float, float, tuple[float, float, float]]
        ] = {}
        self._traffic_by_policy: dict[str, list[Traffic]] = defaultdict(list)
        for entry in scenario.traffic:
            self._traffic_by_policy[entry.policy].append(entry)
        self.participants = {
            ispb: self._new_participant(ispb, category) for ispb, category in participants.items()
        }

    # -- construction ---------------------------------------------------------------------

    def _new_participant(self, ispb: str, category: str) -> _Participant:
        buckets = {}
        for name in LISTED_POLICY_NAMES:
            spec = bucket_for(name, category)
            buckets[name] = TokenBucket.full(
                spec.capacity,
                spec.refill_tokens,
                spec.refill_period_sec,
                self.refill_mode,
                self.phase,
                self._t,
            )
        return _Participant(ispb, category, buckets)

    # -- time -----------------------------------------------------------------------------

    def now(self) -> dt.datetime:
        """The clock's now, after replaying traffic up to it."""
        with self._lock:
            now = self.clock.now()
            self._sync((now - self.epoch).total_seconds())
            return now

    def seconds_to_datetime(self, seconds: float) -> dt.datetime:
        return self.epoch + dt.timedelta(seconds=seconds)

    def _sync(self, target: float) -> None:
        while self._t < target - 1e-9:
            next_t = min(self._t + self.step, target)
            self._apply_events(self._t)
            for participant in self.participants.values():
                self._serve_traffic(participant, self._t, next_t - self._t)
            self._t = next_t
        self._apply_events(self._t)

    def _apply_events(self, t: float) -> None:
        for index, event in enumerate(self.scenario.events):
            if index in self._events_done or event.at_s > t + 1e-9:
                continue
            self._events_done.add(index)
            for participant in self.participants.values():
                if event.participant in (None, participant.ispb):
                    self._change_category(participant, event.category)

    def _rates(
        self, participant: _Participant, policy: str, position: float, elapsed: float = 0.0
    ) -> tuple[float, float, float]:
        """(ok/s, 404/s, share of ok followed by a payment), cached until the next breakpoint
        (and, for growing traffic, until the end of the hour)."""
        key = (participant.ispb, policy)
        cached = self._rate_cache.get(key)
        if cached is not None and cached[0] <= position < cached[1]:
            return cached[2]
        bucket = participant.buckets[policy]
        refill_per_minute = bucket.refill_tokens * 60 / bucket.refill_period
        ok = not_found = paying = 0.0
        valid_from, valid_to = 0.0, math.inf
        for entry in self._traffic_by_policy[policy]:
            if entry.participant not in (None, participant.ispb):
                continue
            if entry.from_s <= position < entry.to_s:
                per_second = entry.requests_per_minute(refill_per_minute) / 60
                if entry.growth_per_week:
                    per_second *= entry.growth_factor(elapsed)
                    into_hour = elapsed % 3600
                    valid_from = max(valid_from, position - into_hour)
                    valid_to = min(valid_to, position - into_hour + 3600)
                not_found += per_second * entry.not_found_share
                ok_part = per_second * (1 - entry.not_found_share)
                ok += ok_part
                paying += ok_part * entry.payment_share
                valid_from, valid_to = max(valid_from, entry.from_s), min(valid_to, entry.to_s)
            elif entry.from_s > position:
                valid_to = min(valid_to, entry.from_s)
            else:
                valid_from = max(valid_from, entry.to_s)
        rates = (ok, not_found, paying / ok if ok else 0.0)
        self._rate_cache[key] = (valid_from, valid_to, rates)
        return rates

    def _serve_traffic(self, participant: _Participant, t: float, duration: float) -> None:
        position = self.scenario.timeline_seconds(t)
        for policy in self._traffic_by_policy:
            bucket = participant.buckets.get(policy)
            if bucket is None:  # per-user policies are not simulated per participant
                continue
            ok_rate, nf_rate, payment_share = self._rates(participant, policy, position, t)
            if ok_rate == 0 and nf_rate == 0:
                continue
            carry = participant.carries[policy]
            ok_exact, nf_exact = ok_rate * duration + carry[0], nf_rate * duration + carry[1]
            ok_n, nf_n = math.floor(ok_exact), math.floor(nf_exact)
            carry[0], carry[1] = ok_exact - ok_n, nf_exact - nf_n
            if ok_n == 0 and nf_n == 0:
                continue
            spec = POLICIES_BY_NAME[policy]
            bucket.advance(t)
            result = bucket.serve(
                ok_n,
                nf_n,
                not_found_cost=spec.not_found_cost,
                payment_share=payment_share,
                payment_credit=max(spec.payment_credit, 1),
            )
            self._count(participant, policy, t, 200, result.accepted_ok)
            self._count(participant, policy, t, 404, result.accepted_not_found)
            self._count(participant, policy, t, 429, result.rejected)

    def _count(self, participant: _Participant, policy: str, t: float, status: int, n: int) -> None:
        if n <= 0:
            return
        slot = int(t // STATS_SLOT_SECONDS)
        series = participant.stats[policy]
        if not series or series[-1][0] != slot:
            series.append((slot, defaultdict(int)))
            while series and series[0][0] < slot - STATS_RETENTION_SLOTS:
                series.popleft()
        series[-1][1][status] += n

    def _change_category(self, participant: _Participant, category: str) -> None:
        participant.category = category
        self._rate_cache.clear()  # demand given as a refill factor follows the new refill
        for name in CATEGORY_DEPENDENT:
            bucket = participant.buckets.get(name)
            if bucket is not None:
                bucket.advance(self._t)
                spec = bucket_for(name, category)
                bucket.set_shape(spec.capacity, spec.refill_tokens, spec.refill_period_sec)

    # -- the Bridge contract --------------------------------------------------------------

    def _participant(self, ispb: str) -> _Participant:
        try:
            return self.participants[ispb]
        except KeyError:
            raise UnknownParticipant(f"participant {ispb} is not served by this DICT") from None

    def _charge(self, participant: _Participant, policy: str) -> None:
        bucket = participant.buckets[policy]
        bucket.advance(self._t)
        if not bucket.consume(1):
            if bucket.mode is RefillMode.STEPPED:
                wait = bucket.next_refill_after(self._t) - self._t
            else:
                wait = (1 - bucket.level) / bucket.refill_per_second
            raise MonitorBudgetExhausted(policy, max(1, math.ceil(wait)))

    def _state(self, participant: _Participant, names: Iterable[str]) -> tuple[RawPolicy, ...]:
        states = []
        for name in names:
            bucket = participant.buckets[name]
            bucket.advance(self._t)
            states.append(
                RawPolicy(
                    name,
                    bucket.available,
                    bucket.capacity,
                    bucket.refill_tokens,
                    int(bucket.refill_period),
                )
            )
        return tuple(states)

    def list_policies(self, ispb: str) -> Listing:
        """GET /policies/: every listed policy; costs one POLICIES_LIST token."""
        with self._lock:
            now = self.now()
            participant = self._participant(ispb)
            self._charge(participant, "POLICIES_LIST")
            return Listing(
                now,
                uuid.uuid4().hex,
                participant.category,
                self._state(participant, LISTED_POLICY_NAMES),
            )

    def get_policy(self, ispb: str, policy: str) -> Listing:
        """GET /policies/{policy}; costs one POLICIES_READ token."""
        with self._lock:
            now = self.now()
            participant = self._participant(ispb)
            if policy not in participant.buckets:
                raise UnknownPolicy(f"unknown policy {policy}")
            self._charge(participant, "POLICIES_READ")
            return Listing(
                now, uuid.uuid4().hex, participant.category, self._state(participant, [policy])
            )

    def request_stats(
        self, ispb: str, window: dt.timedelta
    ) -> tuple[dt.datetime, dt.datetime, dict[str, dict[int, int]]]:
        """(window start, end, {policy: {http status: count}}) of the 10-second slots that
        *ended* within the last ``window``: consecutive windows never count a slot twice, and a
        slot still filling is reported by the next window."""
        with self._lock:
            now = self.now()
            participant = self._participant(ispb)
            start, end = self._t - window.total_seconds(), self._t
            totals: dict[str, dict[int, int]] = {}
            for policy, series in participant.stats.items():
                counts: dict[int, int] = defaultdict(int)
                for slot, by_status in reversed(series):  # newest first: stop at the window
                    slot_end = (slot + 1) * STATS_SLOT_SECONDS
                    if slot_end <= start:
                        break
                    if slot_end <= end:
                        for status, n in by_status.items():
                            counts[status] += n
                if counts:
                    totals[policy] = dict(counts)
            return now - window, now, totals

    # -- control --------------------------------------------------------------------------

    def set_category(self, ispb: str, category: str) -> None:
        with self._lock:
            self.now()
            self._change_category(self._participant(ispb), category)

    def buckets(self, ispb: str) -> dict[str, TokenBucket]:
        """The live buckets of a participant (synced to now), for ground truth and tests."""
        with self._lock:
            self.now()
            participant = self._participant(ispb)
            for bucket in participant.buckets.values():
                bucket.advance(self._t)
            return participant.buckets
