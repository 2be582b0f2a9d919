"""One DICT token bucket, exactly: stepped or continuous refill, cap, overdraft, ground truth.

Time is simulated seconds (float) since the simulator's epoch. Requests are served in batches
(every request of a batch at the same instant, interleaved evenly between 200s and 404s), which
keeps an hour of category-A traffic (25,000 requests a minute) replayable in well under a
second while staying exact at the batch granularity.

Rules (``shared/reference/dict-api.md``):
- a request is accepted while the bucket holds more than 0 tokens, and then costs its full
  price even if that drives the balance negative (a 404 costs 3 on the participant anti-scan
  bucket, 20 on the per-user ones);
- a request arriving at 0 or below is rejected with 429 and costs nothing;
- a payment order sent after a successful lookup credits tokens back (capped at capacity);
- stepped refill adds R every P seconds at a fixed phase, continuous refill adds R/P per second;
  both never exceed the capacity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum


class RefillMode(str, Enum):
    """How refill is credited (the DICT manual does not say which; we build for both)."""

    STEPPED = "stepped"
    CONTINUOUS = "continuous"


@dataclass
class EmptyInterval:
    """A stretch of time during which the bucket held 0 tokens or fewer."""

    start: float
    end: float | None = None  # None while still empty
    rejected: int = 0


@dataclass
class ServeResult:
    """What one batch of requests did."""

    accepted_ok: int
    accepted_not_found: int
    rejected: int
    credited: int


@dataclass
class TokenBucket:
    """A bucket's exact evolution plus the ground truth of its exhaustion episodes."""

    capacity: int
    refill_tokens: int
    refill_period: float
    mode: RefillMode = RefillMode.STEPPED
    phase: float = 0.0  # stepped: refill instants are phase + k * refill_period
    level: float = 0.0
    time: float = 0.0
    accepted_total: int = 0
    rejected_total: int = 0
    intervals: list[EmptyInterval] = field(default_factory=list)
    _credit_carry: float = 0.0

    def __post_init__(self) -> None:
        if self.capacity <= 0 or self.refill_tokens <= 0 or self.refill_period <= 0:
            raise ValueError("capacity, refill tokens and refill period must be > 0")
        if self.level > self.capacity:
            raise ValueError("level above capacity")
        if self.level <= 0 and not self.intervals:
            self.intervals.append(EmptyInterval(start=self.time))

    @classmethod
    def full(
        cls,
        capacity: int,
        refill_tokens: int,
        refill_period: float,
        mode: RefillMode = RefillMode.STEPPED,
        phase: float = 0.0,
        time: float = 0.0,
    ) -> TokenBucket:
        """A full bucket at ``time``."""
        return cls(capacity, refill_tokens, refill_period, mode, phase, float(capacity), time)

    # -- observation ----------------------------------------------------------------------

    @property
    def available(self) -> int:
        """Tokens as DICT reports them: an integer (continuous refill rounds down)."""
        return math.floor(self.level + 1e-9)

    @property
    def refill_per_second(self) -> float:
        return self.refill_tokens / self.refill_period

    @property
    def is_empty(self) -> bool:
        return self.level <= 0

    def _step_index(self, time: float) -> int:
        """Index of the last refill step at or before ``time`` (one rule for every caller, so
        float drift can neither skip a step nor apply it twice)."""
        return math.floor((time - self.phase) / self.refill_period + 1e-9)

    def next_refill_after(self, time: float) -> float:
        """Stepped mode: the first refill instant strictly after ``time``."""
        return self.phase + (self._step_index(time) + 1) * self.refill_period

    # -- evolution ------------------------------------------------------------------------

    def advance(self, time: float) -> None:
        """Apply the refill between the bucket's time and ``time`` (never backwards)."""
        if time <= self.time:
            return
        if self.mode is RefillMode.CONTINUOUS:
            self._advance_continuous(time)
        else:
            self._advance_stepped(time)
        self.time = time

    def _advance_continuous(self, time: float) -> None:
        if self.level >= self.capacity:
            return
        before = self.level
        self.level = min(float(self.capacity), before + self.refill_per_second * (time - self.time))
        if before <= 0 < self.level:
            self._close_interval(self.time + (-before) / self.refill_per_second)

    def _advance_stepped(self, time: float) -> None:
        index, last = self._step_index(self.time) + 1, self._step_index(time)
        while index <= last and self.level < self.capacity:
            before = self.level
            self.level = min(float(self.capacity), before + self.refill_tokens)
            if before <= 0 < self.level:
                self._close_interval(self.phase + index * self.refill_period)
            index += 1

    def set_shape(self, capacity: int, refill_tokens: int, refill_period: float) -> None:
        """Change capacity/refill (a category change); the balance is capped to the new size."""
        self.capacity, self.refill_tokens, self.refill_period = (
            capacity,
            refill_tokens,
            refill_period,
        )
        self.level = min(self.level, float(capacity))

    def serve(
        self,
        ok: int,
        not_found: int = 0,
        not_found_cost: int = 1,
        payment_share: float = 0.0,
        payment_credit: int = 1,
    ) -> ServeResult:
        """Serve a batch of ``ok`` lookups answered 200 and ``not_found`` answered 404.

        Requests are taken in an even interleave of the two kinds; every one arriving while
        the bucket holds more than zero is accepted at its full cost, the rest get 429.
        """
        total = ok + not_found
        if total <= 0:
            return ServeResult(0, 0, 0, 0)
        accepted_ok, accepted_nf = self._admit(ok, not_found, not_found_cost)
        accepted = accepted_ok + accepted_nf
        self.level -= accepted_ok + accepted_nf * not_found_cost
        rejected = total - accepted
        credited = 0
        if payment_share > 0 and accepted_ok > 0:
            exact = accepted_ok * payment_share * payment_credit + self._credit_carry
            credited = math.floor(exact)
            self._credit_carry = exact - credited
            self.level = min(float(self.capacity), self.level + credited)
        self.accepted_total += accepted
        self.rejected_total += rejected
        if self.level <= 0 and not self._open_interval():
            self.intervals.append(EmptyInterval(start=self.time))
        if rejected:
            interval = self._open_interval()
            if interval is None:  # rejected at exactly the instant it refilled: count anyway
                interval = EmptyInterval(start=self.time, end=self.time)
                self.intervals.append(interval)
            interval.rejected += rejected
        if self.level > 0 and self._open_interval():
            self._close_interval(self.time)  # a payment credit lifted it back above zero
        return ServeResult(accepted_ok, accepted_nf, rejected, credited)

    def _admit(self, ok: int, not_found: int, not_found_cost: int) -> tuple[int, int]:
        """How many of each kind are accepted, as if served one by one in an even interleave.

        After ``k`` requests of the interleave, ``k * not_found // total`` were 404s. The
        balance after ``k`` requests only decreases with ``k``, so the accepted count (every
        request arriving while the bucket still held more than zero) is found by bisection.
        """
        total = ok + not_found
        if self.level <= 0:
            return 0, 0

        def level_after(k: int) -> float:
            nf = k * not_found // total
            return self.level - (k - nf) - nf * not_found_cost

        if level_after(total) > 0:
            accepted = total
        else:  # smallest k whose balance is <= 0: the k-th request was still accepted
            low, high = 1, total
            while low < high:
                middle = (low + high) // 2
                if level_after(middle) <= 0:
                    high = middle
                else:
                    low = middle + 1
            accepted = low
        accepted_nf = accepted * not_found // total
        return accepted - accepted_nf, accepted_nf

    def consume(self, cost: int = 1) -> bool:
        """One request of ``cost`` (the monitor's own POLICIES_* calls); False = 429."""
        result = self.serve(
            ok=1 if cost == 1 else 0, not_found=0 if cost == 1 else 1, not_found_cost=cost
        )
        return result.rejected == 0

    # -- ground truth ---------------------------------------------------------------------

    def _open_interval(self) -> EmptyInterval | None:
        if self.intervals and self.intervals[-1].end is None:
            return self.intervals[-1]
        return None

    def _close_interval(self, at: float) -> None:
        interval = self._open_interval()
        if interval is not None:
            interval.end = at
