"""Dagster resources: small ConfigurableResource classes fed by ``dg.EnvVar``."""

import datetime as dt
import os
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import PrivateAttr
from sqlalchemy.engine import Engine

from dict_ratelimit.bridge.client import BridgeClient, TlsConfig
from dict_ratelimit.clock import Clock, clock_at
from dict_ratelimit.domain.alerts import AlertRules
from dict_ratelimit.domain.catalog import KNOWN_POLICY_NAMES
from dict_ratelimit.domain.readings import ISPB_PATTERN
from dict_ratelimit.domain.thresholds import ThresholdConfig, parse_threshold_config
from dict_ratelimit.events.cloudevents import DEFAULT_SOURCE
from dict_ratelimit.events.publisher import DEFAULT_PRODUCER_NAME, DEFAULT_TOPIC, PulsarTarget
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
        if context.log is not None:
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
    """The institution's Bridge to DICT and the participants to monitor.

    Every field comes from an environment variable (see README); secrets (token, key) are
    ``EnvVar`` so they never appear in the UI.
    """

    target: str
    participants: str
    deadline_seconds: float = 10.0
    tls: bool = False
    tls_ca: str | None = None
    tls_client_cert: str | None = None
    tls_client_key: str | None = None
    tls_server_name: str | None = None
    bearer_token: str | None = None
    max_clock_skew_seconds: int = 600
    extra_policies: str = ""
    max_concurrency: int = 16
    poll_jitter_seconds: float = 0.0
    retry_wait_seconds: float = 15.0
    request_stats_window_seconds: int = 300  # 0: do not ask the Bridge for response counts

    def participant_list(self) -> list[str]:
        """Monitored ISPBs, in order, validated (8 digits each, no duplicates)."""
        ispbs = [item.strip() for item in self.participants.replace(";", ",").split(",")]
        ispbs = [item for item in ispbs if item]
        if not ispbs:
            raise ValueError("DICT_RATELIMIT_PARTICIPANTS lists no participant")
        bad = [item for item in ispbs if not ISPB_PATTERN.match(item)]
        if bad:
            raise ValueError(f"DICT_RATELIMIT_PARTICIPANTS: not 8-digit ISPBs: {bad}")
        if len(set(ispbs)) != len(ispbs):
            raise ValueError("DICT_RATELIMIT_PARTICIPANTS lists a participant twice")
        return ispbs

    def known_policies(self) -> frozenset[str]:
        """The catalog's names plus those an operator allowed (a new DICT policy)."""
        extra = {name.strip() for name in self.extra_policies.split(",") if name.strip()}
        return KNOWN_POLICY_NAMES | extra

    def client(self) -> BridgeClient:
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
            deadline_seconds=self.deadline_seconds,
        )


def _optional_env(name: str) -> dg.EnvVar | None:
    """``EnvVar(name)`` when the variable is set where the definitions load, else None."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def bridge_resource_from_env() -> BridgeResource:
    """The Bridge resource as deployed: every value from ``DICT_RATELIMIT_BRIDGE_*`` variables."""
    numeric = {
        "deadline_seconds": ("DICT_RATELIMIT_BRIDGE_DEADLINE_SECONDS", float),
        "max_clock_skew_seconds": ("DICT_RATELIMIT_MAX_CLOCK_SKEW_SECONDS", int),
        "max_concurrency": ("DICT_RATELIMIT_BRIDGE_MAX_CONCURRENCY", int),
        "request_stats_window_seconds": ("DICT_RATELIMIT_REQUEST_STATS_WINDOW_SECONDS", int),
        "poll_jitter_seconds": ("DICT_RATELIMIT_POLL_JITTER_SECONDS", float),
    }
    values: dict[str, Any] = {
        key: cast(os.environ[env]) for key, (env, cast) in numeric.items() if os.environ.get(env)
    }
    return BridgeResource(
        target=dg.EnvVar("DICT_RATELIMIT_BRIDGE_TARGET"),
        participants=dg.EnvVar("DICT_RATELIMIT_PARTICIPANTS"),
        tls=os.environ.get("DICT_RATELIMIT_BRIDGE_TLS", "").lower() in ("1", "true", "yes"),
        tls_ca=_optional_env("DICT_RATELIMIT_BRIDGE_TLS_CA"),
        tls_client_cert=_optional_env("DICT_RATELIMIT_BRIDGE_TLS_CLIENT_CERT"),
        tls_client_key=_optional_env("DICT_RATELIMIT_BRIDGE_TLS_CLIENT_KEY"),
        tls_server_name=_optional_env("DICT_RATELIMIT_BRIDGE_TLS_SERVER_NAME"),
        bearer_token=_optional_env("DICT_RATELIMIT_BRIDGE_TOKEN"),
        extra_policies=os.environ.get("DICT_RATELIMIT_EXTRA_POLICIES", ""),
        **values,
    )


class ThresholdsResource(dg.ConfigurableResource):
    """Threshold configuration: defaults, overridden by the YAML file named in
    ``DICT_RATELIMIT_THRESHOLDS_FILE`` (validated when a run starts, with clear errors)."""

    path: str | None = None

    def config(self) -> ThresholdConfig:
        if not self.path:
            return parse_threshold_config(None, KNOWN_POLICY_NAMES)
        return load_threshold_file(Path(self.path))


class AlertRulesResource(dg.ConfigurableResource):
    """When alerts open, resolve and go stale (``DICT_RATELIMIT_ALERT_*``)."""

    fire_after: int = 1
    clear_after: int = 2
    stale_after_minutes: float = 15.0
    event_source: str = DEFAULT_SOURCE

    def rules(self) -> AlertRules:
        return AlertRules(
            fire_after=self.fire_after,
            clear_after=self.clear_after,
            stale_after=dt.timedelta(minutes=self.stale_after_minutes),
        ).validate()


def alert_rules_from_env() -> AlertRulesResource:
    variables = {
        "fire_after": ("DICT_RATELIMIT_ALERT_FIRE_AFTER", int),
        "clear_after": ("DICT_RATELIMIT_ALERT_CLEAR_AFTER", int),
        "stale_after_minutes": ("DICT_RATELIMIT_ALERT_STALE_AFTER_MINUTES", float),
        "event_source": ("DICT_RATELIMIT_EVENT_SOURCE", str),
    }
    values = {
        key: cast(os.environ[env]) for key, (env, cast) in variables.items() if os.environ.get(env)
    }
    return AlertRulesResource(**values)


class PulsarResource(dg.ConfigurableResource):
    """Where alert events go (``DICT_RATELIMIT_PULSAR_*``); no URL = not configured, events
    stay in the outbox. The token is an ``EnvVar``: never shown in the UI."""

    service_url: str = ""
    topic: str = DEFAULT_TOPIC
    producer_name: str = DEFAULT_PRODUCER_NAME
    timeout_seconds: float = 10.0
    auth_token: str | None = None
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
        )


def pulsar_from_env() -> PulsarResource:
    values: dict[str, Any] = {}
    for key, env, cast in (
        ("topic", "DICT_RATELIMIT_PULSAR_TOPIC", str),
        ("producer_name", "DICT_RATELIMIT_PULSAR_PRODUCER_NAME", str),
        ("timeout_seconds", "DICT_RATELIMIT_PULSAR_TIMEOUT_SECONDS", float),
        ("batch_limit", "DICT_RATELIMIT_PULSAR_BATCH_LIMIT", int),
    ):
        if os.environ.get(env):
            values[key] = cast(os.environ[env])
    return PulsarResource(
        service_url=_optional_env("DICT_RATELIMIT_PULSAR_URL") or "",
        auth_token=_optional_env("DICT_RATELIMIT_PULSAR_TOKEN"),
        **values,
    )


def default_resources() -> dict[str, object]:
    """Resources of the deployed code location, all read from the environment at run time."""
    return {
        "postgres": PostgresResource(database_url=dg.EnvVar("DATABASE_URL")),
        "bridge": bridge_resource_from_env(),
        "thresholds": ThresholdsResource(path=_optional_env("DICT_RATELIMIT_THRESHOLDS_FILE")),
        "alert_rules": alert_rules_from_env(),
        "pulsar": pulsar_from_env(),
        "clock": ClockResource(),
    }
