"""``dict-ratelimit dev``: the whole system on embedded defaults, stopped cleanly by Ctrl-C.

Starts (or reuses) the embedded PostgreSQL unless ``DATABASE_URL`` is set, migrates, prepares a
``DAGSTER_HOME`` whose instance lives in the same PostgreSQL server, starts the DICT simulator
(unless ``DICT_RATELIMIT_BRIDGE_TARGET`` names a real Bridge), then runs ``dagster dev``
(webserver + daemon, schedules on). Every child runs in its own process group.

While it runs, it watches the embedded server it started: if the server dies (a crash, a
``kill -9``), it is started again on the same port and every process reconnects. On Ctrl-C or
SIGTERM it cancels the runs in progress (they read CANCELED), stops the children in reverse
order and anything they left behind (``dev_processes``), then the PostgreSQL server if (and
only if) it started it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from sqlalchemy.engine import URL

from dict_ratelimit.dev_processes import (
    SESSION_VARIABLE,
    cancel_active_runs,
    new_session,
    stop_process_group,
    stop_session_stragglers,
)
from dict_ratelimit.settings import Settings, project_root
from dict_ratelimit.storage.database import create_db_engine
from dict_ratelimit.storage.embedded import free_port
from dict_ratelimit.storage.migrations import migrate
from dict_ratelimit.storage.server import application_database, instance_database

log = logging.getLogger(__name__)


def announce(message: str) -> None:
    """A status line of ``dev``: printed as is, or a log record when the logs are JSON."""
    if os.environ.get("DICT_RATELIMIT_LOG_FORMAT") == "json":
        log.info(message)
    else:
        print(message, flush=True)


def prepare_dagster_home(settings: Settings) -> Path:
    """``DAGSTER_HOME`` (env, else ``<data_dir>/dagster_home``) holding our dagster.yaml."""
    home = Path(os.environ.get("DAGSTER_HOME") or settings.data_dir / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    template = project_root() / "dagster.yaml"
    if not template.is_file():
        raise FileNotFoundError(f"dagster.yaml not found at {template}")
    shutil.copyfile(template, home / "dagster.yaml")
    return home


def dagster_environment(url: URL, instance_url: URL, home: Path) -> dict[str, str]:
    """Environment of the Dagster processes: the app database and the instance database."""
    return {
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": instance_url.host or "127.0.0.1",
        "DAGSTER_PG_PORT": str(instance_url.port or 5432),
        "DAGSTER_PG_USERNAME": instance_url.username or "postgres",
        "DAGSTER_PG_PASSWORD": instance_url.password or "",
        "DAGSTER_PG_DB": instance_url.database or "dagster",
        # `dagster dev` still works in 1.13 and is what dagster-webserver ships; `dg` is not
        # a dependency of this project.
        "PYTHONWARNINGS": "ignore:Function `dev_command` is superseded",
    }


def dagster_dev_command(settings: Settings) -> list[str]:
    """``dagster dev`` on our workspace, logging in our format (JSON lines when asked)."""
    return [
        sys.executable, "-m", "dagster", "dev",
        "-w", str(project_root() / "workspace.yaml"),
        "-h", settings.dagster_host,
        "-p", str(settings.dagster_port),
        "--log-format", "json" if settings.log_format == "json" else "colored",
    ]  # fmt: skip


def wait_until_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> float | None:
    """Seconds until ``url`` answers 200, or None if the process died or time ran out."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            return None
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.5)
    return None


def start_simulator(settings: Settings, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """The DICT simulator as a child process on a free loopback port, once it is healthy."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "dict_ratelimit.cli",
        "simulator",
        "--port",
        str(port),
        "--scenario",
        settings.simulator_scenario,
    ]
    for ispb, category in settings.simulator_participants.items():
        command += ["--participant", f"{ispb}:{category}"]
    process = subprocess.Popen(command, env=env, start_new_session=True)
    target = f"127.0.0.1:{port}"
    if not wait_for_grpc_health(target, process, timeout=30):
        stop_process_group(process)
        raise RuntimeError(f"the simulator did not become healthy on {target}")
    return process, target


def wait_for_grpc_health(target: str, process: subprocess.Popen, timeout: float) -> bool:
    """True once ``target`` answers the gRPC health check with SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and process.poll() is None:
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                time.sleep(0.2)
    return False


def start_embedded_pulsar(settings: Settings) -> tuple[subprocess.Popen, str] | None:
    """The ``pulsar-lite`` broker (demo only: no deduplication) on a free loopback port, with
    its data under the data dir; None when the wheel is not installed (not Linux x86-64)."""
    try:
        from pulsar_lite.binary_finder import find_pulsar_lite_binary
    except ImportError:
        return None
    port = free_port()
    data = settings.data_dir / "pulsar"
    data.mkdir(parents=True, exist_ok=True)
    log = (data / "pulsar-lite.log").open("ab")
    process = subprocess.Popen(
        [find_pulsar_lite_binary(), "--addr", f"127.0.0.1:{port}", "--db-path",
         str(data / "broker.db"), "--log-level", "warn"],
        stdout=log, stderr=log, cwd=data, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pulsar-lite exited with {process.returncode}; see {data}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.25):
            return process, f"pulsar://127.0.0.1:{port}"
        time.sleep(0.1)
    stop_process_group(process)
    raise RuntimeError(f"pulsar-lite did not listen on 127.0.0.1:{port} within 15 s")


def start_exporter_process(settings: Settings, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """``dict-ratelimit exporter`` as a child process, once ``/metrics`` answers."""
    port = settings.exporter_port or free_port()
    url = f"http://{settings.exporter_host}:{port}/metrics"
    command = [sys.executable, "-m", "dict_ratelimit.cli", "exporter",
               "--host", settings.exporter_host, "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, env=env, start_new_session=True)
    if wait_until_ready(url, process, timeout=30) is None:
        stop_process_group(process)
        raise RuntimeError(f"the exporter did not answer on {url} (port taken? set "
                           "DICT_RATELIMIT_EXPORTER_PORT)")  # fmt: skip
    return process, url


def run_dev(settings: Settings, *, ready_timeout: float = 180.0) -> int:
    """Bring the system up and block until interrupted; returns Dagster's exit code."""
    t0 = time.monotonic()
    # Started in the background (`&`, nohup) a shell makes SIGINT ignored, and an ignored signal
    # stays ignored across exec: Dagster and the broker would ignore our Ctrl-C and be killed
    # only after their grace period. Our children get the default disposition back.
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(
                sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            )
    url, server = application_database(settings)
    children: list[subprocess.Popen] = []
    session = new_session()
    home: Path | None = None
    dagster_env: dict[str, str] = {}
    try:
        engine = create_db_engine(url, connect_timeout=settings.connect_timeout_seconds)
        applied, changes = migrate(url, settings.migrations_dir, engine)
        engine.dispose()
        announce(
            f"database ready: {len(applied)} migration(s) applied, "
            f"{len(changes.created)} partition(s) created",
        )
        home = prepare_dagster_home(settings)
        instance_url = instance_database(settings, url, server)
        dagster_env = dagster_environment(url, instance_url, home)
        env = {**os.environ, **dagster_env, SESSION_VARIABLE: session}
        if settings.bridge_target:
            announce(f"Bridge: {settings.bridge_target} (DICT_RATELIMIT_BRIDGE_TARGET)")
        else:
            simulator, target = start_simulator(settings, env)
            children.append(simulator)
            ispbs = ",".join(settings.participants or settings.simulator_participants)
            env.update(
                {
                    "DICT_RATELIMIT_BRIDGE_TARGET": target,
                    "DICT_RATELIMIT_PARTICIPANTS": ispbs,
                    # the demo polls every minute so that buckets move within minutes
                    "DICT_RATELIMIT_MONITOR_CRON": os.environ.get(
                        "DICT_RATELIMIT_MONITOR_CRON", "* * * * *"
                    ),
                }
            )
            announce(
                f"DICT simulator on {target}: scenario {settings.simulator_scenario}, "
                "participants "
                + ", ".join(f"{i} ({c})" for i, c in settings.simulator_participants.items()),
            )
        if os.environ.get("DICT_RATELIMIT_PULSAR_URL"):
            announce(f"Pulsar: {os.environ['DICT_RATELIMIT_PULSAR_URL']}")
        else:
            pulsar = start_embedded_pulsar(settings)
            if pulsar is not None:
                children.append(pulsar[0])
                env["DICT_RATELIMIT_PULSAR_URL"] = pulsar[1]
                announce(f"Pulsar (embedded pulsar-lite): {pulsar[1]}")
            else:
                announce("Pulsar: not configured; alert events stay in the outbox")
        exporter, metrics_url = start_exporter_process(settings, env)
        children.append(exporter)
        announce(f"Prometheus exporter: {metrics_url}")
        command = dagster_dev_command(settings)
        # cwd = DAGSTER_HOME: from the project root Dagster would warn about the template there.
        dagster = subprocess.Popen(command, env=env, cwd=home, start_new_session=True)
        children.append(dagster)
        stop_requested = False

        def _request_stop(signum: int, _frame: object) -> None:
            nonlocal stop_requested
            stop_requested = True

        previous = {
            sig: signal.signal(sig, _request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            ui = f"http://{settings.dagster_host}:{settings.dagster_port}"
            ready = wait_until_ready(f"{ui}/server_info", dagster, ready_timeout)
            if ready is not None:
                announce(
                    f"Dagster UI ready at {ui} ({time.monotonic() - t0:.1f}s after start); "
                    "Ctrl-C stops everything started here",
                )
            while not stop_requested and all(child.poll() is None for child in children):
                time.sleep(0.2)
                if server is not None and server.started_here and server.running_server() is None:
                    announce("embedded PostgreSQL stopped unexpectedly: starting it again")
                    info = server.restart()
                    announce(f"embedded PostgreSQL back on port {info.port}")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return dagster.returncode or 0
    finally:
        if home is not None and dagster_env and children:
            try:
                cancelled = cancel_active_runs(home, dagster_env)
                if cancelled:
                    announce(f"cancelled {len(cancelled)} run(s) in progress")
            except Exception as error:  # the instance may be unreachable: stop anyway
                log.warning("could not cancel the runs in progress: %s", error)
        for child in reversed(children):
            stop_process_group(child)
        stop_session_stragglers(session)
        if server is not None and server.stop():
            announce("embedded PostgreSQL stopped")
