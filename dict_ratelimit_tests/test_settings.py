"""One settings model: every variable validated at start, one line per problem, naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dict_ratelimit.settings import (
    Settings,
    SettingsError,
    load_settings,
    parse_participants,
    parse_served,
)

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("DICT_RATELIMIT_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("DICT_RATELIMIT_BRIDGE_DEADLINE_SECONDS", "abc", "valid number"),
        ("DICT_RATELIMIT_BRIDGE_MAX_CONCURRENCY", "many", "valid integer"),
        ("DICT_RATELIMIT_ALERT_FIRE_AFTER", "0", "greater than or equal to 1"),
        ("DICT_RATELIMIT_MAX_CLOCK_SKEW_SECONDS", "1.5", "valid integer"),
        ("DICT_RATELIMIT_PARTICIPANTS", "abc", "not 8-digit ISPBs: 'abc'"),
        ("DICT_RATELIMIT_PARTICIPANTS", "12345678;23456789", "not 8-digit ISPBs"),
        ("DICT_RATELIMIT_PARTICIPANTS", "12345678,12345678", "listed twice: 12345678"),
        ("DICT_RATELIMIT_BRIDGE_TARGET", "nohost", "expected host:port"),
        ("DICT_RATELIMIT_MONITOR_CRON", "every minute", "five-field cron"),
        ("DICT_RATELIMIT_EXTRA_POLICIES", "NEW_ONE,bad name", "not policy names"),
        ("DICT_RATELIMIT_REPORT_TIMEZONE", "Brasilia", "unknown time zone 'Brasilia'"),
        ("DICT_RATELIMIT_REPORT_TIMEZONE", "../../etc/passwd", "unknown time zone"),
        ("DICT_RATELIMIT_PULSAR_URL", "http://broker", "pulsar://"),
        ("DICT_RATELIMIT_SIMULATOR_PARTICIPANTS", "12345678:Z", "must be one of A-H"),
    ],
)
def test_each_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    [problem] = raised.value.problems
    assert problem.startswith(f"{variable}: ")
    assert expected in problem and "\n" not in problem


def test_several_problems_are_all_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICT_RATELIMIT_BRIDGE_DEADLINE_SECONDS", "x")
    monkeypatch.setenv("DICT_RATELIMIT_ALERT_CLEAR_AFTER", "y")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert [p.split(":")[0] for p in raised.value.problems] == [
        "DICT_RATELIMIT_BRIDGE_DEADLINE_SECONDS",
        "DICT_RATELIMIT_ALERT_CLEAR_AFTER",
    ]


def test_a_secret_is_never_shown_in_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICT_RATELIMIT_BRIDGE_TOKEN", "s3cr3t-t0k3n")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "s3cr3t" not in str(raised.value)
    assert "would be sent in clear" in str(raised.value)
    monkeypatch.setenv("DICT_RATELIMIT_BRIDGE_ALLOW_PLAINTEXT_TOKEN", "true")
    assert load_settings().bridge_token.get_secret_value() == "s3cr3t-t0k3n"  # type: ignore[union-attr]


def test_tokens_in_clear_and_half_mtls_pairs_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICT_RATELIMIT_PULSAR_URL", "pulsar://broker:6650")
    monkeypatch.setenv("DICT_RATELIMIT_PULSAR_TOKEN", "t")
    monkeypatch.setenv("DICT_RATELIMIT_PULSAR_TLS_CLIENT_CERT", "/etc/cert.pem")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    joined = "\n".join(raised.value.problems)
    assert "PULSAR_TOKEN: would travel in clear" in joined
    assert "need a pulsar+ssl://" in joined
    assert "mutual TLS needs both" in joined


def test_the_participant_parser_is_strict_and_shared() -> None:
    assert parse_participants(" 12345678 , 23456789,") == ["12345678", "23456789"]
    for bad in ("1234567", "1234 5678", "abcdefgh", "12345678;23456789"):
        with pytest.raises(ValueError):
            parse_participants(bad)
    assert parse_served("12345678:A, 23456789") == {"12345678": "A", "23456789": "A"}


def test_thresholds_file_problems_name_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cases = {
        "binary.yaml": (b"\xff\xfe\x00binary", "not UTF-8 text"),
        "big.yaml": (b"# x\n" * 70_000, "bytes, at most"),
        "unknown.yaml": (b"policies:\n  NEW_DICT_POLICY:\n    warning_ratio: 0.3\n", "unknown"),
        "yaml.yaml": (b"policies: [unclosed\n", "not valid YAML"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        monkeypatch.setenv("DICT_RATELIMIT_THRESHOLDS_FILE", str(path))
        with pytest.raises(SettingsError) as raised:
            load_settings()
        [problem] = raised.value.problems
        assert problem.startswith("DICT_RATELIMIT_THRESHOLDS_FILE: ") and expected in problem
        assert str(path) in problem


def test_a_policy_allowed_as_extra_may_have_its_own_thresholds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "thresholds.yaml"
    path.write_text("policies:\n  NEW_DICT_POLICY:\n    warning_ratio: 0.3\n    clear_ratio: 0.4\n")
    monkeypatch.setenv("DICT_RATELIMIT_THRESHOLDS_FILE", str(path))
    monkeypatch.setenv("DICT_RATELIMIT_EXTRA_POLICIES", "NEW_DICT_POLICY")
    settings = load_settings()
    assert settings.known_policies() >= {"NEW_DICT_POLICY", "KEYS_CHECK"}


def test_the_cli_prints_one_line_and_exits_non_zero() -> None:
    env = {"PATH": "/usr/bin:/bin", "DICT_RATELIMIT_PARTICIPANTS": "abc"}
    result = subprocess.run(
        [sys.executable, "-m", "dict_ratelimit.cli", "tick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "invalid configuration: DICT_RATELIMIT_PARTICIPANTS: not 8-digit ISPBs: 'abc'"
    ]


def test_the_runbook_base_url_must_be_absolute_and_without_a_fragment() -> None:
    ok = Settings(runbook_base_url="https://wiki.example.internal/dict/runbook.md")  # type: ignore[call-arg]
    assert ok.runbook_base_url == "https://wiki.example.internal/dict/runbook.md"
    for bad in ("docs/runbook.md", "https://wiki/runbook.md#top", "ftp://x/runbook"):
        with pytest.raises(ValueError, match="absolute http"):
            Settings(runbook_base_url=bad)  # type: ignore[call-arg]
