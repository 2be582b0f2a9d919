"""A throw-away embedded PostgreSQL with the schema migrated, for the benchmarks."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import URL, Engine

from dict_ratelimit.settings import project_root
from dict_ratelimit.storage.database import create_db_engine, normalize_url
from dict_ratelimit.storage.embedded import EmbeddedPostgres
from dict_ratelimit.storage.migrations import migrate


@contextlib.contextmanager
def bench_database() -> Iterator[tuple[URL, Engine]]:
    """(url, engine) of a migrated database on a fresh server (fsync on, as in dev)."""
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as folder:
        server = EmbeddedPostgres(Path(folder))
        server.ensure_running()
        try:
            url = normalize_url(server.application_url("bench"))  # the application role
            engine = create_db_engine(url)
            try:
                migrate(url, project_root() / "sql", engine)
                yield url, engine
            finally:
                engine.dispose()
        finally:
            server.stop()
