"""Every environment variable the project reads, in one validated model (pydantic-settings).

The command line, the Dagster code location and the helpers build everything from
:func:`get_settings`: a wrong value stops them at start, with one line per problem naming the
variable and what it expects (:class:`SettingsError`), instead of a trace from deep inside a
run. Secrets (``DATABASE_URL``, tokens, private keys) are validated here too, but Dagster
resources still read them through ``dg.EnvVar`` so that no run stores or shows them.
"""

from __future__ import annotations

import datetime as dt
import re
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dict_ratelimit.domain.shards import MAX_SHARDS

PACKAGE_DIR = Path(__file__).resolve().parent
PREFIX = "DICT_RATELIMIT_"
ISPB = re.compile(r"[0-9]{8}")
POLICY_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_CRON_ITEM = r"(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?"
CRON_FIELD = re.compile(rf"{_CRON_ITEM}(,{_CRON_ITEM})*")
HOST_PORT = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}")
CATEGORIES = "ABCDEFGH"
#: The thresholds file is read at every run start: a few KB in practice, never megabytes.
THRESHOLDS_FILE_MAX_BYTES = 256 * 1024
#: Fields whose values must never appear in an error message.
SECRET_FIELDS = {"database_url", "bridge_token", "bridge_tls_client_key", "pulsar_token",
                 "pulsar_tls_client_key", "failure_email_smtp_password"}  # fmt: skip
EMAIL = re.compile(r"[^@\s,<>]+@[^@\s,<>]+\.[^@\s,<>]+")


def project_root() -> Path:
    """The source checkout when installed in editable mode, else the working directory."""
    candidate = PACKAGE_DIR.parent
    if (candidate / "pyproject.toml").is_file() and (candidate / "workspace.yaml").is_file():
        return candidate
    return Path.cwd()


class SettingsError(ValueError):
    """Invalid configuration: one line per problem, each naming the variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def parse_participants(text: str, variable: str = f"{PREFIX}PARTICIPANTS") -> list[str]:
    """Comma-separated 8-digit ISPBs, each once; blanks around them are ignored. The one
    parser of participant lists (the setting, the simulator's list, the CLI)."""
    items = [item.strip() for item in text.split(",")]
    items = [item for item in items if item]
    bad = [item for item in items if not ISPB.fullmatch(item)]
    if bad:
        raise ValueError(f"not 8-digit ISPBs: {', '.join(repr(b) for b in bad[:5])}")
    if len(set(items)) != len(items):
        twice = sorted({item for item in items if items.count(item) > 1})
        raise ValueError(f"listed twice: {', '.join(twice)}")
    return items


def parse_served(text: str) -> dict[str, str]:
    """``ISPB[:CATEGORY]`` items, comma-separated (the simulator's participants)."""
    served: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        ispb, _, category = item.partition(":")
        category = category.strip() or "A"
        parse_participants(ispb)
        if len(category) != 1 or category not in CATEGORIES:
            raise ValueError(f"category of {ispb} must be one of A-H, got {category!r}")
        if ispb in served:
            raise ValueError(f"listed twice: {ispb}")
        served[ispb] = category
    if not served:
        raise ValueError("lists no participant")
    return served


class Settings(BaseSettings):
    """Every environment variable of the project (see the README's configuration table)."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, extra="ignore", env_ignore_empty=True, validate_default=True
    )

    # -- databases -----------------------------------------------------------------------
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", f"{PREFIX}DATABASE_URL"),
        description="PostgreSQL URL of the application database; unset = embedded server.",
    )
    data_dir: Path = Field(default_factory=lambda: project_root() / ".data")
    connect_timeout_seconds: int = Field(default=5, ge=1, le=120)
    migrations_dir: Path = Field(default_factory=lambda: PACKAGE_DIR / "migrations")
    dagster_db_name: str = Field(
        default="dagster",
        validation_alias=AliasChoices("DAGSTER_PG_DB", f"{PREFIX}DAGSTER_DB_NAME"),
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$",
    )
    partitions_start: dt.date = dt.date(2025, 10, 1)
    #: Days and hours of the week of the capacity-planning tables and report (an IANA zone).
    report_timezone: str = "America/Sao_Paulo"
    retention_months: int = Field(default=13, ge=1, le=120)
    months_ahead: int = Field(default=2, ge=0, le=24)

    # -- processes of `dev` ----------------------------------------------------------------
    dagster_host: str = "127.0.0.1"
    dagster_port: int = Field(default=3000, ge=1, le=65535)
    exporter_host: str = "127.0.0.1"
    exporter_port: int = Field(default=9464, ge=0, le=65535)
    exporter_scrape_timeout_seconds: float = Field(default=4.0, gt=0, le=60)
    monitor_cron: str = "*/5 * * * *"
    #: Our processes' log lines: text, or one JSON object per line (dict_ratelimit/logs.py).
    log_format: Literal["text", "json"] = "text"
    #: Runs per tick, each polling its share of the participants (domain.shards).
    monitor_shards: int = Field(default=1, ge=1, le=MAX_SHARDS)
    simulator_participants: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: {"12345678": "A", "23456789": "D"}
    )
    simulator_scenario: str = "demo"

    # -- the Bridge ------------------------------------------------------------------------
    bridge_target: str | None = None
    participants: Annotated[list[str], NoDecode] = Field(default_factory=list)
    bridge_deadline_seconds: float = Field(default=10.0, gt=0, le=120)
    bridge_tls: bool = False
    bridge_tls_ca: str | None = None
    bridge_tls_client_cert: str | None = None
    bridge_tls_client_key: SecretStr | None = None
    bridge_tls_server_name: str | None = None
    bridge_token: SecretStr | None = None
    bridge_allow_plaintext_token: bool = False
    bridge_max_concurrency: int = Field(default=16, ge=1, le=256)
    max_clock_skew_seconds: int = Field(default=600, ge=0, le=86_400)
    extra_policies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    poll_jitter_seconds: float = Field(default=0.0, ge=0, le=240)
    request_stats_window_seconds: int = Field(default=300, ge=0, le=86_400)
    thresholds_file: Path | None = None

    # -- the watch lane --------------------------------------------------------------------
    watch: bool = True
    watch_interval_seconds: int = Field(default=15, ge=5, le=300)
    watch_sweep_interval_seconds: int = Field(default=300, ge=30, le=3600)
    watch_read_budget_ratio: float = Field(default=0.5, ge=0, le=1)
    watch_list_budget_ratio: float = Field(default=0.25, ge=0, le=1)
    watch_counts: bool = True

    # -- alerts and events -----------------------------------------------------------------
    alert_fire_after: int = Field(default=1, ge=1, le=100)
    alert_clear_after: int = Field(default=2, ge=1, le=100)
    alert_stale_after_minutes: float = Field(default=15.0, gt=0, le=24 * 60)
    alert_settle_after_minutes: float = Field(default=4.0, ge=0, le=24 * 60)
    event_source: str = Field(default="urn:lbconn:dict-ratelimit:monitor", min_length=1)
    #: Absolute URL of the published docs/runbook.md: links in the alert events and, through
    #: the exporter's dict_rate_limit_runbook_info, in the Prometheus alerts.
    runbook_base_url: str | None = None
    pulsar_url: str | None = None
    pulsar_topic: str = "persistent://lb-conn/dict/rate-limit-alerts"
    pulsar_producer_name: str = Field(default="dict-ratelimit-alert-publisher", min_length=1)
    pulsar_token: SecretStr | None = None
    pulsar_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    pulsar_batch_limit: int = Field(default=500, ge=1, le=100_000)
    pulsar_tls_ca: str | None = None
    pulsar_tls_client_cert: str | None = None
    pulsar_tls_client_key: SecretStr | None = None
    pulsar_tls_validate_hostname: bool = True
    pulsar_allow_plaintext_token: bool = False

    # -- failures of the monitor's own runs ------------------------------------------------
    #: Where an e-mail goes when a run of ours fails; empty: no e-mail sensor.
    failure_email_to: Annotated[list[str], NoDecode] = Field(default_factory=list)
    failure_email_from: str | None = None
    failure_email_smtp_host: str | None = None
    failure_email_smtp_port: int | None = Field(default=None, ge=1, le=65535)
    #: SSL (implicit TLS, port 465) or STARTTLS (port 587); Dagster's sender allows no plain text.
    failure_email_smtp_type: Literal["SSL", "STARTTLS"] = "STARTTLS"
    failure_email_smtp_user: str | None = None
    failure_email_smtp_password: SecretStr | None = None
    #: Base URL of the Dagster UI, for the run link in the e-mail.
    dagster_ui_url: str | None = None

    @field_validator("report_timezone")
    @classmethod
    def _known_time_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name like America/Sao_Paulo"
            ) from None
        return value

    @property
    def report_zone(self) -> ZoneInfo:
        return ZoneInfo(self.report_timezone)

    @field_validator("participants", mode="before")
    @classmethod
    def _participants(cls, value: Any) -> list[str]:
        return parse_participants(value) if isinstance(value, str) else value

    @field_validator("simulator_participants", mode="before")
    @classmethod
    def _served(cls, value: Any) -> dict[str, str]:
        return parse_served(value) if isinstance(value, str) else value

    @field_validator("failure_email_to", mode="before")
    @classmethod
    def _failure_email_to(cls, value: Any) -> list[str]:
        if not isinstance(value, str):
            return value
        addresses = [address.strip() for address in value.split(",") if address.strip()]
        bad = [address for address in addresses if not EMAIL.fullmatch(address)]
        if bad:
            raise ValueError(f"not e-mail addresses: {', '.join(map(repr, bad))}")
        return addresses

    @field_validator("extra_policies", mode="before")
    @classmethod
    def _extra_policies(cls, value: Any) -> list[str]:
        if not isinstance(value, str):
            return value
        names = [name.strip() for name in value.split(",") if name.strip()]
        bad = [name for name in names if not POLICY_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"not policy names (A-Z, 0-9, _): {', '.join(map(repr, bad))}")
        return names

    @field_validator("bridge_target")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        if value is not None and not HOST_PORT.fullmatch(value):
            raise ValueError(f"expected host:port, got {value!r}")
        return value

    @field_validator("monitor_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        fields = value.split()
        if len(fields) != 5 or not all(CRON_FIELD.fullmatch(field) for field in fields):
            raise ValueError(f"not a five-field cron expression: {value!r}")
        return value

    @field_validator("runbook_base_url")
    @classmethod
    def _runbook_base_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s#\"'<>]+", value):
            raise ValueError(f"not an absolute http(s) URL without a fragment: {value!r}")
        return value

    @field_validator("pulsar_url")
    @classmethod
    def _pulsar_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("pulsar://", "pulsar+ssl://")):
            raise ValueError("must start with pulsar:// or pulsar+ssl://")
        return value

    @field_validator("thresholds_file")
    @classmethod
    def _thresholds_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if not value.is_file():
            raise ValueError(f"{value}: file not found")
        if value.stat().st_size > THRESHOLDS_FILE_MAX_BYTES:
            raise ValueError(
                f"{value}: {value.stat().st_size:,} bytes, at most {THRESHOLDS_FILE_MAX_BYTES:,}"
            )
        return value

    # -- derived ---------------------------------------------------------------------------

    def known_policies(self) -> frozenset[str]:
        """DICT's policies plus the ones an operator allowed (a policy DICT added)."""
        from dict_ratelimit.domain.catalog import KNOWN_POLICY_NAMES

        return KNOWN_POLICY_NAMES | frozenset(self.extra_policies)

    def check_consistency(self) -> list[str]:
        """Problems no single variable shows (a secret sent in clear, a half mTLS pair)."""
        problems = []
        bridge_tls = self.bridge_tls or bool(self.bridge_tls_ca or self.bridge_tls_client_cert)
        if self.bridge_token and not bridge_tls and not self.bridge_allow_plaintext_token:
            problems.append(
                f"{PREFIX}BRIDGE_TOKEN: would be sent in clear; turn TLS on "
                f"({PREFIX}BRIDGE_TLS=true or {PREFIX}BRIDGE_TLS_CA) or allow it explicitly "
                f"with {PREFIX}BRIDGE_ALLOW_PLAINTEXT_TOKEN=true"
            )
        if bool(self.bridge_tls_client_cert) != bool(self.bridge_tls_client_key):
            problems.append(
                f"{PREFIX}BRIDGE_TLS_CLIENT_CERT / _TLS_CLIENT_KEY: mutual TLS needs both"
            )
        pulsar_tls = bool(self.pulsar_url and self.pulsar_url.startswith("pulsar+ssl://"))
        if self.pulsar_token and not pulsar_tls and not self.pulsar_allow_plaintext_token:
            problems.append(
                f"{PREFIX}PULSAR_TOKEN: would travel in clear over pulsar://; use a "
                f"pulsar+ssl:// URL or set {PREFIX}PULSAR_ALLOW_PLAINTEXT_TOKEN=true"
            )
        if (self.pulsar_tls_ca or self.pulsar_tls_client_cert) and not pulsar_tls:
            problems.append(f"{PREFIX}PULSAR_TLS_*: need a pulsar+ssl:// {PREFIX}PULSAR_URL")
        if bool(self.pulsar_tls_client_cert) != bool(self.pulsar_tls_client_key):
            problems.append(
                f"{PREFIX}PULSAR_TLS_CLIENT_CERT / _TLS_CLIENT_KEY: mutual TLS needs both"
            )
        if self.failure_email_to:
            missing = [
                f"{PREFIX}FAILURE_EMAIL_{name.upper()}"
                for name in ("from", "smtp_host", "smtp_password")
                if not getattr(self, f"failure_email_{name}")
            ]
            if missing:
                problems.append(f"{PREFIX}FAILURE_EMAIL_TO is set: also set {', '.join(missing)}")
        if self.thresholds_file is not None:
            from dict_ratelimit.domain.thresholds import ThresholdConfigError
            from dict_ratelimit.thresholds_file import load_threshold_file

            try:
                load_threshold_file(self.thresholds_file, frozenset(self.extra_policies))
            except ThresholdConfigError as error:
                problems.append(f"{PREFIX}THRESHOLDS_FILE: {error}")
        return problems


def variable_name(field: str) -> str:
    """The environment variable of a settings field."""
    aliases = {"database_url": "DATABASE_URL", "dagster_db_name": "DAGSTER_PG_DB"}
    return aliases.get(field, PREFIX + field.upper())


def _problems(error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "?"
        message = item["msg"].removeprefix("Value error, ")
        given = str(item.get("input"))[:60]
        shown = "" if field in SECRET_FIELDS else f" (got {given!r})"
        if "input" not in item or isinstance(item.get("input"), dict) or given in message:
            shown = ""
        lines.append(f"{variable_name(field)}: {message}{shown}")
    return lines


def load_settings(**overrides: Any) -> Settings:
    """Read and check the environment; :class:`SettingsError` lists every problem found."""
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        raise SettingsError(_problems(error)) from None
    problems = settings.check_consistency()
    if problems:
        raise SettingsError(problems)
    return settings


@cache
def get_settings() -> Settings:
    """Settings of this process (cached: the environment is read once)."""
    return load_settings()
