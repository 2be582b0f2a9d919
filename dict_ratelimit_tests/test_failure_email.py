"""A failed run of ours reaches someone: the e-mail sensor against a real SMTP server.

The server (aiosmtpd on loopback) requires STARTTLS with a certificate of a throw-away CA and
a login, as a real relay does; the sensor sends through Dagster's own SMTP code.
"""

from __future__ import annotations

import email
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy.engine import URL

from dict_ratelimit.definitions import build_definitions
from dict_ratelimit.defs.failures import SENSOR_NAME, email_on_run_failure
from dict_ratelimit.defs.monitor import TICK_TAGS, monitor_job
from dict_ratelimit.defs.resources import PostgresResource, ThresholdsResource
from dict_ratelimit.defs.snapshots import SNAPSHOTS_FRESHNESS
from dict_ratelimit.defs.tags import SHARD_KEY
from dict_ratelimit.settings import Settings, get_settings
from dict_ratelimit.storage.embedded import free_port
from dict_ratelimit_tests.certs import issue, make_ca

PASSWORD = "smtp-s3cret-do-not-print"


@dataclass
class Mailbox:
    port: int
    messages: list[email.message.Message] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth: Any):  # type: ignore[no-untyped-def]
        if isinstance(auth, LoginPassword):
            self.logins.append((auth.login.decode(), auth.password.decode()))
            if auth.password.decode() == PASSWORD:
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


@pytest.fixture
def mailbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mailbox]:
    ca_pem, ca_cert, ca_key = make_ca("smtp-test-ca")
    server_pem = issue(ca_cert, ca_key, "localhost", server=True)
    (tmp_path / "ca.pem").write_bytes(ca_pem.cert)
    (tmp_path / "server.pem").write_bytes(server_pem.cert)
    (tmp_path / "server.key").write_bytes(server_pem.key)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))  # the sender trusts our CA
    box = Mailbox(port=free_port())
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=box.port,
        tls_context=tls,
        require_starttls=True,
        authenticator=box.authenticate,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


def _settings(box: Mailbox) -> Settings:
    return Settings(
        failure_email_to="oncall@example.com, pix-ops@example.com",
        failure_email_from="dict-ratelimit@example.com",
        failure_email_smtp_host="127.0.0.1",
        failure_email_smtp_port=box.port,
        failure_email_smtp_user="monitor",
        failure_email_smtp_password=PASSWORD,
        dagster_ui_url="https://dagster.example.internal/",
    )  # type: ignore[call-arg]


def test_a_failed_monitor_run_sends_one_email_with_the_job_shard_error_and_link(
    mailbox: Mailbox, tmp_path: Path, db_url: URL
) -> None:
    # a run that fails at its first step: the thresholds file is missing
    broken = {
        # a Portuguese file name: the error is not ASCII, the e-mail must still go
        "thresholds": ThresholdsResource(path=str(tmp_path / "limiares-não.yaml")),
        "postgres": PostgresResource(database_url=db_url.render_as_string(hide_password=False)),
    }
    job = build_definitions(broken).resolve_job_def("monitor_job")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            partition_key="2026-12-04",
            tags={**TICK_TAGS, SHARD_KEY: "2/4"},
        )
        assert not result.success
        [failure] = [
            e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE
        ]
        sensor = email_on_run_failure(_settings(mailbox), [monitor_job])
        assert sensor is not None and sensor.name == SENSOR_NAME
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
        context = dg.build_run_status_sensor_context(
            sensor_name=SENSOR_NAME,
            dagster_event=failure,
            dagster_instance=instance,
            dagster_run=result.dagster_run,
        ).for_run_failure()
        sensor(context)  # type: ignore[call-arg]

    [message] = mailbox.messages
    assert mailbox.logins == [("monitor", PASSWORD)]  # over STARTTLS: the server requires it
    run_id = result.run_id
    assert (
        message["Subject"] == f"[dict-ratelimit] monitor_job (shard 2/4) failed: run {run_id[:8]}"
    )
    assert "oncall@example.com" in message["To"] and "pix-ops@example.com" in message["To"]
    body = message.get_payload()
    assert isinstance(body, str)
    assert f"Run: {run_id}" in body and "Tag dict_ratelimit/shard: 2/4" in body
    assert "limiares-n&#227;o.yaml" in body  # the error names what is wrong, every letter
    assert f"https://dagster.example.internal/runs/{run_id}" in body
    assert PASSWORD not in message.as_string()


def test_without_a_recipient_there_is_no_sensor_and_half_a_sender_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert email_on_run_failure(Settings(), [monitor_job]) is None  # type: ignore[call-arg]
    sensors = {sensor.name for sensor in build_definitions().sensors or []}
    assert SENSOR_NAME not in sensors
    half = Settings(failure_email_to="oncall@example.com")  # type: ignore[call-arg]
    problems = half.check_consistency()
    assert any(
        "FAILURE_EMAIL_TO is set: also set DICT_RATELIMIT_FAILURE_EMAIL_FROM, "
        "DICT_RATELIMIT_FAILURE_EMAIL_SMTP_HOST, DICT_RATELIMIT_FAILURE_EMAIL_SMTP_PASSWORD" in p
        for p in problems
    ), problems
    with pytest.raises(ValueError, match="not e-mail addresses: 'oncall'"):
        Settings(failure_email_to="oncall, ops@example.com")  # type: ignore[call-arg]
    monkeypatch.setenv("DICT_RATELIMIT_FAILURE_EMAIL_TO", "oncall@example.com")
    monkeypatch.setenv("DICT_RATELIMIT_FAILURE_EMAIL_FROM", "monitor@example.com")
    monkeypatch.setenv("DICT_RATELIMIT_FAILURE_EMAIL_SMTP_HOST", "smtp.example.com")
    monkeypatch.setenv("DICT_RATELIMIT_FAILURE_EMAIL_SMTP_PASSWORD", PASSWORD)
    get_settings.cache_clear()
    try:
        configured = build_definitions()
        assert configured.resolve_sensor_def(SENSOR_NAME).default_status == (
            dg.DefaultSensorStatus.RUNNING
        )
    finally:
        get_settings.cache_clear()


def test_policy_snapshots_warns_after_10_minutes_and_fails_after_15() -> None:
    spec = (
        build_definitions()
        .resolve_assets_def("policy_snapshots")
        .specs_by_key[dg.AssetKey("policy_snapshots")]
    )
    assert spec.freshness_policy == SNAPSHOTS_FRESHNESS
    assert SNAPSHOTS_FRESHNESS.warn_window.to_timedelta().total_seconds() == 600  # type: ignore[union-attr]
    assert SNAPSHOTS_FRESHNESS.fail_window.to_timedelta().total_seconds() == 900  # type: ignore[attr-defined]
