"""``dict-ratelimit report``: the text summary and the HTML page, opened in real headless
Chromium: it must render without a console error and its charts must hold the stored data."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import URL, Engine

from dict_ratelimit.cli import main
from dict_ratelimit.pipeline.capacity import (
    compute_daily_usage,
    compute_outlook,
    compute_weekly_profile,
)
from dict_ratelimit.report.data import ReportData
from dict_ratelimit.report.html import render_html
from dict_ratelimit.settings import get_settings
from dict_ratelimit_tests.browser import render_page
from dict_ratelimit_tests.capacity_history import (
    SAO_PAULO,
    monday_midnight_before,
    record_history,
    weekly_simulator,
)
from dict_ratelimit_tests.timebase import base_time

pytestmark = pytest.mark.timebased

ISPB = "18236120"
WEEKS = 8


@pytest.fixture(scope="module")
def reported(pg_server, template_db) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Eight weeks of the weekly-growth scenario, with the three capacity tables computed."""
    from dict_ratelimit_tests.conftest import create_test_database, drop_test_database

    name = "capacity_report"
    url = create_test_database(pg_server, name, template=template_db)
    engine = sa.create_engine(url)
    start = monday_midnight_before(base_time(), WEEKS)
    end = start + dt.timedelta(weeks=WEEKS)
    simulator = weekly_simulator(start, ISPB)
    record_history(engine, simulator, ISPB, end, ("KEYS_CHECK", "ENTRIES_WRITE"))
    now = end + dt.timedelta(hours=2)
    compute_daily_usage(engine, start, end, SAO_PAULO, now)
    compute_weekly_profile(engine, now, SAO_PAULO)
    compute_outlook(engine, now, SAO_PAULO)
    month = (end - dt.timedelta(days=15)).astimezone(SAO_PAULO).date().replace(day=1)
    yield {"url": url, "engine": engine, "month": month, "end": end}
    engine.dispose()
    drop_test_database(pg_server, name)


def _report(
    reported: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    *args: str,
    output: Path | None = None,
) -> tuple[Any, Path]:
    url: URL = reported["url"]
    monkeypatch.setenv("DATABASE_URL", url.render_as_string(hide_password=False))
    output = output or tmp_path / "report.html"
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["report", *args, "--output", str(output)])
    finally:
        get_settings.cache_clear()
    return result, output


def test_the_report_prints_the_month_and_writes_a_page_that_renders_the_data(
    reported: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    month: dt.date = reported["month"]
    result, output = _report(
        reported, monkeypatch, tmp_path, "--participant", ISPB, "--month", f"{month:%Y-%m}"
    )
    assert result.exit_code == 0, result.output
    text = result.output
    assert f"participant {ISPB} (category A), {month:%B %Y}" in text
    assert "KEYS_CHECK" in text and "ENTRIES_WRITE" in text
    assert "[throttling] KEYS_CHECK peaks at" in text  # the eighth Monday throttled
    assert f"HTML report: {output}" in text

    engine: Engine = reported["engine"]
    with engine.connect() as connection:
        daily = {
            (row.policy, row.day.isoformat()): row.peak_demand_share
            for row in connection.execute(
                sa.text(
                    "SELECT policy, day, peak_demand_share FROM dict_ratelimit.policy_daily_usage "
                    "WHERE date_trunc('month', day) = :month"
                ),
                {"month": month},
            )
        }
        profile = {
            row.hour_of_week: row.typical_share
            for row in connection.execute(
                sa.text(
                    "SELECT hour_of_week, typical_share FROM dict_ratelimit.policy_weekly_profile "
                    "WHERE policy = 'KEYS_CHECK' AND window_weeks = 4"
                )
            )
        }
        weeks_used = connection.execute(
            sa.text(
                "SELECT weeks_used FROM dict_ratelimit.latest_capacity_outlook "
                "WHERE policy = 'KEYS_CHECK'"
            )
        ).scalar_one()

    page = render_page(
        output,
        wait_for="document.body.dataset.rendered === 'true'",
        evaluate=[
            "Array.from(document.querySelectorAll('#daily-chart .point')).map(p => "
            "[p.dataset.policy, p.dataset.day, Number(p.dataset.value)])",
            "Array.from(document.querySelectorAll('#profile-chart .cell')).map(c => "
            "[Number(c.dataset.how), c.dataset.value === '' ? null : Number(c.dataset.value)])",
            "document.querySelectorAll('#trend-chart .peak').length",
            "document.querySelectorAll('#trend-chart .trend, #trend-chart .first-429').length",
            "document.querySelectorAll('#month-table tbody tr').length",
        ],
    )
    assert page.errors == [], page.errors
    points, cells, peaks, lines, table_rows = page.values
    assert {(policy, day): value for policy, day, value in points} == pytest.approx(daily)
    assert len(cells) == 168
    assert {how: value for how, value in cells} == pytest.approx(profile)
    assert peaks == weeks_used and lines == 2
    assert table_rows == 2


def test_the_page_escapes_what_it_did_not_write(tmp_path: Path) -> None:
    """A recommendation is text from the database: it must not become markup or script."""
    hostile = "<!--<script></script><script>console.error('injected')</script><b>x</b>"
    report = ReportData(
        ispb="12345678",
        category="A",
        month=dt.date(2026, 11, 1),
        time_zone="America/Sao_Paulo",
        days_in_month=30,
        daily=[
            {
                "day": dt.date(2026, 11, 2),
                "policy": "KEYS_CHECK",
                "peak_utilization": 0.5,
                "peak_demand_share": 0.7,
                "throttled_429": None,
            }
        ],
        outlooks=[
            {
                "policy": "KEYS_CHECK",
                "status": "at_risk",
                "recommendation": hostile,
                "throttled_429_30d": 0,
                "weekly_peaks": [{"note": hostile}],
            }
        ],
        focus_policy="KEYS_CHECK",
    )
    path = tmp_path / "hostile.html"
    path.write_text(render_html(report), encoding="utf-8")
    page = render_page(
        path,
        wait_for="document.body.dataset.rendered === 'true'",
        evaluate=["document.querySelectorAll('b').length", "document.body.innerText"],
    )
    assert page.errors == [], page.errors
    bold, shown = page.values
    assert bold == 0 and hostile in shown


def test_a_participant_or_month_without_data_is_one_clear_line(
    reported: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result, output = _report(reported, monkeypatch, tmp_path, "--participant", "99999999")
    assert result.exit_code == 1
    assert "participant 99999999 is not monitored" in result.output
    far = (reported["end"] + dt.timedelta(days=400)).astimezone(SAO_PAULO)
    result, output = _report(
        reported, monkeypatch, tmp_path, "--participant", ISPB, "--month", f"{far:%Y-%m}"
    )
    assert result.exit_code == 1
    assert f"no daily usage of participant {ISPB} in {far:%Y-%m}" in result.output
    assert not output.exists()
    month = f"{reported['month']:%Y-%m}"
    nowhere = tmp_path / "missing" / "dir" / "report.html"
    result, _ = _report(
        reported, monkeypatch, tmp_path, "--participant", ISPB, "--month", month, output=nowhere
    )
    assert result.exit_code == 1
    assert "cannot write" in result.output and "No such file or directory" in result.output
    result, _ = _report(reported, monkeypatch, tmp_path, "--participant", "12ab", "--month", "x")
    assert result.exit_code == 2 and "not an ISPB" in result.output
    result, _ = _report(
        reported, monkeypatch, tmp_path, "--participant", ISPB, "--month", "9999-12"
    )
    assert result.exit_code == 2 and "not a month like 2026-11" in result.output
