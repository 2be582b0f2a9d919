"""Threshold levels at their boundaries, per-policy overrides, and invalid files."""

from __future__ import annotations

from pathlib import Path

import pytest

from dict_ratelimit.domain.catalog import KNOWN_POLICY_NAMES
from dict_ratelimit.domain.thresholds import (
    Level,
    ThresholdConfigError,
    Thresholds,
    evaluate,
    parse_threshold_config,
)
from dict_ratelimit.thresholds_file import load_threshold_file

DEFAULT = Thresholds()


@pytest.mark.parametrize(
    ("available", "level"),
    [
        (36_000, Level.OK),
        (7_201, Level.OK),
        (7_200, Level.WARNING),  # 20 % exactly: WARNING (inclusive, as the old system)
        (3_601, Level.WARNING),
        (3_600, Level.CRITICAL),  # 10 % exactly: CRITICAL
        (1, Level.CRITICAL),
        (0, Level.EXHAUSTED),
        (-3, Level.EXHAUSTED),
    ],
)
def test_remaining_ratio_boundaries(available: int, level: Level) -> None:
    assert evaluate(available, 36_000, None, DEFAULT)[0] is level


def test_forecast_raises_the_level_before_the_ratio_does() -> None:
    level, reasons = evaluate(30_000, 50_000, 240.0, DEFAULT)  # 60 % left, 429 in 4 min
    assert level is Level.CRITICAL
    assert [r.code for r in reasons] == ["time_to_429"]
    assert "first 429 expected in 4.0 min < 5.0 min" in reasons[0].detail
    assert evaluate(30_000, 50_000, 600.0, DEFAULT)[0] is Level.WARNING
    assert evaluate(30_000, 50_000, 900.0, DEFAULT)[0] is Level.OK  # horizon is exclusive
    assert evaluate(30_000, 50_000, None, DEFAULT)[0] is Level.OK  # never / unknown


def test_every_reason_is_kept_worst_first() -> None:
    level, reasons = evaluate(7_000, 36_000, 100.0, DEFAULT)
    assert level is Level.CRITICAL
    assert [(r.code, r.level) for r in reasons] == [
        ("time_to_429", Level.CRITICAL),
        ("remaining_ratio", Level.WARNING),
    ]
    assert reasons[1].as_dict() == {
        "code": "remaining_ratio",
        "level": "WARNING",
        "detail": "19.4% left ≤ 20% (warning)",
    }


def test_per_policy_overrides_inherit_the_defaults() -> None:
    config = parse_threshold_config(
        {
            "defaults": {"critical_horizon_seconds": 120},
            "policies": {
                "ENTRIES_READ_PARTICIPANT_ANTISCAN": {"warning_ratio": 0.4, "clear_ratio": 0.5}
            },
        },
        KNOWN_POLICY_NAMES,
    )
    antiscan = config.for_policy("ENTRIES_READ_PARTICIPANT_ANTISCAN")
    assert antiscan.warning_ratio == 0.4 and antiscan.critical_horizon_seconds == 120
    assert config.for_policy("ENTRIES_WRITE") == Thresholds(critical_horizon_seconds=120)
    assert evaluate(19_000, 50_000, None, antiscan)[0] is Level.WARNING  # 38 % <= 40 %
    assert evaluate(19_000, 50_000, None, config.for_policy("ENTRIES_WRITE"))[0] is Level.OK


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"defaults": {"critical_ratio": 0.3, "warning_ratio": 0.2}},
            "defaults: critical_ratio (0.3) is above warning_ratio (0.2)",
        ),
        ({"defaults": {"warning_ratio": 1.5}}, "defaults: warning_ratio must be between 0 and 1"),
        ({"defaults": {"critical_ratio": -0.1}}, "critical_ratio must be between 0 and 1"),
        (
            {"policies": {"NOT_A_POLICY": {"warning_ratio": 0.3}}},
            "policies: unknown policy name(s) ['NOT_A_POLICY']",
        ),
        ({"policies": {"KEYS_CHECK": {"warn": 0.3}}}, "policies.KEYS_CHECK: unknown field(s)"),
        (
            {"policies": {"KEYS_CHECK": {"clear_ratio": 0.1}}},
            "policies.KEYS_CHECK: clear_ratio (0.1) is below warning_ratio",
        ),
        ({"defaults": {"warning_ratio": "high"}}, "warning_ratio must be a number"),
        (
            {"defaults": {"critical_horizon_seconds": 2000}},
            "critical_horizon_seconds (2000.0) is above warning_horizon_seconds",
        ),
        ({"limits": {}}, "thresholds: unknown section(s) ['limits']"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_invalid_documents_are_rejected_with_clear_errors(document: object, message: str) -> None:
    with pytest.raises(ThresholdConfigError) as error:
        parse_threshold_config(document, KNOWN_POLICY_NAMES)
    assert message in str(error.value)


def test_threshold_files(tmp_path: Path) -> None:
    good = tmp_path / "thresholds.yaml"
    good.write_text("policies:\n  KEYS_CHECK:\n    warning_ratio: 0.5\n    clear_ratio: 0.6\n")
    assert load_threshold_file(good).for_policy("KEYS_CHECK").warning_ratio == 0.5
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults:\n  critical_ratio: 0.5\n")
    with pytest.raises(ThresholdConfigError, match=r"bad\.yaml: defaults: critical_ratio"):
        load_threshold_file(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("defaults: [unclosed\n")
    with pytest.raises(ThresholdConfigError, match="not valid YAML"):
        load_threshold_file(broken)
    with pytest.raises(ThresholdConfigError, match="thresholds file not found"):
        load_threshold_file(tmp_path / "missing.yaml")


def test_the_batch_evaluation_equals_evaluating_every_row() -> None:
    """evaluations_frame skips the per-row call for plainly OK rows: same answers."""
    import json

    import numpy as np
    import pandas as pd

    from dict_ratelimit.analysis import evaluations_frame

    rng = np.random.default_rng(7)
    n = 2_000
    capacity = rng.choice([70, 600, 36_000, 50_000], n).astype(float)
    available = np.floor(capacity * rng.uniform(-0.05, 1.0, n))
    ttl = np.where(rng.uniform(size=n) < 0.4, np.nan, rng.uniform(0, 2_000, n))
    metrics = pd.DataFrame(
        {
            "ispb": "12345678",
            "policy": rng.choice(
                ["KEYS_CHECK", "ENTRIES_WRITE", "ENTRIES_READ_PARTICIPANT_ANTISCAN"], n
            ),
            "response_time": pd.Timestamp("2026-11-29", tz="UTC"),
            "available_tokens": available,
            "capacity": capacity,
            "remaining_ratio": available / capacity,
            "time_to_429_s": ttl,
        }
    )
    config = parse_threshold_config(
        {"policies": {"KEYS_CHECK": {"warning_ratio": 0.5, "clear_ratio": 0.6}}},
        KNOWN_POLICY_NAMES,
    )
    frame = evaluations_frame(metrics, config)
    for row, evaluated in zip(metrics.itertuples(), frame.itertuples(), strict=True):
        level, reasons = evaluate(
            row.available_tokens,
            row.capacity,
            None if np.isnan(row.time_to_429_s) else row.time_to_429_s,
            config.for_policy(row.policy),
        )
        assert evaluated.level == level.name
        assert json.loads(evaluated.reasons) == [r.as_dict() for r in reasons]
        assert json.loads(evaluated.thresholds) == config.for_policy(row.policy).as_dict()
    assert set(frame["level"]) == {"OK", "WARNING", "CRITICAL", "EXHAUSTED"}
