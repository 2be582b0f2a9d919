"""Engines for the application database, with fast and clear failures.

SQLAlchemy 2.1 maps a plain ``postgresql://`` URL to psycopg 3; this project ships psycopg2, so
every URL is normalised to ``postgresql+psycopg2://`` here, in one place.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

SCHEMA = "dict_ratelimit"
DRIVER = "postgresql+psycopg2"
_POSTGRES_DRIVERNAMES = {"postgres", "postgresql", "postgresql+psycopg2", "psycopg2"}


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached; the message names the host and port."""


def normalize_url(url: str | URL) -> URL:
    """Parse ``url`` and force the psycopg2 driver; reject anything that is not PostgreSQL."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except Exception as exc:  # sqlalchemy raises ArgumentError with the URL in it
        raise ValueError("DATABASE_URL is not a valid URL (expected postgresql://...)") from exc
    if parsed.drivername not in _POSTGRES_DRIVERNAMES:
        raise ValueError(f"DATABASE_URL must be a PostgreSQL URL, got scheme {parsed.drivername!r}")
    return parsed.set(drivername=DRIVER)


def redact(url: str | URL) -> str:
    """The URL as text with its password hidden, for logs and error messages."""
    return normalize_url(url).render_as_string(hide_password=True)


def describe_target(url: URL) -> str:
    """``host:port/database`` of ``url``, for error messages."""
    return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


def create_db_engine(
    url: str | URL,
    *,
    connect_timeout: int = 5,
    application_name: str = "dict-ratelimit",
    statement_timeout_seconds: float | None = None,
) -> Engine:
    """An engine with a connect timeout, TCP keepalives (a dead peer is noticed in ~20 s, not
    hours), pre-ping on checkout (survives a server restart) and a small pool; with
    ``statement_timeout_seconds`` the server cancels any statement that runs longer."""
    parsed = normalize_url(url)
    connect_args: dict[str, object] = {
        "connect_timeout": connect_timeout,
        "application_name": application_name,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 2,
    }
    if statement_timeout_seconds is not None:
        connect_args["options"] = f"-c statement_timeout={int(statement_timeout_seconds * 1000)}"
    return sa.create_engine(
        parsed,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        connect_args=connect_args,
    )


def check_connection(engine: Engine) -> None:
    """Open one connection, turning a driver error into :class:`DatabaseUnavailable`."""
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailable(
            f"cannot reach PostgreSQL at {describe_target(engine.url)}: {reason}"
        ) from exc


def with_database(url: str | URL, database: str) -> URL:
    """The same server and credentials as ``url``, another database."""
    return normalize_url(url).set(database=database)


def ensure_database(url: str | URL, *, connect_timeout: int = 5) -> bool:
    """Create the database named in ``url`` when it does not exist; True when created."""
    target = normalize_url(url)
    admin = create_db_engine(
        with_database(target, "postgres"), connect_timeout=connect_timeout
    ).execution_options(isolation_level="AUTOCOMMIT")
    try:
        check_connection(admin)
        with admin.connect() as connection:
            exists = connection.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": target.database},
            ).scalar()
            if exists:
                return False
            if not target.database:
                raise ValueError("the database URL names no database")
            quoted = connection.dialect.identifier_preparer.quote(target.database)
            connection.execute(sa.text(f"CREATE DATABASE {quoted}"))
            return True
    finally:
        admin.dispose()
