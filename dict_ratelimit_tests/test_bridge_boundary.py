"""One participant's malformed answer never blinds the others.

A Bridge on loopback answers like the simulator, except for participant 66666666, whose
answer is rewritten into each of the shapes a probe found to fail the whole sweep before
(values beyond a column, a trailing newline, NUL bytes, impossible or far-away timestamps,
absent numbers, hostile request counts). Each time the good participant is stored, computed
and alerted on, and the bad one is named with its field.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from dict_ratelimit.bridge.client import BridgeClient
from dict_ratelimit.bridge.v1 import rate_limit_pb2 as pb
from dict_ratelimit.clock import FixedClock
from dict_ratelimit.domain.catalog import KNOWN_POLICY_NAMES
from dict_ratelimit.pipeline.tick import PipelineSettings, TickReport, run_tick
from dict_ratelimit_tests.hostile_bridge import hostile_bridge
from dict_ratelimit_tests.simulation import START
from dict_ratelimit_tests.ticks import materializations, monitor_resources
from dict_ratelimit_tests.ticks import run_tick as run_monitor_job

pytestmark = [pytest.mark.e2e, pytest.mark.timebased]

GOOD, BAD = "12345678", "66666666"
SETTINGS = PipelineSettings(known_policies=KNOWN_POLICY_NAMES, stats_window=dt.timedelta(minutes=5))


def _first_policy(response: pb.ListPoliciesResponse, **changes: object) -> None:
    for name, value in changes.items():
        if value is None:
            response.policies[0].ClearField(name)
        else:
            setattr(response.policies[0], name, value)


def refill_period_beyond_integer(response):  # type: ignore[no-untyped-def]
    _first_policy(response, refill_period_sec=2**31)
    return response


def category_with_newline(response):  # type: ignore[no-untyped-def]
    response.category = "A\n"
    return response


def nul_in_correlation_id(response):  # type: ignore[no-untyped-def]
    response.correlation_id = "abc\x00def"
    return response


def nanos_out_of_range(response):  # type: ignore[no-untyped-def]
    response.response_time.nanos = 2_000_000_000
    return response


def seconds_out_of_range(response):  # type: ignore[no-untyped-def]
    response.response_time.seconds = 2**62
    return response


def year_9999(response):  # type: ignore[no-untyped-def]
    response.response_time.FromDatetime(dt.datetime(9999, 12, 31, 23, 0))
    return response


def no_available_tokens(response):  # type: ignore[no-untyped-def]
    _first_policy(response, available_tokens=None)
    return response


LISTINGS = [
    (refill_period_beyond_integer, "RefillPeriodSec"),
    (category_with_newline, "Category"),
    (nul_in_correlation_id, "CorrelationId"),
    (nanos_out_of_range, "ResponseTime"),
    (seconds_out_of_range, "ResponseTime"),
    (year_9999, "ResponseTime"),
    (no_available_tokens, "AvailableTokens"),
]


def negative_count(response):  # type: ignore[no-untyped-def]
    response.policies.add(policy="KEYS_CHECK").responses.add(http_status=200, count=-5)
    return response


def counts_adding_up_beyond_bigint(response):  # type: ignore[no-untyped-def]
    item = response.policies.add(policy="KEYS_CHECK")
    item.responses.add(http_status=200, count=2**63 - 1)
    item.responses.add(http_status=404, count=2**63 - 1)
    return response


def window_from_year_one(response):  # type: ignore[no-untyped-def]
    response.window_start.FromDatetime(dt.datetime(1, 1, 1))
    return response


def invalid_window_timestamp(response):  # type: ignore[no-untyped-def]
    response.window_end.nanos = -1
    return response


def nul_in_policy_name(response):  # type: ignore[no-untyped-def]
    response.policies.add(policy="KEYS\x00CHECK").responses.add(http_status=200, count=1)
    return response


STATS = [
    (negative_count, "KEYS_CHECK"),
    (counts_adding_up_beyond_bigint, "KEYS_CHECK"),
    (window_from_year_one, "window_start"),
    (invalid_window_timestamp, "window_end"),
    (nul_in_policy_name, "GetRequestStats.policy"),
]


def _stored(engine: Engine, ispb: str) -> dict[str, int]:
    with engine.connect() as connection:
        row = connection.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM dict_ratelimit.policy_snapshot WHERE ispb = :i),"
                "       (SELECT count(*) FROM dict_ratelimit.policy_metric WHERE ispb = :i),"
                "       (SELECT count(*) FROM dict_ratelimit.threshold_evaluation WHERE ispb = :i),"
                "       (SELECT count(*) FROM dict_ratelimit.policy_metric"
                "        WHERE ispb = :i AND not_found_share IS NOT NULL)"
            ),
            {"i": ispb},
        ).one()
    return dict(zip(("snapshots", "metrics", "evaluations", "with_404_share"), row, strict=True))


def _tick(target: str, engine: Engine, at: dt.datetime) -> TickReport:
    with BridgeClient(target, deadline_seconds=5) as client:
        return run_tick(engine, client, [GOOD, BAD], SETTINGS, FixedClock(at))


@pytest.mark.parametrize(("rewrite", "field"), LISTINGS, ids=[r.__name__ for r, _ in LISTINGS])
def test_a_malformed_listing_rejects_that_participant_alone(
    engine: Engine, rewrite, field: str
) -> None:  # type: ignore[no-untyped-def]
    with hostile_bridge({GOOD: "A", BAD: "A"}, START) as bridge:
        bridge.bridge.listings[BAD] = rewrite
        report = _tick(bridge.target, engine, START)
    failure = report.poll.failures[BAD]
    assert failure.error_class == "invalid_reading"
    assert failure.field is not None and field in failure.field
    assert f"participant {BAD}" in failure.message and field in failure.message
    assert set(report.poll.failures) == {BAD}
    assert _stored(engine, BAD)["snapshots"] == 0  # nothing of it, not even a zero
    good = _stored(engine, GOOD)
    assert good["snapshots"] == good["metrics"] == good["evaluations"] == 28
    assert report.alerts.evaluations_applied == 28


@pytest.mark.parametrize(("rewrite", "field"), STATS, ids=[r.__name__ for r, _ in STATS])
def test_malformed_request_stats_make_the_404_share_unknown_and_lose_nothing(
    engine: Engine, rewrite, field: str
) -> None:  # type: ignore[no-untyped-def]
    with hostile_bridge({GOOD: "A", BAD: "A"}, START, "scan-attack") as bridge:
        bridge.bridge.stats[BAD] = rewrite
        _tick(bridge.target, engine, START)
        bridge.advance(600)  # the scan: 404s counted for the good participant
        report = _tick(bridge.target, engine, START + dt.timedelta(seconds=600))
    assert not report.poll.failures
    why = report.poll.stats_unavailable[BAD]
    assert why.startswith("invalid_stats") and field in why
    assert GOOD not in report.poll.stats_unavailable
    bad, good = _stored(engine, BAD), _stored(engine, GOOD)
    assert bad["snapshots"] == bad["metrics"] == good["snapshots"] == 56
    assert bad["with_404_share"] == 0  # unknown, never 0
    assert good["with_404_share"] > 0


def test_the_monitor_run_succeeds_and_names_the_participant_and_field(
    db_url: URL, engine: Engine
) -> None:
    with hostile_bridge({GOOD: "A", BAD: "A"}, START) as bridge:
        bridge.bridge.listings[BAD] = category_with_newline

        class Sim:  # what run_tick needs of a simulator: its clock and its address
            clock = bridge.clock
            target = bridge.target

        result = run_monitor_job(Sim, monitor_resources(Sim, db_url, [GOOD, BAD]))  # type: ignore[arg-type]
    assert result.success
    [check] = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "complete_reading"
    ]
    assert not check.passed
    assert check.metadata["missing_participants"].value == [BAD]
    assert check.metadata["invalid_fields"].value == {BAD: "Category"}
    assert f"{BAD}: invalid_reading (Category)" in (check.description or "")
    [metrics] = materializations(result, "policy_metrics")
    assert metrics.metadata["rows_written"].value == 28
    assert _stored(engine, GOOD)["evaluations"] == 28
