"""The simulator's bucket arithmetic against hand-computed cases."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dict_ratelimit.simulator.bucket import EmptyInterval, RefillMode, TokenBucket


def bucket(level: float, mode: RefillMode = RefillMode.STEPPED, phase: float = 0.0) -> TokenBucket:
    """C 100, 10 tokens every 60 s."""
    return TokenBucket(100, 10, 60, mode, phase, level, 0.0)


def test_stepped_refill_adds_r_at_each_step_and_caps_at_capacity() -> None:
    b = bucket(5)
    b.advance(59.9)
    assert b.available == 5  # no step yet
    b.advance(60)
    assert b.available == 15
    b.advance(125)
    assert b.available == 25  # steps at 60 and 120
    b.advance(100_000)
    assert b.available == 100


def test_stepped_refill_respects_the_phase() -> None:
    b = bucket(0.5, phase=15)
    b.advance(14)
    assert b.level == 0.5
    b.advance(15)
    assert b.level == 10.5
    assert b.next_refill_after(15) == 75


def test_continuous_refill_flows_at_r_over_p_and_reports_whole_tokens() -> None:
    b = bucket(5, RefillMode.CONTINUOUS)
    b.advance(30)
    assert b.level == pytest.approx(10.0)
    b.advance(31)
    assert b.level == pytest.approx(10 + 1 / 6)
    assert b.available == 10
    b.advance(10_000)
    assert b.level == 100


def test_a_404_overdraws_the_bucket_and_the_next_request_gets_429() -> None:
    b = bucket(2)
    first = b.serve(ok=0, not_found=1, not_found_cost=3)
    assert (first.accepted_not_found, first.rejected) == (1, 0)
    assert b.available == -1  # negative balance, as DICT allows
    second = b.serve(ok=1)
    assert (second.accepted_ok, second.rejected) == (0, 1)
    assert b.available == -1  # a rejected request costs nothing
    assert b.intervals == [EmptyInterval(start=0.0, end=None, rejected=1)]
    b.advance(60)  # +10 → 9: usable again, the exhaustion episode ends at the step
    assert b.available == 9
    assert b.intervals == [EmptyInterval(start=0.0, end=60.0, rejected=1)]


def test_mixed_batch_is_served_until_the_bucket_is_empty() -> None:
    b = bucket(50)
    result = b.serve(ok=10, not_found=10, not_found_cost=3)  # average cost 2: all 20 fit
    assert (result.accepted_ok, result.accepted_not_found, result.rejected) == (10, 10, 0)
    assert b.available == 10  # 50 - 10·1 - 10·3
    # interleaved 200, 404, 200, ...: 10 → 9 → 6 → 5 → 2 → 1 → -2, then 429s
    result = b.serve(ok=10, not_found=10, not_found_cost=3)
    assert (result.accepted_ok, result.accepted_not_found, result.rejected) == (3, 3, 14)
    assert b.available == -2


def test_payment_credits_come_back_and_never_exceed_capacity() -> None:
    b = bucket(10)
    result = b.serve(ok=10, payment_share=0.5)
    assert result.credited == 5
    assert b.available == 5  # 10 - 10 + 5
    assert b.intervals == []  # the credits land in the same batch: never seen empty
    full = TokenBucket.full(100, 10, 60)
    full.serve(ok=2, payment_share=1.0, payment_credit=2)
    assert full.available == 100  # 98 + 4, capped


def test_fractional_payment_credits_accumulate_exactly() -> None:
    b = TokenBucket.full(1_000, 10, 60)
    credited = sum(b.serve(ok=1, payment_share=0.25).credited for _ in range(8))
    assert credited == 2
    assert b.available == 1_000 - 8 + 2


def test_shape_change_caps_the_balance() -> None:
    b = TokenBucket.full(50_000, 25_000, 60)
    b.set_shape(16_000, 8_000, 60)
    assert (b.available, b.capacity, b.refill_tokens) == (16_000, 16_000, 8_000)


def test_monitor_calls_consume_one_token_and_fail_when_empty() -> None:
    b = TokenBucket.full(2, 1, 10)
    assert b.consume() and b.consume()
    assert not b.consume()
    assert b.rejected_total == 1 and b.accepted_total == 2


def test_invalid_shapes_are_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1, 1)
    with pytest.raises(ValueError):
        TokenBucket(10, 1, 1, level=11)


@given(
    level=st.integers(min_value=-5, max_value=400),
    ok=st.integers(min_value=0, max_value=200),
    not_found=st.integers(min_value=0, max_value=200),
    cost=st.sampled_from([1, 3, 20]),
)
def test_batches_admit_exactly_what_one_by_one_service_would(
    level: int, ok: int, not_found: int, cost: int
) -> None:
    """Reference: serve the even interleave one request at a time."""
    b = TokenBucket(500, 10, 60, level=level, intervals=[EmptyInterval(0.0)] if level <= 0 else [])
    result = b.serve(ok, not_found, not_found_cost=cost)

    remaining, taken_ok, taken_nf = level, 0, 0
    total = ok + not_found
    for _ in range(total):
        if remaining <= 0:
            break
        served = taken_ok + taken_nf + 1
        if served * not_found // total > taken_nf:  # the even interleave's next is a 404
            taken_nf += 1
            remaining -= cost
        else:
            taken_ok += 1
            remaining -= 1
    assert (result.accepted_ok, result.accepted_not_found) == (taken_ok, taken_nf)
    assert b.level == remaining
    assert result.rejected == total - taken_ok - taken_nf
