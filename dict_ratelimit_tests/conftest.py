"""Shared fixtures: one real PostgreSQL server per test session, a fresh database per test.

The server is the embedded one (started here in a temporary folder, fsync off) unless
``DATABASE_URL`` is set, in which case that server is used and must allow CREATE DATABASE.
Migrated databases are cloned from a template migrated once per session, so a test that writes
gets its own database in ~100 ms and drops it afterwards.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from dict_ratelimit.domain.retention import RetentionPolicy
from dict_ratelimit.settings import PACKAGE_DIR
from dict_ratelimit.storage.database import create_db_engine, normalize_url, with_database
from dict_ratelimit.storage.embedded import APPLICATION_ROLE, EmbeddedPostgres
from dict_ratelimit.storage.migrations import migrate
from dict_ratelimit_tests.pulsar_broker.broker import PulsarTestBroker

MIGRATIONS_DIR = PACKAGE_DIR / "migrations"
TIERS = ("unit", "db", "e2e")
DATABASE_FIXTURES = {"pg_server", "template_db", "db_url", "empty_db_url", "engine"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test gets one tier: e2e and db as marked, else db when it asks for a database,
    else unit (pure: the fast loop ``scripts/test -m unit``)."""
    for item in items:
        if any(item.get_closest_marker(tier) for tier in TIERS):
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        item.add_marker(pytest.mark.db if fixtures & DATABASE_FIXTURES else pytest.mark.unit)


TEMPLATE_DB = f"drl_template_{os.getpid()}"


@dataclass(frozen=True)
class SessionServer:
    """The session's PostgreSQL server: an administrator's URL (database ``postgres``, allowed
    to CREATE DATABASE) and the application role the tests connect as."""

    admin: URL
    application: URL  # same server and database ``postgres``, as the application role

    def database(self, name: str) -> URL:
        """URL of database ``name`` as the application role."""
        return with_database(self.application, name)


def _admin_engine(server: SessionServer) -> Engine:
    return create_db_engine(server.admin).execution_options(isolation_level="AUTOCOMMIT")


def create_test_database(server: SessionServer, name: str, template: str | None = None) -> URL:
    engine = _admin_engine(server)
    owner = server.application.username
    try:
        with engine.connect() as connection:
            clause = f' TEMPLATE "{template}"' if template else ""
            if owner and owner != server.admin.username:
                clause += f' OWNER "{owner}"'
            connection.execute(sa.text(f'CREATE DATABASE "{name}"{clause}'))
    finally:
        engine.dispose()
    return server.database(name)


def drop_test_database(server: SessionServer, name: str) -> None:
    engine = _admin_engine(server)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionServer]:
    """The session's PostgreSQL server: the embedded one (password authentication, the tests
    connect as the non-superuser application role), or ``DATABASE_URL``'s (used as is)."""
    if os.environ.get("DATABASE_URL"):
        url = with_database(normalize_url(os.environ["DATABASE_URL"]), "postgres")
        yield SessionServer(admin=url, application=url)
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("embedded-pg"), fast_unsafe=True)
    info = server.ensure_running()
    password = server.application_role()
    admin = normalize_url(info.url())
    application = admin.set(username=APPLICATION_ROLE, password=password)
    try:
        yield SessionServer(admin=admin, application=application)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def template_db(pg_server: SessionServer) -> Iterator[str]:
    """A database migrated once per session, cloned by ``db_url``."""
    url = create_test_database(pg_server, TEMPLATE_DB)
    engine = create_db_engine(url)
    try:
        migrate(url, MIGRATIONS_DIR, engine, policy=RetentionPolicy(months_ahead=2))
    finally:
        engine.dispose()
    yield TEMPLATE_DB
    drop_test_database(pg_server, TEMPLATE_DB)


@pytest.fixture
def empty_db_url(pg_server: SessionServer) -> Iterator[URL]:
    """A fresh, empty database (no migrations), dropped after the test."""
    name = f"drl_test_{uuid.uuid4().hex[:12]}"
    url = create_test_database(pg_server, name)
    yield url
    drop_test_database(pg_server, name)


@pytest.fixture
def db_url(pg_server: SessionServer, template_db: str) -> Iterator[URL]:
    """A fresh migrated database, dropped after the test."""
    name = f"drl_test_{uuid.uuid4().hex[:12]}"
    url = create_test_database(pg_server, name, template=template_db)
    yield url
    drop_test_database(pg_server, name)


@pytest.fixture
def engine(db_url: URL) -> Iterator[Engine]:
    """An engine on the test's migrated database."""
    engine = create_db_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def migrations_dir() -> Path:
    return MIGRATIONS_DIR


@pytest.fixture
def pulsar_broker() -> Iterator[PulsarTestBroker]:
    """A Pulsar binary-protocol broker on loopback, with deduplication on."""
    with PulsarTestBroker(deduplication=True) as broker:
        yield broker


@pytest.fixture(autouse=True)
def _no_leaked_dagster_instance() -> Iterator[None]:
    """Each test under an ephemeral Dagster instance of its own. Loading definitions reads the
    defs-state storage of the "current" instance; evaluating a schedule re-enters a test's
    instance and leaves it current after it is disposed, which broke later tests depending on
    their order. Leaving this context restores whatever was current before the test."""
    if "dagster" not in sys.modules:  # a pure test: nothing to guard
        yield
        return
    import dagster as dg

    with dg.DagsterInstance.ephemeral():
        yield
