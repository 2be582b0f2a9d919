"""``dict-ratelimit``: the operator's command line (click, which Dagster already brings)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

import click
from sqlalchemy.engine import URL, Engine

from dict_ratelimit.settings import Settings, get_settings
from dict_ratelimit.storage.database import (
    DatabaseUnavailable,
    check_connection,
    create_db_engine,
    redact,
)
from dict_ratelimit.storage.embedded import EmbeddedPostgresError
from dict_ratelimit.storage.migrations import migrate, migration_status
from dict_ratelimit.storage.server import application_database, embedded_server


def _settings() -> Settings:
    try:
        return get_settings()
    except Exception as exc:  # pydantic ValidationError: say which variable is wrong
        raise click.ClickException(f"invalid configuration: {exc}") from exc


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[tuple[URL, Engine]]:
    """(url, engine) of the reachable application database, or a clean ClickException.

    An embedded server started for this command is stopped when it ends; one that was already
    running (``dev``, ``db start``) is left alone.
    """
    server = None
    try:
        url, server = application_database(settings)
        engine = create_db_engine(url, connect_timeout=settings.connect_timeout_seconds)
        check_connection(engine)
    except (DatabaseUnavailable, EmbeddedPostgresError, ValueError) as exc:
        if server is not None:
            server.stop()
        raise click.ClickException(str(exc)) from exc
    try:
        yield url, engine
    finally:
        engine.dispose()
        if server is not None:
            server.stop()


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def main(verbose: bool) -> None:
    """dict-ratelimit: DICT token-bucket monitoring for a Pix participant."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        logging.getLogger("yoyo").setLevel(logging.WARNING)


@main.group()
def db() -> None:
    """The application database: migrations and the embedded server."""


@db.command("migrate")
def db_migrate() -> None:
    """Apply pending SQL migrations and create the current and coming monthly partitions."""
    settings = _settings()
    with _database(settings) as (url, engine):
        applied, changes = migrate(url, settings.migrations_dir, engine)
    click.echo(f"database: {redact(url)}")
    if applied:
        for migration_id in applied:
            click.echo(f"applied  {migration_id}")
    else:
        click.echo("no pending migrations")
    for name in changes.created:
        click.echo(f"created  partition {name}")


@db.command("status")
def db_status() -> None:
    """List applied and pending migrations; exits 1 when some are pending."""
    settings = _settings()
    with _database(settings) as (url, _engine):
        status = migration_status(url, settings.migrations_dir)
    click.echo(f"database: {redact(url)}")
    for migration_id in status.applied:
        click.echo(f"applied  {migration_id}")
    for migration_id in status.pending:
        click.echo(f"pending  {migration_id}")
    if status.pending:
        sys.exit(1)


@db.command("start")
def db_start() -> None:
    """Start the embedded PostgreSQL (left running; stop it with `db stop`)."""
    settings = _settings()
    if settings.database_url:
        raise click.ClickException("DATABASE_URL is set: there is no embedded server to start")
    try:
        url, _server = application_database(settings)
    except EmbeddedPostgresError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(redact(url))


@db.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL of this project's data folder, if it runs."""
    server = embedded_server(_settings())
    click.echo("stopped" if server.stop_server() else "not running")


@db.command("url")
def db_url() -> None:
    """Print the application database URL (password hidden)."""
    with _database(_settings()) as (url, _engine):
        click.echo(redact(url))


@main.command()
def dev() -> None:
    """Run the whole system on embedded defaults: PostgreSQL, migrations, Dagster UI + daemon."""
    from dict_ratelimit.devstack import run_dev

    try:
        sys.exit(run_dev(_settings()))
    except (DatabaseUnavailable, EmbeddedPostgresError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc


if __name__ == "__main__":  # pragma: no cover
    main()
