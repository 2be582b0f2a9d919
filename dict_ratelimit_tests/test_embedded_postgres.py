"""The embedded server: root handling, loopback TCP, reuse, stale pid files, ordinary users."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from dict_ratelimit.storage import embedded
from dict_ratelimit.storage.database import create_db_engine
from dict_ratelimit.storage.embedded import EmbeddedPostgres, privilege_prefix

pytestmark = [pytest.mark.db]


def _query(url: str, sql: str) -> object:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text(sql)).scalar()
    finally:
        engine.dispose()


def test_root_runs_postgres_in_a_user_namespace_and_users_run_it_directly() -> None:
    prefix = privilege_prefix(euid=0)
    nobody = pwd.getpwnam("nobody")
    assert Path(prefix[0]).name == "unshare"
    assert prefix[1:] == [
        "--user",
        f"--map-user={nobody.pw_uid}",
        f"--map-group={nobody.pw_gid}",
        "--",
    ]
    assert privilege_prefix(euid=1000) == []


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    embedded = EmbeddedPostgres(tmp_path / "pg", fast_unsafe=True)
    yield embedded
    embedded.stop_server()


def test_server_listens_on_loopback_tcp_only_and_stops_cleanly(server: EmbeddedPostgres) -> None:
    info = server.ensure_running()
    assert info.started_here and info.host == "127.0.0.1"
    assert _query(info.url(), "SHOW listen_addresses") == "127.0.0.1"
    assert _query(info.url(), "SHOW unix_socket_directories") == ""
    assert _query(info.url(), "SELECT current_user") == "postgres"
    if os.geteuid() == 0:  # no permission was opened and no system user was created
        assert (server.pgdata.stat().st_uid, server.pgdata.stat().st_mode & 0o777) == (0, 0o700)
    assert server.stop() is True
    assert server.running_server() is None
    assert not (server.pgdata / "postmaster.pid").exists()


def test_a_second_handle_reuses_the_server_and_does_not_stop_it(server: EmbeddedPostgres) -> None:
    first = server.ensure_running()
    other = EmbeddedPostgres(server.data_dir)
    attached = other.ensure_running()
    assert attached.port == first.port and attached.pid == first.pid
    assert attached.started_here is False
    assert other.stop() is False  # it did not start it, so it leaves it alone
    assert _query(first.url(), "SELECT 1") == 1


@pytest.mark.parametrize("stale_pid", ["dead", "recycled"])
def test_recovers_from_a_stale_postmaster_pid(server: EmbeddedPostgres, stale_pid: str) -> None:
    """After a crash the pid file stays behind; its pid may be dead or reused by another process."""
    server.ensure_running()
    server.stop()
    if stale_pid == "dead":
        probe = subprocess.Popen(["true"])
        probe.wait()
        pid = probe.pid
    else:
        pid = os.getpid()  # alive, but not a postgres of this data folder
    (server.pgdata / "postmaster.pid").write_text(
        f"{pid}\n{server.pgdata}\n1700000000\n5999\n\n127.0.0.1\n  1234 5678\nready   \n"
    )
    info = server.ensure_running()
    assert info.started_here and info.pid != pid
    assert _query(info.url(), "SELECT 1") == 1


def _traversable_by(path: Path, uid: int, gid: int) -> bool:
    for part in [path, *path.parents]:
        st = part.stat()
        mode = st.st_mode
        if st.st_uid == uid:
            ok = mode & 0o100
        elif st.st_gid == gid:
            ok = mode & 0o010
        else:
            ok = mode & 0o001
        if not ok:
            return False
    return True


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary folder outside pytest's private (0700) base, reachable by other users."""
    path = Path(tempfile.mkdtemp(prefix="drl-user-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _as_ordinary_user() -> tuple[int, list[str]]:
    """(uid, command prefix running a Python that imports this project) for an ordinary user:
    ``nobody`` through setpriv when we are root, ourselves otherwise."""
    if os.geteuid() != 0:
        return os.geteuid(), [sys.executable]
    else:
        nobody = pwd.getpwnam("nobody")
        # The interpreter may live under /root (pyenv); an identical-version system python
        # reading the same site-packages does as well, provided nobody can reach them.
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        candidates = [sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"]
        interpreters = [
            c
            for c in candidates
            if Path(c).exists()
            and _traversable_by(Path(c).resolve().parent, nobody.pw_uid, nobody.pw_gid)
        ]
        needed = [*site.getsitepackages(), str(Path(__file__).parents[1])]
        unreachable = [
            p for p in needed if not _traversable_by(Path(p), nobody.pw_uid, nobody.pw_gid)
        ]
        if not interpreters or unreachable:
            pytest.skip(f"no {version} and site-packages reachable by 'nobody' here")
        return nobody.pw_uid, [
            "setpriv",
            f"--reuid={nobody.pw_uid}",
            f"--regid={nobody.pw_gid}",
            "--clear-groups",
            interpreters[0],
        ]


def _python_path() -> str:
    return os.pathsep.join([*site.getsitepackages(), str(Path(__file__).parents[1])])


def test_runs_as_an_ordinary_user(shared_tmp: Path) -> None:
    """The same code, run by an ordinary user, starts postgres without any user namespace."""
    python_path = _python_path()
    target_uid, command = _as_ordinary_user()
    data_dir = shared_tmp / "as-user"
    data_dir.mkdir()
    os.chown(data_dir, target_uid, -1)
    script = (
        "import sys, sqlalchemy as sa\n"
        "from pathlib import Path\n"
        "from dict_ratelimit.storage.embedded import EmbeddedPostgres\n"
        f"server = EmbeddedPostgres(Path({str(data_dir)!r}), fast_unsafe=True)\n"
        "info = server.ensure_running()\n"
        "engine = sa.create_engine(server.application_url('app'))\n"
        "with engine.connect() as c: print(c.execute(sa.text('SELECT 42')).scalar())\n"
        "engine.dispose(); server.stop()\n"
    )
    result = subprocess.run(
        [*command, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(data_dir), "PYTHONPATH": python_path},
        cwd=data_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "42"
    assert (data_dir / "pgdata").stat().st_uid == target_uid


def test_nobody_gets_in_without_the_password_and_there_is_no_trust(
    server: EmbeddedPostgres,
) -> None:
    info = server.ensure_running()
    hba = (server.pgdata / "pg_hba.conf").read_text()
    rules = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
    assert rules and all(rule[-1] == "scram-sha-256" for rule in rules)
    assert all(rule[0] == "host" for rule in rules)  # loopback TCP only, no Unix socket
    server.application_role()
    for secret in (server.superuser_secret, server.application_secret):
        assert secret.stat().st_mode & 0o777 == 0o600
    assert server.data_dir.stat().st_mode & 0o777 == 0o700
    for password in ("", "wrong"):
        url = f"postgresql+psycopg2://postgres:{password}@127.0.0.1:{info.port}/postgres"
        with pytest.raises(sa.exc.OperationalError, match="password"):
            _query(url, "SELECT 1")


def test_the_application_role_cannot_run_programs_or_touch_server_files(
    server: EmbeddedPostgres,
) -> None:
    url = server.application_url("app")
    assert _query(url, "SELECT current_user") == "dict_ratelimit_app"
    assert (
        _query(url, "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")
        is False
    )
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("CREATE TABLE mine (x int)"))  # it owns its database
            connection.commit()
        for statement in (
            "COPY (SELECT 1) TO PROGRAM 'touch /tmp/drl-should-not-exist'",
            "SELECT pg_read_file('/etc/passwd')",
            "COPY mine FROM '/etc/hostname'",
            "CREATE ROLE intruder SUPERUSER",
        ):
            with engine.connect() as connection:
                with pytest.raises(sa.exc.ProgrammingError, match=r"permission denied|must be"):
                    connection.execute(sa.text(statement))
    finally:
        engine.dispose()
    assert not Path("/tmp/drl-should-not-exist").exists()


def test_an_unprivileged_local_user_can_neither_log_in_as_superuser_nor_run_programs(
    shared_tmp: Path,
) -> None:
    """As ``nobody`` (the attacker of the issue's probe): no secret to read, no superuser
    login without it, no server program even with the application's own credentials."""
    data_dir = shared_tmp / "server"
    server = EmbeddedPostgres(data_dir, fast_unsafe=True)
    info = server.ensure_running()
    try:
        application = server.application_url("app")
        uid, command = _as_ordinary_user()
        marker = shared_tmp / "owned-by-root"
        script = (
            "import json, psycopg2\n"
            "from pathlib import Path\n"
            "out = {}\n"
            "try:\n"
            f"    Path({str(server.superuser_secret)!r}).read_text(); out['secret'] = 'read'\n"
            "except OSError as e: out['secret'] = type(e).__name__\n"
            "for password in ('', 'postgres'):\n"
            "    try:\n"
            f"        psycopg2.connect(host='127.0.0.1', port={info.port}, user='postgres',\n"
            "                         password=password, dbname='postgres', connect_timeout=5)\n"
            "        out['superuser_' + (password or 'blank')] = 'connected'\n"
            "    except psycopg2.OperationalError as e:\n"
            "        out['superuser_' + (password or 'blank')] = str(e).strip().splitlines()[-1]\n"
            f"c = psycopg2.connect({application.replace('+psycopg2', '')!r})\n"
            "try:\n"
            f"    c.cursor().execute(\"COPY (SELECT 1) TO PROGRAM 'touch {marker}'\")\n"
            "    out['program'] = 'ran'\n"
            "except psycopg2.Error as e: out['program'] = e.pgcode\n"
            "print(json.dumps(out))\n"
        )
        result = subprocess.run(
            [*command, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": _python_path(), "HOME": str(shared_tmp)},
            cwd=shared_tmp,
        )
    finally:
        server.stop_server()
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout)
    if uid != os.geteuid():  # another user than the server's owner
        assert outcome["secret"] == "PermissionError"
    assert "password authentication failed" in outcome["superuser_postgres"]
    assert "password" in outcome["superuser_blank"]
    assert outcome["program"] == "42501"  # insufficient_privilege
    assert not marker.exists()


def test_after_a_kill_9_it_comes_back_on_its_port_and_clients_reconnect(
    server: EmbeddedPostgres,
) -> None:
    info = server.ensure_running()
    engine = create_db_engine(server.application_url("app"))
    try:
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT 1")).scalar() == 1
        os.kill(info.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while server.running_server() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        restarted = EmbeddedPostgres(server.data_dir, fast_unsafe=True).ensure_running()
        assert restarted.started_here and restarted.port == info.port
        started = time.monotonic()
        with engine.connect() as connection:  # the same pool: pre-ping replaces dead sockets
            assert connection.execute(sa.text("SELECT 2")).scalar() == 2
        assert time.monotonic() - started < 30
    finally:
        engine.dispose()


def _hold(port: int) -> socket.socket:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    return holder


def test_a_start_waits_for_its_port_to_be_released(server: EmbeddedPostgres) -> None:
    """The previous start's port still held for a moment (a crashed server's children exiting)
    is waited for, so clients configured with it keep working."""
    port = server.ensure_running().port
    server.stop_server()
    holder = _hold(port)
    threading.Timer(1.5, holder.close).start()
    restarted = server.ensure_running()
    assert restarted.started_here and restarted.port == port


def test_a_port_taken_for_good_is_replaced_and_said(
    server: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(embedded, "PORT_RELEASE_SECONDS", 0.5)
    port = server.ensure_running().port
    server.stop_server()
    with _hold(port):
        restarted = server.ensure_running()
    assert restarted.port != port
    assert f"port {port} of the previous start is taken: using another" in caplog.text
    server.stop_server()
    assert server.ensure_running().port == restarted.port  # the new one is remembered
