"""Dagster's fixed cost per monitor_job run on a PostgreSQL-backed instance, against the same
work without Dagster.

    .venv/bin/python bench/bench_run_cost.py [--repeat 5] [--no-launch]
        [--pgbouncer PATH/TO/pgbouncer] [--pool-mode session|transaction]

Starts its own embedded PostgreSQL (fsync on, as in dev) with two databases, the application's
(migrated) and Dagster's instance database (as ``dict-ratelimit dev`` does), the DICT simulator
as a child process on loopback (wall clock, scenario ``steady``, one category-A participant),
and a temporary DAGSTER_HOME holding the project's dagster.yaml (storage in Postgres through
dagster-postgres, DAGSTER_PG_* in the environment). After one warm-up of each, it measures
(median of N):

* ``pipeline.run_tick``: poll + store + derive + alerts for the participant, no Dagster
  (one long-lived SQLAlchemy engine, as the watch lane has);
* ``in-process run``: ``monitor_job.execute_in_process`` on ``DagsterInstance.get()``: wall time
  of the call, run duration from the run record (start to end), the steps' own durations
  (STEP_SUCCESS ``duration_ms``), and the new PostgreSQL sessions the run opened in each
  database (``pg_stat_database.sessions``, PG 14+, read once the backends' counters are
  flushed) and the client connects of this process (``psycopg2.connect`` counted and timed);
  once with dagster-postgres's own storage (a connection per operation: dagster.yaml before
  ``dict_ratelimit/instance_storage.py``) and once with dagster.yaml as shipped (pooled);
* ``in-process via PgBouncer`` (with ``--pgbouncer``): DAGSTER_PG_PORT points at a PgBouncer
  (session or transaction pooling, SCRAM auth on loopback) in front of the same server;
* ``launched run`` (unless ``--no-launch``): a run created on the instance and executed by
  ``python -m dagster api execute_run`` in a new process, which is what a run worker of the
  DefaultRunLauncher runs: spawn-to-exit wall time and its run record's duration. The
  daemon's dequeue interval (2 s in dagster.yaml) and the code server's hand-off come on top.

PgBouncer here: ``apt-get download pgbouncer libc-ares2`` and ``dpkg -x`` each into one folder
(nothing installed system-wide); the binary's ``../lib/x86_64-linux-gnu`` is put on
LD_LIBRARY_PATH. As root it runs in a user namespace mapping root to ``nobody``, like the
embedded PostgreSQL. Results are recorded in docs/measurements.md by hand, with the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
from _database import bench_server  # bench/ is on sys.path when run as a script
from sqlalchemy.engine import URL

from dict_ratelimit.devstack import dagster_environment, wait_for_grpc_health
from dict_ratelimit.settings import project_root
from dict_ratelimit.storage.database import with_database
from dict_ratelimit.storage.embedded import free_port, privilege_prefix

PARTICIPANT = "10000000"
APP_DB = "bench_run_app"
DAGSTER_DB = "bench_run_dagster"
UNCOUNTED_CONNECT = psycopg2.connect  # before ClientConnects.install replaces it


# -- the instance storage before dict_ratelimit.instance_storage ----------------------------


def unpooled_dagster_yaml(source: Path, target: Path) -> None:
    """``source`` with its pooled custom storage turned back into dagster-postgres's own."""
    import yaml

    config = yaml.safe_load(source.read_text())
    config["storage"] = {"postgres": config["storage"]["custom"]["config"]}
    target.write_text(yaml.safe_dump(config, sort_keys=False))


# -- counting connections ------------------------------------------------------------------


class ClientConnects:
    """Counts and times every ``psycopg2.connect`` of this process, by database name."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self._original = UNCOUNTED_CONNECT

    def install(self) -> None:
        def connect(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return self._original(*args, **kwargs)
            finally:
                name = str(kwargs.get("dbname") or kwargs.get("database") or "?")
                self.count[name] += 1
                self.seconds[name] += time.perf_counter() - started

        psycopg2.connect = connect  # SQLAlchemy's dialect looks the function up per call

    def snapshot(self) -> tuple[Counter[str], Counter[str]]:
        return Counter(self.count), Counter(self.seconds)


class ServerSessions:
    """``pg_stat_database.sessions`` per database, read on one connection to ``postgres``."""

    def __init__(self, url: URL) -> None:
        self._connection = UNCOUNTED_CONNECT(
            host=url.host, port=url.port, user=url.username, password=url.password,
            dbname="postgres", application_name="bench-run-cost-probe",
        )  # fmt: skip
        self._connection.autocommit = True

    def _read(self) -> dict[str, int]:
        with self._connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT datname, sessions FROM pg_stat_database WHERE datname = ANY(%s)",
                ([APP_DB, DAGSTER_DB],),
            )
            return {name: int(count) for name, count in cursor.fetchall()}

    def settled(self, timeout: float = 3.0) -> dict[str, int]:
        """The counters once two reads 0.3 s apart agree (a backend flushes its counters
        when it exits, a moment after its client closed the connection)."""
        previous = self._read()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.3)
            current = self._read()
            if current == previous:
                return current
            previous = current
        return previous

    def close(self) -> None:
        self._connection.close()


# -- what one measurement records ------------------------------------------------------------


@dataclass
class Sample:
    wall: float
    run: float | None = None
    steps: float | None = None
    sessions: dict[str, int] = field(default_factory=dict)
    connects: dict[str, int] = field(default_factory=dict)
    connect_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Row:
    name: str
    samples: list[Sample]
    note: str = ""

    def median(self, value: Any) -> float | None:
        values = [v for v in (value(s) for s in self.samples) if v is not None]
        return statistics.median(values) if values else None


def measured(action: Any, sessions: ServerSessions, connects: ClientConnects) -> tuple[Any, Sample]:
    before_sessions = sessions.settled()
    before_count, before_seconds = connects.snapshot()
    started = time.perf_counter()
    result = action()
    wall = time.perf_counter() - started
    after_sessions = sessions.settled()
    after_count, after_seconds = connects.snapshot()
    sample = Sample(
        wall=wall,
        sessions={k: after_sessions.get(k, 0) - before_sessions.get(k, 0) for k in after_sessions},
        connects={k: after_count[k] - before_count[k] for k in (APP_DB, DAGSTER_DB)},
        connect_seconds={k: after_seconds[k] - before_seconds[k] for k in (APP_DB, DAGSTER_DB)},
    )
    return result, sample


def run_times(instance: Any, run_id: str) -> tuple[float | None, float]:
    """Run duration (record start to end) and the sum of its steps' durations."""
    import dagster as dg

    record = instance.get_run_record_by_id(run_id)
    duration = (
        record.end_time - record.start_time if record.start_time and record.end_time else None
    )
    successes = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.STEP_SUCCESS
    ).records
    steps = sum(r.event_log_entry.dagster_event.event_specific_data.duration_ms for r in successes)
    return duration, steps / 1000


# -- the pieces started around the measurements -------------------------------------------


@contextlib.contextmanager
def simulator(port: int) -> Iterator[str]:
    """The DICT simulator as a child process (wall clock) on ``port``, once it answers health
    checks. A fresh one per measurement: its POLICIES_LIST bucket would empty otherwise (a
    listing every second or so), and the retry would be timed."""
    command = [sys.executable, "-m", "dict_ratelimit.cli", "simulator", "--port", str(port),
               "--scenario", "steady", "--participant", f"{PARTICIPANT}:A"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)
    target = f"127.0.0.1:{port}"
    try:
        if not wait_for_grpc_health(target, process, timeout=30):
            raise RuntimeError(f"the simulator did not become healthy on {target}")
        yield target
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextlib.contextmanager
def pgbouncer(binary: Path, server: URL, pool_mode: str) -> Iterator[int]:
    """PgBouncer on a free loopback port in front of ``server``: SCRAM for its clients and
    towards the server (the application role's password in its auth file), no Unix socket."""
    folder = Path(tempfile.mkdtemp(prefix="bench-pgbouncer-"))
    port = free_port()
    (folder / "userlist.txt").write_text(f'"{server.username}" "{server.password}"\n')
    (folder / "userlist.txt").chmod(0o600)
    (folder / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={server.host} port={server.port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {folder / "userlist.txt"}
pool_mode = {pool_mode}
default_pool_size = 10
max_client_conn = 200
logfile = {folder / "pgbouncer.log"}
"""
    )
    env = dict(os.environ)
    libraries = binary.resolve().parent.parent / "lib" / "x86_64-linux-gnu"
    if libraries.is_dir():
        env["LD_LIBRARY_PATH"] = str(libraries)
    process = subprocess.Popen(
        [*privilege_prefix(), str(binary), str(folder / "pgbouncer.ini")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                psycopg2.connect(
                    host="127.0.0.1", port=port, user=server.username,
                    password=server.password, dbname=server.database, connect_timeout=2,
                ).close()  # fmt: skip
                break
            except psycopg2.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = folder / "pgbouncer.log"
                    raise RuntimeError(
                        "PgBouncer did not start: "
                        + (log.read_text()[-2000:] if log.exists() else "no log")
                    ) from None
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


# -- the measurements ---------------------------------------------------------------------


def measure_pipeline(
    app_url: URL, target: str, repeat: int, sessions: ServerSessions, connects: ClientConnects
) -> Row:
    from dict_ratelimit.bridge.client import BridgeClient
    from dict_ratelimit.clock import SystemClock
    from dict_ratelimit.pipeline.tick import PipelineSettings, run_tick
    from dict_ratelimit.settings import get_settings
    from dict_ratelimit.storage.database import create_db_engine

    settings = PipelineSettings(known_policies=get_settings().known_policies())
    engine = create_db_engine(app_url)
    samples = []
    try:
        with BridgeClient(target) as client:
            for attempt in range(repeat + 1):
                report, sample = measured(
                    lambda: run_tick(engine, client, [PARTICIPANT], settings, SystemClock()),
                    sessions,
                    connects,
                )
                assert not report.poll.failures, report.poll.failures
                if attempt:  # the first is the warm-up
                    samples.append(sample)
    finally:
        engine.dispose()
    return Row("pipeline.run_tick (no Dagster)", samples, "one engine, pooled")


def measure_in_process(
    name: str,
    repeat: int,
    sessions: ServerSessions,
    connects: ClientConnects,
    *,
    note: str = "",
) -> Row:
    import dagster as dg

    from dict_ratelimit.clock import SystemClock
    from dict_ratelimit.definitions import build_definitions
    from dict_ratelimit.defs.metrics import tick_partition
    from dict_ratelimit.defs.monitor import TICK_TAGS

    job = build_definitions().resolve_job_def("monitor_job")
    samples = []
    with dg.DagsterInstance.get() as instance:
        for attempt in range(repeat + 1):
            now = SystemClock().now()

            def execute(now: Any = now) -> Any:
                with dg.partition_loading_context(effective_dt=now):
                    return job.execute_in_process(
                        instance=instance, partition_key=tick_partition(now), tags=TICK_TAGS
                    )

            result, sample = measured(execute, sessions, connects)
            assert result.success
            sample.run, sample.steps = run_times(instance, result.run_id)
            if attempt:
                samples.append(sample)
    return Row(name, samples, note)


def measure_launched(
    name: str, repeat: int, sessions: ServerSessions, connects: ClientConnects
) -> Row:
    """Runs executed by ``dagster api execute_run`` in a new process, as a run worker does."""
    import dagster as dg
    from dagster._core.definitions.reconstruct import ReconstructableRepository
    from dagster._grpc.types import ExecuteRunArgs
    from dagster._serdes import serialize_value

    from dict_ratelimit.clock import SystemClock
    from dict_ratelimit.defs.metrics import tick_partition
    from dict_ratelimit.defs.monitor import TICK_TAGS

    repository = ReconstructableRepository.for_module(
        "dict_ratelimit.definitions", "defs", working_directory=str(project_root())
    )
    recon_job = repository.get_reconstructable_job("monitor_job")
    samples = []
    with dg.DagsterInstance.get() as instance:
        for attempt in range(repeat + 1):
            now = SystemClock().now()
            with dg.partition_loading_context(effective_dt=now):
                run = instance.create_run_for_job(
                    job_def=recon_job.get_definition(),
                    run_config={},
                    tags={**TICK_TAGS, "dagster/partition": tick_partition(now)},
                    job_code_origin=recon_job.get_python_origin(),
                )
            arguments = serialize_value(
                ExecuteRunArgs(
                    job_origin=recon_job.get_python_origin(),
                    run_id=run.run_id,
                    instance_ref=instance.get_ref(),
                    set_exit_code_on_failure=True,
                )
            )

            def launch(arguments: str = arguments) -> int:
                return subprocess.run(
                    [sys.executable, "-m", "dagster", "api", "execute_run", arguments],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                ).returncode  # fmt: skip

            code, sample = measured(launch, sessions, connects)
            status = instance.get_run_by_id(run.run_id).status  # type: ignore[union-attr]
            assert code == 0 and status == dg.DagsterRunStatus.SUCCESS, (code, status)
            sample.run, sample.steps = run_times(instance, run.run_id)
            if attempt:
                samples.append(sample)
    return Row(name, samples, "+ dequeue ≤2 s, code server")


# -- report -----------------------------------------------------------------------------------


def seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f} s"


def count(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def print_table(rows: list[Row], repeat: int) -> None:
    base = rows[0].median(lambda s: s.wall)
    print(f"\nmedian of {repeat} after one warm-up; 1 participant, 28 listed policies\n")
    print(
        "| what | wall | × no-Dagster | run record | steps | Dagster overhead | "
        "new sessions dagster db / app db | client connects (time in connect) | note |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        wall = row.median(lambda s: s.wall)
        run = row.median(lambda s: s.run)
        steps = row.median(lambda s: s.steps)
        overhead = None if run is None or steps is None else run - steps
        dagster_sessions = row.median(lambda s: s.sessions.get(DAGSTER_DB))
        app_sessions = row.median(lambda s: s.sessions.get(APP_DB))
        client = row.median(lambda s: s.connects[DAGSTER_DB] + s.connects[APP_DB])
        connect_time = row.median(
            lambda s: s.connect_seconds[DAGSTER_DB] + s.connect_seconds[APP_DB]
        )
        ratio = f"{wall / base:.1f}×" if wall is not None and base else "–"
        print(
            f"| {row.name} | {seconds(wall)} | {ratio} | {seconds(run)} | {seconds(steps)} | "
            f"{seconds(overhead)} | {count(dagster_sessions)} / {count(app_sessions)} | "
            f"{count(client)} ({seconds(connect_time)}) | {row.note} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-launch", action="store_true", help="skip the launched runs")
    parser.add_argument("--pgbouncer", type=Path, help="a pgbouncer binary to measure through")
    parser.add_argument("--pool-mode", default="session", choices=["session", "transaction"])
    args = parser.parse_args()
    connects = ClientConnects()
    connects.install()
    home = Path(tempfile.mkdtemp(prefix="bench-run-cost-home-"))
    saved = dict(os.environ)
    try:
        with bench_server() as database:
            target = f"127.0.0.1:{free_port()}"  # the settings read it once: one port for all
            app_url, _ = database(APP_DB)
            instance_url, _ = database(DAGSTER_DB, schema=False)
            shutil.copyfile(project_root() / "dagster.yaml", home / "dagster.yaml")
            # before dict_ratelimit.definitions is imported: its settings are read once
            os.environ.update(dagster_environment(app_url, instance_url, home))
            os.environ.update(
                {
                    "DICT_RATELIMIT_BRIDGE_TARGET": target,
                    "DICT_RATELIMIT_PARTICIPANTS": PARTICIPANT,
                }
            )
            unpooled_home = home / "unpooled"
            unpooled_home.mkdir()
            unpooled_dagster_yaml(home / "dagster.yaml", unpooled_home / "dagster.yaml")
            sessions = ServerSessions(with_database(app_url, "postgres"))
            rows: list[Row] = []

            def measure(make: Any, *names: str, **kwargs: str) -> None:
                with simulator(int(target.rsplit(":", 1)[1])):
                    rows.append(make(*names, args.repeat, sessions, connects, **kwargs))
                print(f"{rows[-1].name}: done", flush=True)

            try:
                with simulator(int(target.rsplit(":", 1)[1])):
                    rows.append(measure_pipeline(app_url, target, args.repeat, sessions, connects))
                print(f"{rows[-1].name}: done", flush=True)
                os.environ["DAGSTER_HOME"] = str(unpooled_home)
                measure(
                    measure_in_process,
                    "in-process run, dagster-postgres alone",
                    note="storage: postgres (a connection per operation)",
                )
                os.environ["DAGSTER_HOME"] = str(home)
                measure(
                    measure_in_process,
                    "in-process run, dagster.yaml (pooled)",
                    note="storage: custom (PooledPostgresStorage)",
                )
                if args.pgbouncer:
                    with pgbouncer(args.pgbouncer, instance_url, args.pool_mode) as port:
                        os.environ["DAGSTER_PG_PORT"] = str(port)
                        os.environ["DAGSTER_HOME"] = str(unpooled_home)  # the pooler instead
                        measure(
                            measure_in_process,
                            f"in-process run via PgBouncer ({args.pool_mode})",
                            note="instance db through PgBouncer (plaintext auth file)",
                        )
                        if not args.no_launch:
                            measure(measure_launched, "launched run via PgBouncer")
                        os.environ["DAGSTER_PG_PORT"] = str(instance_url.port)
                        os.environ["DAGSTER_HOME"] = str(home)
                if not args.no_launch:
                    os.environ["DAGSTER_HOME"] = str(unpooled_home)
                    measure(measure_launched, "launched run, dagster-postgres alone")
                    os.environ["DAGSTER_HOME"] = str(home)
                    measure(measure_launched, "launched run, dagster.yaml (pooled)")
            finally:
                sessions.close()
            print_table(rows, args.repeat)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
