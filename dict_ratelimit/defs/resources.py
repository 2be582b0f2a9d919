"""Dagster resources: small ConfigurableResource classes fed by ``dg.EnvVar``."""

import dagster as dg
from pydantic import PrivateAttr
from sqlalchemy.engine import Engine

from dict_ratelimit.storage.database import create_db_engine, redact


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


def default_resources() -> dict[str, object]:
    """Resources of the deployed code location, all read from the environment at run time."""
    return {"postgres": PostgresResource(database_url=dg.EnvVar("DATABASE_URL"))}
