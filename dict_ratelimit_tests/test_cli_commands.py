"""`dict-ratelimit simulator` and `dict-ratelimit tick` as an operator runs them."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sqlite3
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner
from sqlalchemy.engine import URL, Engine

from dict_ratelimit.bridge.client import BridgeClient
from dict_ratelimit.cli import main
from dict_ratelimit.settings import get_settings
from dict_ratelimit_tests.simulation import START, running_simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timebased]


def test_simulator_command_serves_until_interrupted() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dict_ratelimit.cli",
            "simulator",
            "--port",
            "0",
            "--participant",
            "11111111:B",
            "--participant",
            "22222222",
            "--scenario",
            "steady",
            "--clock",
            "manual",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None  # the status line is a log record (stderr)
        match = None
        for line in process.stderr:
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if match:
                break
        assert match
        with BridgeClient(f"127.0.0.1:{match[1]}", deadline_seconds=5) as client:
            assert client.list_policies("11111111").category == "B"
            assert client.list_policies("22222222").category == "A"  # the default category
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
    assert process.returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--participant", "123:A"], "not 8-digit ISPBs: '123'"),
        (["--participant", "12345678:Z"], "category of 12345678 must be one of A-H, got 'Z'"),
        (["--scenario", "no-such"], "neither a built-in"),
        (["--clock", "sometimes"], "clock must be real, manual or xN"),
    ],
)
def test_simulator_command_rejects_bad_options(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["simulator", "--port", "0", *args])
    assert result.exit_code != 0
    assert message in result.output


@pytest.fixture
def tick_env(monkeypatch: pytest.MonkeyPatch, db_url: URL):  # type: ignore[no-untyped-def]
    with running_simulator({"12345678": "A", "87654321": "F"}, "steady") as sim:
        monkeypatch.setenv("DATABASE_URL", db_url.render_as_string(hide_password=False))
        monkeypatch.setenv("DICT_RATELIMIT_BRIDGE_TARGET", sim.target)
        monkeypatch.setenv("DICT_RATELIMIT_PARTICIPANTS", "12345678,87654321")
        monkeypatch.setenv("DICT_RATELIMIT_MAX_CLOCK_SKEW_SECONDS", "0")
        monkeypatch.delenv("DAGSTER_HOME", raising=False)
        get_settings.cache_clear()
        yield sim
        get_settings.cache_clear()


def test_tick_runs_the_monitor_and_prints_the_readings(tick_env) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(main, ["tick"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if re.match(r"\d{8} ", line)]
    assert len(lines) == 56
    assert any(re.match(r"87654321\s+ENTRIES_READ_PARTICIPANT_ANTISCAN\s+F\s", ln) for ln in lines)
    assert f"{START:%Y-%m-%d %H:%M:%S}" in lines[0]
    assert re.search(r"run [0-9a-f-]{36}: success", result.output)


def test_tick_without_a_bridge_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DICT_RATELIMIT_BRIDGE_TARGET", raising=False)
    get_settings.cache_clear()
    result = CliRunner().invoke(main, ["tick"])
    get_settings.cache_clear()
    assert result.exit_code == 1
    assert "DICT_RATELIMIT_BRIDGE_TARGET and DICT_RATELIMIT_PARTICIPANTS must be set" in (
        result.output
    )


def test_events_tail_prints_published_events_and_with_all_the_waiting_ones(
    db_url: URL, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dict_ratelimit_tests.outbox_fixtures import write_episodes

    written = write_episodes(engine, [("12345678", "KEYS_CHECK")])
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE dict_ratelimit.alert_event SET published_at = now() WHERE id <= 2"
        )
    monkeypatch.setenv("DATABASE_URL", db_url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    published = CliRunner().invoke(main, ["events", "tail", "--no-follow"])
    assert published.exit_code == 0, published.output
    lines = published.output.splitlines()
    assert len(lines) == 2
    assert "alert.opened" in lines[0] and "12345678/KEYS_CHECK" in lines[0]
    assert "WARNING" in lines[0] and "[published]" in lines[0]
    everything = CliRunner().invoke(main, ["events", "tail", "--no-follow", "--all", "--json"])
    documents = [json.loads(line) for line in everything.output.splitlines()]
    assert len(documents) == written
    assert documents[-1]["type"].endswith("alert.resolved")
    get_settings.cache_clear()


def _stored_texts(home: Path) -> Iterator[tuple[str, str]]:
    """Every value Dagster stored under ``home``: files as they are, and every cell of its
    SQLite databases, zlib-compressed ones (job snapshots) decompressed."""
    for path in home.rglob("*"):
        if not path.is_file():
            continue
        raw = path.read_bytes()
        yield str(path), raw.decode(errors="replace")
        if not raw.startswith(b"SQLite format 3"):
            continue
        with sqlite3.connect(path) as database:
            tables = [
                r[0] for r in database.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            for table in tables:
                for row in database.execute(f'SELECT * FROM "{table}"'):
                    for cell in row:
                        if isinstance(cell, bytes):
                            with contextlib.suppress(zlib.error):
                                cell = zlib.decompress(cell)
                            cell = cell.decode(errors="replace")
                        yield f"{path.name}:{table}", str(cell)


def test_no_password_reaches_the_dagster_storage(  # type: ignore[no-untyped-def]
    tick_env, db_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a `tick` and a run as the schedule starts it, the database password (the
    application role's, a random 43-character secret) is nowhere in run storage, event logs,
    job snapshots or compute logs."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert CliRunner().invoke(main, ["tick"]).exit_code == 0

    from dict_ratelimit.definitions import build_definitions
    from dict_ratelimit.defs.metrics import tick_partition
    from dict_ratelimit.defs.monitor import TICK_TAGS

    get_settings.cache_clear()
    job = build_definitions().resolve_job_def("monitor_job")  # the code location's own
    now = tick_env.clock.now()
    with dg.DagsterInstance.get() as instance, dg.partition_loading_context(effective_dt=now):
        scheduled = job.execute_in_process(
            instance=instance, partition_key=tick_partition(now), tags=TICK_TAGS
        )
        assert scheduled.success
        assert len(instance.get_runs()) == 2
    password = db_url.password
    assert password and len(password) > 20
    texts = list(_stored_texts(home))
    assert any("monitor_job" in text for _, text in texts)  # the scan does see the runs
    leaks = sorted({where for where, text in texts if password in text})
    assert leaks == []
