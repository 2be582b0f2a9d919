"""The Prometheus rules and the Alertmanager example, checked by the real tools."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from dict_ratelimit.settings import project_root
from dict_ratelimit_tests.prometheus_tools import DEPLOY, tool

pytestmark = [pytest.mark.e2e]


BUCKET_ALERTS = {
    "DictRateLimitExhausted", "DictRateLimitCritical", "DictRateLimitWarning",
    "DictRateLimitExhaustionSoon",
}  # fmt: skip
AMTOOL_DATA = {
    "receiver": "pix-page",
    "status": "firing",
    "externalURL": "http://alertmanager.example.internal",
    "groupLabels": {"alertname": "DictRateLimitExhausted", "ispb": "12345678"},
    "commonAnnotations": {},
}


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)


def test_the_rules_are_valid_and_their_unit_tests_pass() -> None:
    checked = run(tool("promtool"), "check", "rules", DEPLOY / "prometheus" / "rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout
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
        assert rule["labels"]["severity"] in ("warning", "critical", "exhausted")
        # absolute from the exporter's dict_rate_limit_runbook_info, the repository path else
        link, _, anchor = annotations["runbook_url"].rpartition("#")
        assert "dict_rate_limit_runbook_info" in link and "docs/runbook.md" in link, rule["alert"]
        assert anchor in anchors, rule["alert"]
        if rule["alert"] in BUCKET_ALERTS:  # what the notification templates show
            assert {"remaining", "time_to_429"} <= annotations.keys(), rule["alert"]


def test_the_alertmanager_example_is_valid_and_routes_and_inhibits_as_documented() -> None:
    config = DEPLOY / "alertmanager" / "alertmanager.yml"
    checked = run(tool("amtool"), "check-config", config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 templates" in checked.stdout
    expected = {  # (severity, participant) -> receivers, in order
        ("exhausted", "12345678"): "pix-page",
        ("critical", "12345678"): "pix-page",
        ("warning", "12345678"): "pix-warning",
        ("exhausted", "23456789"): "indirect-participants,pix-page",  # an indirect participant
        ("warning", "23456789"): "indirect-participants,pix-warning",
    }
    for (severity, ispb), receivers in expected.items():
        routed = run(
            tool("amtool"), "config", "routes", "test", f"--config.file={config}",
            f"severity={severity}", f"ispb={ispb}", "policy=KEYS_CHECK", "alertname=X",
        )  # fmt: skip
        assert routed.stdout.strip() == receivers, (severity, ispb, routed.stdout, routed.stderr)
    parsed = yaml.safe_load(config.read_text())
    assert "ispb" in parsed["route"]["group_by"]
    inhibits = {
        (tuple(rule["source_matchers"]), tuple(rule["target_matchers"])): rule["equal"]
        for rule in parsed["inhibit_rules"]
    }
    assert inhibits == {
        (('severity = "exhausted"',), ('severity =~ "critical|warning"',)): ["ispb", "policy"],
        (('severity = "critical"',), ('severity = "warning"',)): ["ispb", "policy"],
    }
    receivers = {receiver["name"]: receiver for receiver in parsed["receivers"]}
    assert receivers["pix-page"]["pagerduty_configs"]  # pages: EXHAUSTED and CRITICAL only
    assert "pagerduty_configs" not in receivers["pix-warning"]
    for receiver in receivers.values():
        for kind in ("pagerduty_configs", "slack_configs", "webhook_configs", "email_configs"):
            assert all(c["send_resolved"] for c in receiver.get(kind, [])), receiver["name"]
    # secrets from files only
    assert "routing_key" not in str(parsed).replace("routing_key_file", "")
    assert parsed["global"]["smtp_auth_password_file"] and parsed["global"]["slack_api_url_file"]


def _render(template: str, data: dict, tmp_path) -> str:  # type: ignore[no-untyped-def]
    (tmp_path / "data.json").write_text(json.dumps(data))
    rendered = run(
        tool("amtool"), "template", "render",
        f"--template.glob={DEPLOY / 'alertmanager' / 'templates' / '*.tmpl'}",
        f"--template.data={tmp_path / 'data.json'}",
        f'--template.text={{{{ template "{template}" . }}}}',
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    return rendered.stdout


def test_the_notification_templates_show_participant_policy_remaining_first_429_and_runbook(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    labels = {
        "alertname": "DictRateLimitExhausted", "severity": "exhausted", "ispb": "12345678",
        "policy": "ENTRIES_READ_PARTICIPANT_ANTISCAN", "category": "A",
    }  # fmt: skip
    annotations = {
        "summary": "DICT bucket ENTRIES_READ_PARTICIPANT_ANTISCAN of 12345678 is EMPTY",
        "description": "ENTRIES_READ_PARTICIPANT_ANTISCAN (participant 12345678) is exhausted.",
        "remaining": "0%",
        "time_to_429": "0s",
        "runbook_url": "https://wiki.example.internal/dict-ratelimit/runbook#bucket-exhausted",
    }
    resolved_labels = {**labels, "severity": "warning", "policy": "KEYS_CHECK"}
    alert = {"labels": labels, "annotations": annotations, "startsAt": "2026-12-04T10:00:00Z"}
    data = {
        **AMTOOL_DATA,
        "alerts": [
            {**alert, "status": "firing"},
            {"labels": resolved_labels, "annotations": {**annotations, "remaining": "35%"},
             "status": "resolved", "startsAt": "2026-12-04T09:00:00Z",
             "endsAt": "2026-12-04T09:40:00Z"},
        ],
        "commonLabels": {"ispb": "12345678", "alertname": "DictRateLimitExhausted"},
    }  # fmt: skip
    title = _render("dict.title", data, tmp_path)
    assert title == "[FIRING:1] DictRateLimitExhausted · participant 12345678"
    text = _render("dict.text", data, tmp_path)
    assert (
        "EXHAUSTED · ENTRIES_READ_PARTICIPANT_ANTISCAN of 12345678 · 0% left · first 429: 0s"
        in text
    )
    assert "Runbook: https://wiki.example.internal/dict-ratelimit/runbook#bucket-exhausted" in text
    assert "Resolved:\nWARNING · KEYS_CHECK of 12345678 · 35% left" in text
    html = _render("dict.email.html", data, tmp_path)
    assert "Left: 0%<br>" in html and "First 429: 0s<br>" in html
    assert 'href="https://wiki.example.internal/dict-ratelimit/runbook#bucket-exhausted"' in html
