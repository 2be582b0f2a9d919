"""policy_metrics and threshold_evaluations: ticks, backfills, day boundaries, 404 share."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from dict_ratelimit.definitions import build_definitions
from dict_ratelimit_tests.simulation import RunningSimulator, running_simulator
from dict_ratelimit_tests.ticks import materializations, monitor_resources, run_tick
from dict_ratelimit_tests.timebase import base_time, before_next_midnight, day_key

pytestmark = [pytest.mark.e2e, pytest.mark.timebased]

START = before_next_midnight(base_time(), 15)  # six ticks five minutes apart cross midnight
DAY, NEXT_DAY = day_key(START), day_key(START + dt.timedelta(days=1))
PARTICIPANTS = {"12345678": "A", "87654321": "C"}
ANTISCAN = "ENTRIES_READ_PARTICIPANT_ANTISCAN"
METRIC_SQL = "SELECT * FROM dict_ratelimit.policy_metric ORDER BY ispb, policy, response_time"
EVALUATION_SQL = (
    "SELECT * FROM dict_ratelimit.threshold_evaluation ORDER BY ispb, policy, response_time"
)


def _resources(sim: RunningSimulator, db_url: URL, stats_window: int = 300) -> dict:
    return monitor_resources(
        sim,
        db_url,
        list(PARTICIPANTS),
        bridge_options={"request_stats_window_seconds": stats_window},
    )


def _tick(sim: RunningSimulator, db_url: URL, stats_window: int = 300):  # type: ignore[no-untyped-def]
    result = run_tick(sim, _resources(sim, db_url, stats_window))
    assert result.success
    return result


def _backfill(sim: RunningSimulator, db_url: URL, first: str, last: str):  # type: ignore[no-untyped-def]
    job = build_definitions(_resources(sim, db_url)).resolve_job_def("metrics_job")
    with dg.partition_loading_context(effective_dt=sim.clock.now()):
        result = job.execute_in_process(
            tags={
                "dagster/asset_partition_range_start": first,
                "dagster/asset_partition_range_end": last,
            },
            raise_on_error=False,
        )
    assert result.success
    return result


def _rows(engine: Engine, sql: str) -> list[dict]:
    with engine.connect() as connection:
        rows = [dict(r._mapping) for r in connection.execute(sa.text(sql))]
    for row in rows:
        row.pop("computed_at")
    return rows


@pytest.fixture
def ticked(db_url: URL, engine: Engine) -> Iterator[RunningSimulator]:
    """Six ticks five minutes apart, across midnight, during the scan attack's start."""
    with running_simulator(PARTICIPANTS, "scan-attack", start=START) as sim:
        for tick in range(6):
            if tick:
                sim.advance(300)
            _tick(sim, db_url)
        yield sim


def test_every_tick_computes_its_snapshots_metrics_and_levels(
    ticked: RunningSimulator, engine: Engine
) -> None:
    metrics = _rows(engine, METRIC_SQL)
    assert len(metrics) == 6 * 2 * 28 == len(_rows(engine, EVALUATION_SQL))
    first_of_day = [m for m in metrics if m["response_time"] == START + dt.timedelta(minutes=15)]
    assert all(m["prev_response_time"] == START + dt.timedelta(minutes=10) for m in first_of_day)
    very_first = [m for m in metrics if m["response_time"] == START]
    assert {m["estimate_note"] for m in very_first} == {"no previous reading"}
    assert all(
        m["exhaustion_state"] in ("finite", "never", "exhausted")
        for m in metrics
        if m["response_time"] > START
    )


def test_a_backfill_of_the_same_days_reproduces_the_rows(
    ticked: RunningSimulator, db_url: URL, engine: Engine
) -> None:
    metrics, evaluations = _rows(engine, METRIC_SQL), _rows(engine, EVALUATION_SQL)
    result = _backfill(ticked, db_url, DAY, NEXT_DAY)
    written = materializations(result, "policy_metrics")
    assert len(written) == 2  # one run, both days (single-run backfill policy)
    materialization = written[0]
    assert materialization.metadata["mode"].value == "recompute window"
    assert materialization.metadata["rows_written"].value == len(metrics)
    assert _rows(engine, METRIC_SQL) == metrics
    assert _rows(engine, EVALUATION_SQL) == evaluations


def test_backfilling_one_day_uses_the_previous_days_last_reading(
    ticked: RunningSimulator, db_url: URL, engine: Engine
) -> None:
    before = _rows(engine, METRIC_SQL)
    with engine.begin() as connection:  # lose the second day's metrics
        connection.execute(
            sa.text("DELETE FROM dict_ratelimit.policy_metric WHERE response_time >= :d"),
            {"d": START + dt.timedelta(minutes=15)},
        )
    _backfill(ticked, db_url, NEXT_DAY, NEXT_DAY)
    after = _rows(engine, METRIC_SQL)
    assert after == before
    midnight = [m for m in after if m["response_time"] == START + dt.timedelta(minutes=15)]
    assert midnight and all(m["elapsed_seconds"] == 300 for m in midnight)


def test_rerunning_a_tick_writes_nothing(
    ticked: RunningSimulator, db_url: URL, engine: Engine
) -> None:
    before = _rows(engine, METRIC_SQL)
    result = _tick(ticked, db_url)
    [materialization] = materializations(result, "policy_metrics")
    assert materialization.metadata["rows_written"].value == 0
    assert _rows(engine, METRIC_SQL) == before


def test_the_scan_attack_shows_up_as_demand_censoring_and_levels(
    db_url: URL, engine: Engine
) -> None:
    with running_simulator(PARTICIPANTS, "scan-attack", start=START) as sim:
        _tick(sim, db_url)
        sim.advance(900)  # mid-attack: the anti-scan bucket is being drained
        _tick(sim, db_url)
        sim.advance(240)
        result = _tick(sim, db_url)
    latest = [
        m
        for m in _rows(engine, METRIC_SQL)
        if m["policy"] == ANTISCAN and m["response_time"] == sim.clock.now()
    ]
    assert len(latest) == 2
    for metric in latest:
        if metric["censored"] == "empty":
            assert metric["exhaustion_state"] == "exhausted" and metric["time_to_429_s"] == 0
            assert metric["demand_upper_per_min"] is None  # demand beyond zero was rejected
        # the refill-aware estimate is far above the naive drop
        assert metric["demand_per_min"] > metric["refill_per_min"] > metric["naive_drop_per_min"]
        # 404-heavy scan (normal traffic: 2 %), from the Bridge's counts (429s count too)
        assert 0.1 < metric["not_found_share"] < 0.9
    evaluations = [
        e
        for e in _rows(engine, EVALUATION_SQL)
        if e["policy"] == ANTISCAN and e["response_time"] == sim.clock.now()
    ]
    assert {e["level"] for e in evaluations} <= {"CRITICAL", "EXHAUSTED"}
    assert all(e["reasons"] and e["thresholds"]["warning_ratio"] == 0.2 for e in evaluations)
    [levels] = materializations(result, "threshold_evaluations")
    assert levels.metadata["count_critical"].value + levels.metadata["count_exhausted"].value >= 2
    [metrics] = materializations(result, "policy_metrics")
    worst = metrics.metadata["worst_by_remaining_ratio"]
    assert isinstance(worst, dg.TableMetadataValue)  # a table the UI sorts, not markdown
    assert [c.type for c in worst.schema.columns] == ["string", "float", "int", "int"]
    policies = [record.data["policy"] for record in worst.records]
    assert any(policy.endswith(ANTISCAN) for policy in policies)
    ratios = [record.data["remaining_ratio"] for record in worst.records]
    assert ratios == sorted(ratios) and all(isinstance(r, float) for r in ratios)


def test_without_request_stats_the_404_share_is_unknown_not_zero(
    db_url: URL, engine: Engine
) -> None:
    with running_simulator(PARTICIPANTS, "scan-attack", start=START) as sim:
        _tick(sim, db_url, stats_window=0)
        sim.advance(300)
        _tick(sim, db_url, stats_window=0)
    assert {m["not_found_share"] for m in _rows(engine, METRIC_SQL)} == {None}
