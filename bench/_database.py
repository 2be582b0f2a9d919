"""Throw-away embedded PostgreSQL databases with the schema migrated, for the benchmarks."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy.engine import URL, Engine

from dict_ratelimit.settings import PACKAGE_DIR
from dict_ratelimit.storage.database import create_db_engine, normalize_url
from dict_ratelimit.storage.embedded import EmbeddedPostgres
from dict_ratelimit.storage.migrations import migrate

DatabaseFactory = Callable[..., tuple[URL, Engine]]


@contextlib.contextmanager
def bench_server() -> Iterator[DatabaseFactory]:
    """A fresh server (fsync on, as in dev) and a factory of migrated databases on it, each
    owned by the application role; engines are disposed of when the server stops."""
    engines: list[Engine] = []
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as folder:
        server = EmbeddedPostgres(Path(folder))
        server.ensure_running()

        def database(name: str, schema: bool = True) -> tuple[URL, Engine]:
            url = normalize_url(server.application_url(name))  # the application role
            engine = create_db_engine(url)
            engines.append(engine)
            if schema:
                migrate(url, PACKAGE_DIR / "migrations", engine)
            return url, engine

        try:
            yield database
        finally:
            for engine in engines:
                engine.dispose()
            server.stop()


@contextlib.contextmanager
def bench_database() -> Iterator[tuple[URL, Engine]]:
    """(url, engine) of one migrated database on a fresh server."""
    with bench_server() as database:
        yield database("bench")
