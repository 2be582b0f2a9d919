"""Structured logs: one JSON object per line when asked, and never a secret in any format."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Iterator

import pytest

from dict_ratelimit.devstack import dagster_dev_command
from dict_ratelimit.logs import LogFormat, configure_logging, mask_secrets
from dict_ratelimit.settings import Settings
from dict_ratelimit.storage.embedded import free_port
from dict_ratelimit_tests.prometheus_tools import exporter_with_database_down

SECRET = "s3cr3t-pw"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_a_json_line_parses_with_its_participant_and_policy_and_no_secret(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(logging.INFO, "json")
    log = logging.getLogger("dict_ratelimit.test")
    log.warning(
        "no reading from %s: %s",
        f"postgresql+psycopg2://app:{SECRET}@db:5432/dict",
        f"authorization: Bearer {SECRET}",
        extra={"ispb": "12345678", "policy": "ENTRIES_READ_PARTICIPANT_ANTISCAN"},
    )
    log.debug("below the level: not written")
    [line] = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert record["level"] == "WARNING" and record["logger"] == "dict_ratelimit.test"
    assert record["ispb"] == "12345678"
    assert record["policy"] == "ENTRIES_READ_PARTICIPANT_ANTISCAN"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["time"])  # UTC
    assert record["message"] == (
        "no reading from postgresql+psycopg2://app:***@db:5432/dict: authorization: Bearer ***"
    )
    assert SECRET not in line


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_traceback_is_masked_and_a_broken_log_call_does_not_raise(
    log_format: LogFormat, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(logging.INFO, log_format)
    log = logging.getLogger("dict_ratelimit.test")
    try:
        raise RuntimeError(f"connect postgresql://app:{SECRET}@db/dict failed")
    except RuntimeError:
        log.exception("the store failed")
    log.info("a mistaken call %d", "not a number")  # reported by logging, not raised here
    err = capsys.readouterr().err
    assert "RuntimeError: connect postgresql://app:***@db/dict failed" in err.replace("\\n", "\n")
    assert SECRET not in err


def test_text_lines_are_masked_too(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(logging.INFO, "text")
    logging.getLogger("x").error("connect to pulsar+ssl://svc:%s@broker:6651 failed", SECRET)
    err = capsys.readouterr().err
    assert "pulsar+ssl://svc:***@broker:6651" in err and SECRET not in err
    assert mask_secrets("https://host/path?q=1") == "https://host/path?q=1"  # nothing to mask
    assert mask_secrets("user@example.com") == "user@example.com"


def test_the_exporter_logs_json_lines_without_the_database_password() -> None:
    run = exporter_with_database_down(
        f"postgresql://monitor:{SECRET}@127.0.0.1:{free_port()}/x", DICT_RATELIMIT_LOG_FORMAT="json"
    )
    assert run.database_up == 0  # the database is down: logged, and served as 0
    assert "exporter serving http://127.0.0.1:" in json.loads(run.first_line)["message"]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    for line in lines:
        record = json.loads(line)  # every line one object
        assert {"time", "level", "logger", "message"} <= record.keys()
    assert SECRET not in run.stderr


def test_dev_asks_dagster_for_json_logs_when_ours_are_json() -> None:
    json_command = dagster_dev_command(Settings(log_format="json"))  # type: ignore[call-arg]
    assert json_command[json_command.index("--log-format") + 1] == "json"
    text_command = dagster_dev_command(Settings())  # type: ignore[call-arg]
    assert text_command[text_command.index("--log-format") + 1] == "colored"
    with pytest.raises(ValueError, match="log_format"):
        Settings(log_format="xml")  # type: ignore[call-arg]


def test_a_failing_participant_is_named_in_its_own_json_field(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from dict_ratelimit.bridge.poller import poll_participants
    from dict_ratelimit.domain.catalog import KNOWN_POLICY_NAMES
    from dict_ratelimit.simulator.v1 import control_pb2 as ctl
    from dict_ratelimit_tests.simulation import running_simulator

    configure_logging(logging.INFO, "json")
    with running_simulator({"12345678": "A", "87654321": "D"}) as sim:
        sim.inject(ctl.PERMISSION_DENIED, participant="87654321", times=0)
        with sim.client() as client:
            result = poll_participants(
                client, ["12345678", "87654321"], KNOWN_POLICY_NAMES, max_skew=None
            )
    assert set(result.failures) == {"87654321"}
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    [failure] = [r for r in records if r["message"].startswith("bridge call failed")]
    assert failure["ispb"] == "87654321" and failure["error_class"] == "permission_denied"
    assert failure["level"] == "WARNING"


def test_dev_status_lines_are_log_records_when_the_logs_are_json(
    restore_logging: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dict_ratelimit.devstack import announce

    configure_logging(logging.INFO, "json")
    monkeypatch.setenv("DICT_RATELIMIT_LOG_FORMAT", "json")
    announce("Prometheus exporter: http://127.0.0.1:9464/metrics")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err)["message"].startswith("Prometheus exporter: http://")
    monkeypatch.setenv("DICT_RATELIMIT_LOG_FORMAT", "text")
    announce("embedded PostgreSQL stopped")
    assert capsys.readouterr().out == "embedded PostgreSQL stopped\n"


def test_scheduled_runs_print_their_event_log_as_json_when_the_logs_are_json(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import dagster as dg

    from dict_ratelimit.definitions import build_definitions
    from dict_ratelimit.defs.resources import PostgresResource
    from dict_ratelimit.defs.tags import JSON_RUN_LOGS
    from dict_ratelimit.settings import get_settings

    monkeypatch.setenv("DICT_RATELIMIT_LOG_FORMAT", "json")
    get_settings.cache_clear()
    try:
        with dg.instance_for_test() as instance:
            definitions = build_definitions(
                {
                    "postgres": PostgresResource(
                        database_url=f"postgresql://x:{SECRET}@127.0.0.1:1/z"
                    )
                }
            )
            schedule = definitions.resolve_schedule_def("monitor_sweeps")
            context = dg.build_schedule_context(
                instance=instance,
                repository_def=definitions.get_repository_def(),
                scheduled_execution_time=dt.datetime(2028, 2, 29, 23, 55, tzinfo=dt.timezone.utc),
            )
            [request] = schedule.evaluate_tick(context).run_requests
            assert request.run_config == JSON_RUN_LOGS
            retention = definitions.resolve_schedule_def("retention_daily")
            [daily] = retention.evaluate_tick(context).run_requests
            assert daily.run_config["loggers"] == JSON_RUN_LOGS["loggers"]
            job = definitions.resolve_job_def("retention_job")
            capfd.readouterr()
            job.execute_in_process(
                instance=instance, run_config=JSON_RUN_LOGS | {"ops": {}}, raise_on_error=False
            )
    finally:
        monkeypatch.delenv("DICT_RATELIMIT_LOG_FORMAT")
        get_settings.cache_clear()
    err = capfd.readouterr().err
    [start] = [line for line in err.splitlines() if "RUN_START" in line]
    record = json.loads(start)  # one JSON object per event line
    assert record["dagster_meta"]["job_name"] == "retention_job"
    assert SECRET not in err
