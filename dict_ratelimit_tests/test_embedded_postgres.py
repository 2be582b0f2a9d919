"""The embedded server: root handling, loopback TCP, reuse, stale pid files, ordinary users."""

from __future__ import annotations

import os
import pwd
import shutil
import site
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

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


def test_runs_as_an_ordinary_user(shared_tmp: Path) -> None:
    """The same code, run by an ordinary user, starts postgres without any user namespace."""
    python_path = os.pathsep.join([*site.getsitepackages(), str(Path(__file__).parents[1])])
    if os.geteuid() != 0:
        target_uid = os.geteuid()
        command = [sys.executable]
    else:
        nobody = pwd.getpwnam("nobody")
        target_uid = nobody.pw_uid
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
        command = [
            "setpriv",
            f"--reuid={nobody.pw_uid}",
            f"--regid={nobody.pw_gid}",
            "--clear-groups",
            interpreters[0],
        ]
    data_dir = shared_tmp / "as-user"
    data_dir.mkdir()
    os.chown(data_dir, target_uid, -1)
    script = (
        "import sys, sqlalchemy as sa\n"
        "from pathlib import Path\n"
        "from dict_ratelimit.storage.embedded import EmbeddedPostgres\n"
        f"server = EmbeddedPostgres(Path({str(data_dir)!r}), fast_unsafe=True)\n"
        "info = server.ensure_running()\n"
        "engine = sa.create_engine(info.url())\n"
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
