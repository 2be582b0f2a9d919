"""Dagster resources: small ConfigurableResource classes built from the validated settings.

:func:`default_resources` turns :class:`~dict_ratelimit.settings.Settings` into resources:
plain values are copied (they show in the UI, which is the point), secrets (the database URL,
tokens, private keys) are ``dg.EnvVar`` so that the UI and the run storage only ever see the
variable's name.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import PrivateAttr
from sqlalchemy.engine import Engine

from dict_ratelimit.bridge.client import BridgeClient, TlsConfig
from dict_ratelimit.clock import Clock, clock_at
from dict_ratelimit.domain.alerts import AlertRules
from dict_ratelimit.domain.catalog import KNOWN_POLICY_NAMES
from dict_ratelimit.domain.thresholds import ThresholdConfig, parse_threshold_config
from dict_ratelimit.domain.watch import WatchRules
from dict_ratelimit.events.cloudevents import DEFAULT_SOURCE
from dict_ratelimit.events.publisher import DEFAULT_PRODUCER_NAME, DEFAULT_TOPIC, PulsarTarget
from dict_ratelimit.settings import Settings, get_settings, parse_participants
from dict_ratelimit.storage.database import create_db_engine, redact
from dict_ratelimit.thresholds_file import load_threshold_file


class PostgresResource(dg.ConfigurableResource):
    """The application database. ``database_url`` comes from ``DATABASE_URL`` via ``EnvVar``,
    so the UI shows the variable's name, never the password."""

    database_url: str
    connect_timeout_seconds: int = 5

    _engine: Engine | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._engine = create_db_engine(
            self.database_url,
            connect_timeout=self.connect_timeout_seconds,
            application_name="dict-ratelimit-dagster",
        )
        if context.log is not None and context.run is not None:
            # in a run's event log (which database); not at every sensor tick
            context.log.debug(f"database: {redact(self.database_url)}")

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @property
    def engine(self) -> Engine:
        """The engine of this execution (created in ``setup_for_execution``)."""
        if self._engine is None:
            self._engine = create_db_engine(
                self.database_url, connect_timeout=self.connect_timeout_seconds
            )
        return self._engine


class ClockResource(dg.ConfigurableResource):
    """Where "now" comes from for every decision of a run (staleness, the watchdog, the poll's
    own time). Unset: the wall clock. ``frozen_at`` (an ISO instant) pins it: replays, tests,
    and a tick run against a simulator whose clock is not ours."""

    frozen_at: str | None = None

    def clock(self) -> Clock:
        return clock_at(self.frozen_at)


class BridgeResource(dg.ConfigurableResource):
    """The institution's Bridge to DICT and the participants to monitor."""

    target: str | None = None
    participants: str = ""
    deadline_seconds: float = 10.0
    tls: bool = False
    tls_ca: str | None = None
    tls_client_cert: str | None = None
    tls_client_key: str | None = None
    tls_server_name: str | None = None
    bearer_token: str | None = None
    allow_plaintext_token: bool = False
    max_clock_skew_seconds: int = 600
    extra_policies: str = ""
    max_concurrency: int = 16
    poll_jitter_seconds: float = 0.0
    retry_wait_seconds: float = 15.0
    request_stats_window_seconds: int = 300  # 0: do not ask the Bridge for response counts

    def participant_list(self) -> list[str]:
        """Monitored ISPBs, in order, validated (8 digits each, no duplicates)."""
        try:
            ispbs = parse_participants(self.participants)
        except ValueError as error:
            raise ValueError(f"DICT_RATELIMIT_PARTICIPANTS: {error}") from None
        if not ispbs:
            raise ValueError("DICT_RATELIMIT_PARTICIPANTS lists no participant")
        return ispbs

    def known_policies(self) -> frozenset[str]:
        """The catalog's names plus those an operator allowed (a new DICT policy)."""
        extra = {name.strip() for name in self.extra_policies.split(",") if name.strip()}
        return KNOWN_POLICY_NAMES | extra

    def max_skew(self) -> dt.timedelta | None:
        """The clock-skew check's limit (None: off)."""
        seconds = self.max_clock_skew_seconds
        return dt.timedelta(seconds=seconds) if seconds > 0 else None

    def stats_window(self) -> dt.timedelta | None:
        """The request counts' window (None: the Bridge is not asked)."""
        seconds = self.request_stats_window_seconds
        return dt.timedelta(seconds=seconds) if seconds > 0 else None

    def client(self) -> BridgeClient:
        if not self.target:
            raise ValueError("DICT_RATELIMIT_BRIDGE_TARGET is not set (host:port of the Bridge)")
        tls = None
        if self.tls or self.tls_ca or self.tls_client_cert:
            tls = TlsConfig(
                ca=self.tls_ca,
                client_cert=self.tls_client_cert,
                client_key=self.tls_client_key,
                server_name_override=self.tls_server_name,
            )
        return BridgeClient(
            self.target,
            tls=tls,
            bearer_token=self.bearer_token,
            allow_plaintext_token=self.allow_plaintext_token,
            deadline_seconds=self.deadline_seconds,
        )


class ThresholdsResource(dg.ConfigurableResource):
    """Threshold configuration: defaults, overridden by the YAML file named in
    ``DICT_RATELIMIT_THRESHOLDS_FILE`` (checked when the code location loads and again before
    a run polls the Bridge)."""

    path: str | None = None
    extra_policies: str = ""

    def config(self) -> ThresholdConfig:
        extra = frozenset(name.strip() for name in self.extra_policies.split(",") if name.strip())
        if not self.path:
            return parse_threshold_config(None, KNOWN_POLICY_NAMES | extra)
        return load_threshold_file(Path(self.path), extra)


class AlertRulesResource(dg.ConfigurableResource):
    """When alerts open, resolve and go stale (``DICT_RATELIMIT_ALERT_*``)."""

    fire_after: int = 1
    clear_after: int = 2
    stale_after_minutes: float = 15.0
    settle_after_minutes: float = 4.0
    event_source: str = DEFAULT_SOURCE
    runbook_base_url: str | None = None

    def rules(self) -> AlertRules:
        return AlertRules(
            fire_after=self.fire_after,
            clear_after=self.clear_after,
            stale_after=dt.timedelta(minutes=self.stale_after_minutes),
            settle_after=dt.timedelta(minutes=self.settle_after_minutes),
        ).validate()


class WatchResource(dg.ConfigurableResource):
    """The watch lane (``DICT_RATELIMIT_WATCH_*``): how it picks buckets and what it may
    spend of the monitor's own DICT budget."""

    sweep_interval_seconds: float = 300.0
    read_budget_ratio: float = 0.5
    list_budget_ratio: float = 0.25
    counts: bool = True

    def rules(self) -> WatchRules:
        return WatchRules(
            sweep_interval_s=self.sweep_interval_seconds,
            read_budget_ratio=self.read_budget_ratio,
            list_budget_ratio=self.list_budget_ratio,
        )


class PulsarResource(dg.ConfigurableResource):
    """Where alert events go (``DICT_RATELIMIT_PULSAR_*``); no URL = not configured, events
    stay in the outbox. The token and the client key are ``EnvVar``: never shown."""

    service_url: str = ""
    topic: str = DEFAULT_TOPIC
    producer_name: str = DEFAULT_PRODUCER_NAME
    timeout_seconds: float = 10.0
    auth_token: str | None = None
    tls_ca: str | None = None
    tls_client_cert: str | None = None
    tls_client_key: str | None = None
    tls_validate_hostname: bool = True
    allow_plaintext_token: bool = False
    batch_limit: int = 500
    time_budget_seconds: float = 40.0  # well under Dagster's 60 s sensor limit

    def target(self) -> PulsarTarget | None:
        if not self.service_url:
            return None
        return PulsarTarget(
            service_url=self.service_url,
            topic=self.topic,
            producer_name=self.producer_name,
            timeout_seconds=self.timeout_seconds,
            auth_token=self.auth_token or None,
            tls_ca=self.tls_ca,
            tls_client_cert=self.tls_client_cert,
            tls_client_key=self.tls_client_key,
            tls_validate_hostname=self.tls_validate_hostname,
            allow_plaintext_token=self.allow_plaintext_token,
        ).validate()


def _secret(present: object, variable: str) -> Any:
    """``EnvVar(variable)`` when the setting is present, else None (a secret is never copied
    into the resource's config)."""
    return dg.EnvVar(variable) if present else None


def bridge_resource(
    settings: Settings,
    *,
    retry_wait_seconds: float = 15.0,
    deadline_cap_seconds: float | None = None,
) -> BridgeResource:
    deadline = settings.bridge_deadline_seconds
    if deadline_cap_seconds is not None:
        deadline = min(deadline, deadline_cap_seconds)
    return BridgeResource(
        target=settings.bridge_target,
        participants=",".join(settings.participants),
        deadline_seconds=deadline,
        retry_wait_seconds=retry_wait_seconds,
        tls=settings.bridge_tls,
        tls_ca=settings.bridge_tls_ca,
        tls_client_cert=settings.bridge_tls_client_cert,
        tls_client_key=_secret(
            settings.bridge_tls_client_key, "DICT_RATELIMIT_BRIDGE_TLS_CLIENT_KEY"
        ),
        tls_server_name=settings.bridge_tls_server_name,
        bearer_token=_secret(settings.bridge_token, "DICT_RATELIMIT_BRIDGE_TOKEN"),
        allow_plaintext_token=settings.bridge_allow_plaintext_token,
        max_clock_skew_seconds=settings.max_clock_skew_seconds,
        extra_policies=",".join(settings.extra_policies),
        max_concurrency=settings.bridge_max_concurrency,
        poll_jitter_seconds=settings.poll_jitter_seconds,
        request_stats_window_seconds=settings.request_stats_window_seconds,
    )


def thresholds_resource(settings: Settings) -> ThresholdsResource:
    return ThresholdsResource(
        path=str(settings.thresholds_file) if settings.thresholds_file else None,
        extra_policies=",".join(settings.extra_policies),
    )


def alert_rules_resource(settings: Settings) -> AlertRulesResource:
    return AlertRulesResource(
        fire_after=settings.alert_fire_after,
        clear_after=settings.alert_clear_after,
        stale_after_minutes=settings.alert_stale_after_minutes,
        settle_after_minutes=settings.alert_settle_after_minutes,
        event_source=settings.event_source,
        runbook_base_url=settings.runbook_base_url,
    )


def watch_resource(settings: Settings) -> WatchResource:
    return WatchResource(
        sweep_interval_seconds=settings.watch_sweep_interval_seconds,
        read_budget_ratio=settings.watch_read_budget_ratio,
        list_budget_ratio=settings.watch_list_budget_ratio,
        counts=settings.watch_counts,
    )


def pulsar_resource(settings: Settings) -> PulsarResource:
    return PulsarResource(
        service_url=settings.pulsar_url or "",
        topic=settings.pulsar_topic,
        producer_name=settings.pulsar_producer_name,
        timeout_seconds=settings.pulsar_timeout_seconds,
        auth_token=_secret(settings.pulsar_token, "DICT_RATELIMIT_PULSAR_TOKEN"),
        tls_ca=settings.pulsar_tls_ca,
        tls_client_cert=settings.pulsar_tls_client_cert,
        tls_client_key=_secret(
            settings.pulsar_tls_client_key, "DICT_RATELIMIT_PULSAR_TLS_CLIENT_KEY"
        ),
        tls_validate_hostname=settings.pulsar_tls_validate_hostname,
        allow_plaintext_token=settings.pulsar_allow_plaintext_token,
        batch_limit=settings.pulsar_batch_limit,
    )


def default_resources(settings: Settings | None = None) -> dict[str, object]:
    """Resources of the deployed code location, from the validated settings."""
    settings = settings or get_settings()
    return {
        "postgres": PostgresResource(
            database_url=dg.EnvVar("DATABASE_URL"),
            connect_timeout_seconds=settings.connect_timeout_seconds,
        ),
        "bridge": bridge_resource(settings),
        "thresholds": thresholds_resource(settings),
        "alert_rules": alert_rules_resource(settings),
        "pulsar": pulsar_resource(settings),
        "watch": watch_resource(settings),
        "clock": ClockResource(),
    }
