"""Property: whatever one participant's Bridge answer is, the pass succeeds, the good
participant's readings are stored and computed, and the bad one is either stored (its answer
was valid) or named. Arbitrary protobuf answers over a real gRPC server, into real Postgres.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from dict_ratelimit.bridge.client import BridgeClient
from dict_ratelimit.bridge.v1 import rate_limit_pb2 as pb
from dict_ratelimit.clock import FixedClock
from dict_ratelimit.domain.catalog import KNOWN_POLICY_NAMES
from dict_ratelimit.pipeline.tick import PipelineSettings, run_tick
from dict_ratelimit_tests.hostile_bridge import RunningHostileBridge, hostile_bridge
from dict_ratelimit_tests.simulation import START

pytestmark = [pytest.mark.e2e, pytest.mark.timebased]

GOOD, BAD = "12345678", "66666666"
INT64 = st.integers(-(2**63), 2**63 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
#: text protobuf can carry (valid UTF-8: no lone surrogates), NUL and newlines included
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
NAMES = sorted(KNOWN_POLICY_NAMES)

# Mostly plausible answers (so that many get through validation and reach storage), each
# field made hostile now and then: absent, out of every range, NUL bytes, impossible times.
HOSTILE = {
    "name": TEXT,
    "available_tokens": st.one_of(st.none(), INT64),
    "capacity": st.one_of(st.none(), INT64),
    "refill_tokens": st.one_of(st.none(), INT64),
    "refill_period_sec": st.one_of(st.none(), INT64),
}


@st.composite
def policy(draw: st.DrawFn) -> dict:
    capacity = draw(st.integers(1, 10**7))
    item = {
        "name": draw(st.sampled_from(NAMES)),
        "capacity": capacity,
        "available_tokens": draw(st.integers(-20, capacity)),
        "refill_tokens": draw(st.integers(1, 10**6)),
        "refill_period_sec": draw(st.integers(1, 86_400)),
    }
    if draw(st.sampled_from([False] * 9 + [True])):
        field = draw(st.sampled_from(sorted(item)))
        item[field] = draw(HOSTILE[field])
    return item


def sometimes(plausible: st.SearchStrategy, hostile: st.SearchStrategy) -> st.SearchStrategy:
    """The plausible value about five times in six, a hostile one otherwise."""
    return st.sampled_from([False] * 5 + [True]).flatmap(
        lambda hostile_now: hostile if hostile_now else plausible
    )


# seconds relative to the bridge's now, and nanos
near = st.tuples(st.integers(-300, 300), st.integers(0, 999_999_999))
anywhere = st.tuples(st.one_of(st.integers(-(10**10), 10**10), INT64), st.one_of(st.just(0), INT32))
timestamp = sometimes(near, st.one_of(st.none(), anywhere))
listing = st.fixed_dictionaries(
    {
        "response_time": timestamp,
        "correlation_id": sometimes(st.just("ab" * 16), TEXT),
        "category": sometimes(st.sampled_from("ABCDEFGH"), TEXT),
        "policies": sometimes(
            st.lists(policy(), min_size=1, max_size=5, unique_by=lambda p: p["name"]),
            st.lists(policy(), max_size=5),
        ),
    }
)
counts = sometimes(st.integers(0, 40_000), INT64)
stats = st.fixed_dictionaries(
    {
        "window_start": sometimes(st.tuples(st.just(-300), st.just(0)), timestamp),
        "window_end": sometimes(st.tuples(st.just(0), st.just(0)), timestamp),
        "policies": st.lists(
            st.tuples(
                sometimes(st.sampled_from(NAMES), TEXT),
                st.lists(
                    st.tuples(sometimes(st.sampled_from([200, 404, 429]), INT32), counts),
                    max_size=4,
                ),
            ),
            max_size=4,
        ),
    }
)


def _set_time(message, value, now: dt.datetime) -> None:  # type: ignore[no-untyped-def]
    if value is None:
        return
    offset, nanos = value
    message.seconds = max(-(2**63), min(2**63 - 1, int(now.timestamp()) + offset))
    message.nanos = nanos


def _listing(drawn: dict, now: dt.datetime):  # type: ignore[no-untyped-def]
    def rewrite(_original: pb.ListPoliciesResponse) -> pb.ListPoliciesResponse:
        response = pb.ListPoliciesResponse(
            correlation_id=drawn["correlation_id"], category=drawn["category"]
        )
        if drawn["response_time"] is not None:
            response.response_time.SetInParent()
            _set_time(response.response_time, drawn["response_time"], now)
        for item in drawn["policies"]:
            added = response.policies.add(name=item["name"])
            for field in ("available_tokens", "capacity", "refill_tokens", "refill_period_sec"):
                if item[field] is not None:
                    setattr(added, field, item[field])
        return response

    return rewrite


def _stats(drawn: dict, now: dt.datetime):  # type: ignore[no-untyped-def]
    def rewrite(_original: pb.GetRequestStatsResponse) -> pb.GetRequestStatsResponse:
        response = pb.GetRequestStatsResponse()
        for name in ("window_start", "window_end"):
            if drawn[name] is not None:
                getattr(response, name).SetInParent()
                _set_time(getattr(response, name), drawn[name], now)
        for name, entries in drawn["policies"]:
            item = response.policies.add(policy=name)
            for status, count in entries:
                item.responses.add(http_status=status, count=count)
        return response

    return rewrite


@pytest.fixture(scope="module")
def bridge() -> RunningHostileBridge:
    with hostile_bridge({GOOD: "A", BAD: "A"}, START, "scan-attack") as running:
        yield running


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(answer=listing, counted=stats, skew_check=st.booleans())
def test_any_answer_of_one_participant_leaves_the_others_whole(
    bridge: RunningHostileBridge, engine: Engine, answer: dict, counted: dict, skew_check: bool
) -> None:
    now = bridge.advance(60)
    bridge.bridge.listings[BAD] = _listing(answer, now)
    bridge.bridge.stats[BAD] = _stats(counted, now)
    with engine.connect() as connection:
        before = connection.execute(
            sa.text("SELECT count(*) FROM dict_ratelimit.policy_snapshot WHERE ispb = :i"),
            {"i": GOOD},
        ).scalar_one()
    settings_ = PipelineSettings(
        known_policies=KNOWN_POLICY_NAMES,
        stats_window=dt.timedelta(minutes=5),
        max_skew=dt.timedelta(minutes=10) if skew_check else None,
    )
    with BridgeClient(bridge.target, deadline_seconds=5) as client:
        report = run_tick(engine, client, [GOOD, BAD], settings_, FixedClock(now))

    assert GOOD not in report.poll.failures
    assert len(report.poll.readings[GOOD]) == 28
    if BAD in report.poll.failures:
        failure = report.poll.failures[BAD]
        assert failure.error_class == "invalid_reading", failure.message
        assert f"participant {BAD}" in failure.message and failure.field
        event(f"rejected: {failure.field.split('.')[-1]}")
    else:
        event("stored")
        event("request stats " + ("stored" if BAD in report.poll.request_stats else "unknown"))
        assert len(report.poll.readings[BAD]) == len(answer["policies"]) > 0
    with engine.connect() as connection:
        after = connection.execute(
            sa.text(
                "SELECT count(*) FROM dict_ratelimit.policy_snapshot s "
                "JOIN dict_ratelimit.threshold_evaluation e USING (ispb, policy, response_time) "
                "WHERE s.ispb = :i"
            ),
            {"i": GOOD},
        ).scalar_one()
    assert after == before + 28  # stored, computed and evaluated
    assert report.derive.backlog_left == 0
