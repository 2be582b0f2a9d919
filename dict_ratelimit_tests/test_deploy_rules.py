"""The Prometheus rules and the Alertmanager example, checked by the real tools."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from dict_ratelimit.settings import project_root
from dict_ratelimit_tests.prometheus_tools import DEPLOY, tool

pytestmark = [pytest.mark.e2e]


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)


def test_the_rules_are_valid_and_their_unit_tests_pass() -> None:
    checked = run(tool("promtool"), "check", "rules", DEPLOY / "prometheus" / "rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout
    tested = run(
        tool("promtool"), "test", "rules", DEPLOY / "prometheus" / "tests" / "rules_test.yml"
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_summary_a_description_and_a_runbook_section() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    runbook = (project_root() / "docs" / "runbook.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line[3:].strip().lower()).replace(" ", "-")
        for line in runbook.splitlines()
        if line.startswith("## ")
    }
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    assert {rule["alert"] for rule in alerts} >= {
        "DictRateLimitCritical", "DictRateLimitWarning", "DictRateLimitExhaustionSoon",
        "DictRateLimitSnapshotStale", "DictRateLimitExporterDown",
        "DictRateLimitMonitorBudgetLow",
    }  # fmt: skip
    for rule in alerts:
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/runbook.md" and anchor in anchors, rule["alert"]


def test_the_alertmanager_example_is_valid_and_routes_and_inhibits_as_documented() -> None:
    config = DEPLOY / "alertmanager" / "alertmanager.yml"
    checked = run(tool("amtool"), "check-config", config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for severity, receiver in (("critical", "pix-oncall-pager"), ("warning", "pix-oncall")):
        routed = run(
            tool("amtool"), "config", "routes", "test", f"--config.file={config}",
            f"severity={severity}", "ispb=12345678", "policy=KEYS_CHECK", "alertname=X",
        )  # fmt: skip
        assert routed.stdout.strip() == receiver, routed.stdout + routed.stderr
    parsed = yaml.safe_load(config.read_text())
    assert "ispb" in parsed["route"]["group_by"]
    [inhibit] = parsed["inhibit_rules"]
    assert inhibit["equal"] == ["ispb", "policy"]
    assert inhibit["source_matchers"] == ['severity = "critical"']
    assert inhibit["target_matchers"] == ['severity = "warning"']
    assert all(hook["send_resolved"] for r in parsed["receivers"] for hook in r["webhook_configs"])
