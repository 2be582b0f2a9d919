"""Process-level settings, read from environment variables (pydantic-settings).

Dagster resources read their own values through ``dg.EnvVar`` so that secrets never show in
the UI; this module serves the command line and the helpers that run outside Dagster.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    """The source checkout when installed in editable mode, else the working directory."""
    candidate = PACKAGE_DIR.parent
    if (candidate / "pyproject.toml").is_file() and (candidate / "sql").is_dir():
        return candidate
    return Path.cwd()


class Settings(BaseSettings):
    """Every environment variable the processes outside Dagster read (see README)."""

    model_config = SettingsConfigDict(env_prefix="DICT_RATELIMIT_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "DICT_RATELIMIT_DATABASE_URL"),
        description="PostgreSQL URL of the application database; unset = embedded server.",
    )
    data_dir: Path = Field(
        default_factory=lambda: project_root() / ".data",
        description="Where the embedded PostgreSQL and the dev DAGSTER_HOME live.",
    )
    connect_timeout_seconds: int = Field(default=5, ge=1, le=120)
    migrations_dir: Path = Field(default_factory=lambda: project_root() / "sql")
    dagster_db_name: str = Field(
        default="dagster",
        validation_alias=AliasChoices("DAGSTER_PG_DB", "DICT_RATELIMIT_DAGSTER_DB_NAME"),
        description="Database holding Dagster's own instance storage (same server).",
    )
    dagster_host: str = "127.0.0.1"
    dagster_port: int = Field(default=3000, ge=1, le=65535)
    exporter_host: str = "127.0.0.1"
    exporter_port: int = Field(
        default=9464, ge=0, le=65535, description="Prometheus exporter port (0 = any free port)"
    )
    monitor_cron: str = Field(
        default="*/5 * * * *", description="Cron (UTC) of the monitor tick schedule."
    )
    bridge_target: str | None = Field(
        default=None, description="host:port of the Bridge; unset under `dev` = the simulator"
    )
    participants: str | None = Field(default=None, description="Comma-separated ISPBs.")
    simulator_participants: str = Field(
        default="12345678:A,23456789:D",
        description="ISPB:CATEGORY list the dev simulator serves (and the monitor watches).",
    )
    simulator_scenario: str = Field(default="demo", description="Scenario of the dev simulator.")
    partitions_start: str = Field(
        default="2025-10-01", description="First day of the daily metric partitions (UTC)."
    )
    retention_months: int = Field(default=13, ge=1)
    months_ahead: int = Field(default=2, ge=0, le=24)


@cache
def get_settings() -> Settings:
    """Settings of this process (cached: the environment is read once)."""
    return Settings()
