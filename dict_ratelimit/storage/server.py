"""Where the application database is: ``DATABASE_URL``, or the embedded server."""

from __future__ import annotations

import logging

from sqlalchemy.engine import URL

from dict_ratelimit.settings import Settings
from dict_ratelimit.storage.database import ensure_database, normalize_url, with_database
from dict_ratelimit.storage.embedded import EmbeddedPostgres

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "dict_ratelimit"


def embedded_server(settings: Settings) -> EmbeddedPostgres:
    """The embedded server of this project's data folder (not started)."""
    return EmbeddedPostgres(settings.data_dir / "postgres")


def application_database(settings: Settings) -> tuple[URL, EmbeddedPostgres | None]:
    """URL of the application database and, when embedded, the server handle.

    With ``DATABASE_URL`` set, nothing is started. Without it, the embedded server in the data
    folder is started (or reused when already running) and its ``dict_ratelimit`` database and
    application role are created on first use: the URL is the application role's (never the
    superuser's). Only the caller that started the server should stop it
    (``EmbeddedPostgres.stop`` does nothing otherwise).
    """
    if settings.database_url:
        return normalize_url(settings.database_url), None
    server = embedded_server(settings)
    server.ensure_running()
    return normalize_url(server.application_url(EMBEDDED_DATABASE)), server


def instance_database(
    settings: Settings, application_url: URL, server: EmbeddedPostgres | None
) -> URL:
    """URL of Dagster's own instance database on the same server, created if missing (owned by
    the application role on the embedded server)."""
    if server is not None:
        return normalize_url(server.application_url(settings.dagster_db_name))
    url = with_database(application_url, settings.dagster_db_name)
    if ensure_database(url, connect_timeout=settings.connect_timeout_seconds):
        log.info("created database %s", settings.dagster_db_name)
    return url
