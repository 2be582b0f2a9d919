"""Bad database configuration fails fast, names the target and never prints the password."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from dict_ratelimit.cli import main
from dict_ratelimit.settings import get_settings
from dict_ratelimit.storage.database import (
    DatabaseUnavailable,
    check_connection,
    create_db_engine,
    normalize_url,
    redact,
)
from dict_ratelimit.storage.embedded import free_port

pytestmark = [pytest.mark.db]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung server)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def _run_cli(monkeypatch: pytest.MonkeyPatch, url: str, *args: str):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DICT_RATELIMIT_CONNECT_TIMEOUT_SECONDS", "2")
    get_settings.cache_clear()
    try:
        started = time.monotonic()
        result = CliRunner().invoke(main, list(args))
        return result, time.monotonic() - started
    finally:
        get_settings.cache_clear()


def test_refused_connection_fails_at_once_naming_host_and_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    result, elapsed = _run_cli(
        monkeypatch, f"postgresql://app:s3cret@127.0.0.1:{port}/dict", "db", "status"
    )
    assert result.exit_code == 1
    assert f"cannot reach PostgreSQL at 127.0.0.1:{port}/dict" in result.output
    assert "s3cret" not in result.output
    assert elapsed < 5


def test_hung_server_fails_within_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch, silent_server: int
) -> None:
    result, elapsed = _run_cli(
        monkeypatch, f"postgresql://app:s3cret@127.0.0.1:{silent_server}/dict", "db", "migrate"
    )
    assert result.exit_code == 1
    assert f"cannot reach PostgreSQL at 127.0.0.1:{silent_server}/dict" in result.output
    assert "timeout" in result.output.lower()
    assert "s3cret" not in result.output
    assert elapsed < 8


def test_unknown_host_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    result, elapsed = _run_cli(monkeypatch, "postgresql://app@db.invalid:5432/dict", "db", "url")
    assert result.exit_code == 1
    assert "cannot reach PostgreSQL at db.invalid:5432/dict" in result.output
    assert elapsed < 8


def test_a_non_postgres_url_is_rejected_before_connecting() -> None:
    with pytest.raises(ValueError, match="must be a PostgreSQL URL"):
        normalize_url("mysql://app@localhost/dict")
    with pytest.raises(ValueError, match="not a valid URL"):
        normalize_url("not a url at all")


def test_urls_are_normalised_to_psycopg2_and_redacted() -> None:
    assert normalize_url("postgresql://u:p@h:1/d").drivername == "postgresql+psycopg2"
    assert normalize_url("postgres://u:p@h:1/d").drivername == "postgresql+psycopg2"
    assert redact("postgresql://u:p4ss@h:1/d") == "postgresql+psycopg2://u:***@h:1/d"


def test_check_connection_raises_database_unavailable() -> None:
    engine = create_db_engine(f"postgresql://u@127.0.0.1:{free_port()}/d", connect_timeout=1)
    with pytest.raises(DatabaseUnavailable, match=r"127\.0\.0\.1"):
        check_connection(engine)
