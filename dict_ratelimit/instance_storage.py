"""Dagster's instance storage in PostgreSQL, with a small connection pool in every process.

dagster-postgres opens a new connection for every operation of its run, event-log and schedule
storages (SQLAlchemy's ``NullPool``), except in the webserver. A monitor run writes about 33
events and updates the asset index, so one 1-participant run opened about 100 connections to
the instance database: 0.4 s of a 0.8 s run on loopback, more over TLS to a managed server
(``bench/bench_run_cost.py``). ``dagster.yaml`` names this class as its ``custom`` storage with
the same ``postgres_db`` configuration, so every process that loads the instance (run
workers, the daemon, the CLI) keeps one connection per storage (up to ten more under load)
and checks it before use, so a PostgreSQL restart costs a reconnect, not a failed run.

A connection pooler in front of the server (PgBouncer) was measured too and saves nothing
here: each of the 100 client connections still pays its own start-up and authentication.
"""

from __future__ import annotations

from typing import Any

from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import create_pg_engine

#: Connections each storage keeps open / may open on top under concurrency (the daemon's
#: threads), and how long a connection lives before it is replaced.
POOL_SIZE = 1
MAX_OVERFLOW = 10
POOL_RECYCLE_SECONDS = 3600


class PooledPostgresStorage(DagsterPostgresStorage):
    """``DagsterPostgresStorage`` whose three storages pool their connections."""

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> PooledPostgresStorage:
        storage = super().from_config_value(inst_data, config_value)
        parts = (storage._run_storage, storage._event_log_storage, storage._schedule_storage)
        for part in parts:
            pool_connections(part)
        # Disposing an instance disposes its run and event-log storages (not the schedule
        # storage), and dagster-postgres's dispose leaves the engines alone: a code server
        # builds an instance per sensor evaluation, so close all three pools right there.
        close_pools_on_dispose(storage._run_storage, parts)
        return storage  # type: ignore[return-value]


def close_pools_on_dispose(owner: Any, parts: tuple[Any, ...]) -> None:
    """After ``owner.dispose()``, dispose of the engine of every one of ``parts``."""
    dispose = owner.dispose

    def dispose_and_close() -> None:
        dispose()
        for part in parts:
            part._engine.dispose()

    owner.dispose = dispose_and_close


def pool_connections(part: Any) -> None:
    """Replace a dagster-postgres storage's engine by a pooled one: the same URL, token
    provider, connection options and autocommit isolation as the webserver's pooled engine
    (``optimize_for_webserver``), without its statement timeout, plus a pre-ping."""
    kwargs: dict[str, Any] = {
        "isolation_level": "AUTOCOMMIT",
        "pool_size": POOL_SIZE,
        "max_overflow": MAX_OVERFLOW,
        "pool_recycle": POOL_RECYCLE_SECONDS,
        "pool_pre_ping": True,
    }
    options = part._engine.url.query.get("options")
    if options:
        kwargs["connect_args"] = {"options": options}
    previous = part._engine
    part._engine = create_pg_engine(part.postgres_url, part._token_provider, **kwargs)
    previous.dispose()
