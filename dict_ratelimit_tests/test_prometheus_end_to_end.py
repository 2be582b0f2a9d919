"""A real Prometheus scrapes the exporter over a database the monitor filled from the
simulator; queries, rule states and the Grafana dashboard's metric names are checked."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import URL, Engine

from dict_ratelimit.exporter.server import start_exporter
from dict_ratelimit.pipeline.capacity import compute_outlook, compute_weekly_profile
from dict_ratelimit.storage.embedded import free_port
from dict_ratelimit_tests.capacity_history import (
    SAO_PAULO,
    monday_midnight_before,
    record_history,
    weekly_simulator,
)
from dict_ratelimit_tests.prometheus_tools import DEPLOY, scrape, tool
from dict_ratelimit_tests.simulation import running_simulator
from dict_ratelimit_tests.ticks import monitor_resources, run_tick
from dict_ratelimit_tests.timebase import base_time

pytestmark = [pytest.mark.e2e, pytest.mark.timebased]


PARTICIPANTS = {"12345678": "A", "87654321": "D"}
ANTISCAN = "ENTRIES_READ_PARTICIPANT_ANTISCAN"
CAPACITY_ISPB = "60701190"
DASHBOARD = DEPLOY / "grafana" / "dict-ratelimit.json"
METRIC = re.compile(r"\bdict_rate_limit_[a-z0-9_]+")


def api(port: int, path: str, **params: str) -> dict:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/{path}?{query}", timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def wait_for(check, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (OSError, AssertionError, KeyError, IndexError):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.3)


def start_prometheus(port: int, config: Path, exporter_port: int) -> subprocess.Popen:
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(DEPLOY / "prometheus" / "rules.yml")],
                "scrape_configs": [
                    {
                        "job_name": "dict-ratelimit",
                        "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}],
                    }
                ],
            }
        )
    )
    log = (config.parent / "prometheus.log").open("w")
    return subprocess.Popen(
        [
            str(tool("prometheus")),
            f"--config.file={config}",
            f"--storage.tsdb.path={config.parent / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def test_prometheus_scrapes_the_exporter_and_evaluates_the_rules(
    db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    with running_simulator(PARTICIPANTS, "scan-attack") as sim:
        resources = monitor_resources(sim, db_url, list(PARTICIPANTS))
        sim.advance(540)
        assert run_tick(sim, resources).success
        sim.advance(90)
        assert run_tick(sim, resources).success  # anti-scan: first 429 within a minute
    # five weeks of another participant's history, for the capacity row of the dashboard
    start = monday_midnight_before(base_time(), 6)
    end = start + dt.timedelta(weeks=5)
    record_history(
        engine, weekly_simulator(start, CAPACITY_ISPB), CAPACITY_ISPB, end, ["KEYS_CHECK"]
    )
    compute_weekly_profile(engine, end, SAO_PAULO)
    compute_outlook(engine, end, SAO_PAULO)
    exporter, exporter_thread = start_exporter(
        engine, "127.0.0.1", 0, runbook_base_url="https://wiki.example.internal/runbook"
    )
    port = free_port()
    process = start_prometheus(port, tmp_path / "prometheus.yml", exporter.server_port)
    try:
        wait_for(lambda: api(port, "query", query='up{job="dict-ratelimit"} == 1')["result"])
        with engine.connect() as connection:
            tokens = connection.execute(
                sa.text(
                    "SELECT available_tokens FROM dict_ratelimit.latest_policy_health "
                    "WHERE ispb = '12345678' AND policy = :policy"
                ),
                {"policy": ANTISCAN},
            ).scalar_one()
        [series] = api(
            port,
            "query",
            query=f'dict_rate_limit_available_tokens{{ispb="12345678", policy="{ANTISCAN}"}}',
        )["result"]
        assert float(series["value"][1]) == tokens
        assert series["metric"]["category"] == "A"

        def exhaustion_rule() -> list[dict]:
            groups = api(port, "rules", type="alert")["groups"]
            rules = {r["name"]: r for g in groups for r in g["rules"]}
            alerts = rules["DictRateLimitExhaustionSoon"]["alerts"]
            assert rules["DictRateLimitExporterDown"]["state"] == "inactive"
            return alerts

        alerts = wait_for(exhaustion_rule)
        assert {(a["labels"]["ispb"], a["labels"]["policy"]) for a in alerts} == {
            (ispb, ANTISCAN) for ispb in PARTICIPANTS
        }
        assert {a["state"] for a in alerts} == {"pending"}  # `for: 1m` has not elapsed

        # every metric the dashboard queries is one the exporter really exposes
        exposed = set(scrape(exporter.server_port))
        dashboard = json.loads(DASHBOARD.read_text())
        queried = {
            name
            for panel in dashboard["panels"]
            for target in panel["targets"]
            for name in METRIC.findall(target["expr"])
        }
        queried |= {
            name
            for variable in dashboard["templating"]["list"]
            for name in METRIC.findall(variable.get("definition", ""))
        }
        queried |= {  # the annotations: alert openings and resolutions
            name
            for annotation in dashboard["annotations"]["list"]
            for name in METRIC.findall(annotation["expr"])
        }
        assert queried and queried <= exposed, queried - exposed
        # ... and Prometheus has data for each of them
        for name in sorted(queried):
            assert api(port, "series", **{"match[]": name}), name
    finally:
        process.terminate()
        process.wait(10)
        exporter.shutdown()
        exporter_thread.join(5)


def test_the_dashboard_is_a_current_grafana_dashboard_with_the_variables_it_needs() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"] == "dict-ratelimit"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["ispb"]["multi"] and variables["policy"]["includeAll"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " | ".join(panel["title"] for panel in dashboard["panels"])
    for wanted in (
        "Remaining ratio",
        "demand vs refill",
        "first 429",
        "Open alerts",
        "Snapshot age",
    ):
        assert wanted in titles
    annotations = {a["name"]: a for a in dashboard["annotations"]["list"]}
    assert "dict_rate_limit_alerts_created_total" in annotations["Alert opened"]["expr"]
    assert "dict_rate_limit_alerts_resolved_total" in annotations["Alert resolved"]["expr"]
    assert (
        "label_values(dict_rate_limit_runbook_info, base_url)"
        in (variables["runbook"]["definition"])
    )
    runbook = (DEPLOY.parent / "docs" / "runbook.md").read_text()
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for link in panel.get("links", []):  # every runbook link names a real section
            base, _, anchor = link["url"].partition("#")
            assert base == "${runbook}" and f"\n## {anchor}\n" in runbook, link
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    [remaining] = [p for p in dashboard["panels"] if p["title"].startswith("Remaining ratio")]
    steps = [s["value"] for s in remaining["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, 0.10, 0.20, 0.30]  # the CRITICAL, WARNING and clear bands
    assert (
        "$ispb" in remaining["targets"][0]["expr"] and "$policy" in remaining["targets"][0]["expr"]
    )
