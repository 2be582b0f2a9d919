"""Stopping what ``dict-ratelimit dev`` started: runs first, then processes, leaving nothing.

Every child of ``dev`` carries ``DICT_RATELIMIT_DEV_SESSION=<id>`` in its environment, and
so does everything they start (Dagster's code server, run workers): after the process groups
are stopped, whatever still carries the id is stopped too, so no ``dagster api grpc`` lingers
for minutes. Before that, runs in progress are cancelled through the Dagster instance, so an
interrupted tick reads CANCELED in the UI, not as a failure with a stack trace.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

SESSION_VARIABLE = "DICT_RATELIMIT_DEV_SESSION"
STOP_GRACE_SECONDS = 20
CANCEL_WAIT_SECONDS = 20


def new_session() -> str:
    return uuid.uuid4().hex


def stop_process_group(process: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """SIGINT to the child itself (``dagster dev`` stops its webserver, daemon and code server
    in order), then SIGTERM and SIGKILL to its whole process group if it lingers."""
    if process.poll() is not None:
        return
    try:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        args = process.args if isinstance(process.args, list) else [process.args]
        log.warning(
            "pid %s (%s) did not stop within %ss; terminating it",
            process.pid,
            " ".join(str(a) for a in args)[:80],
            STOP_GRACE_SECONDS,
        )
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # the rest of its group (a run worker, its orphan watcher)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)


def session_processes(session: str) -> list[int]:
    """Pids of this user's processes whose environment carries the session id."""
    marker = f"{SESSION_VARIABLE}={session}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = (entry / "environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        if marker in environment.split(b"\0"):
            found.append(int(entry.name))
    return found


def _command(pid: int) -> str:
    """A short name of a process's command line (for the log), '?' when unreadable."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [word.decode(errors="replace") for word in argv if word][:4]
    text = " ".join(Path(w).name if i == 0 else w for i, w in enumerate(words))
    return " ".join(text.split())[:80] or "?"


def stop_session_stragglers(session: str, grace: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL, every process still carrying the session id; returns them."""
    stragglers = session_processes(session)
    names = {pid: _command(pid) for pid in stragglers}
    for pid in stragglers:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(pid) for pid in stragglers):
        time.sleep(0.1)
    for pid in stragglers:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
    if stragglers:
        # expected: `dagster dev` does not stop its code server; naming them is enough
        log.info(
            "stopped %d process(es) Dagster left running: %s",
            len(stragglers),
            ", ".join(f"{pid} ({names.get(pid, '?')})" for pid in stragglers),
        )
    return stragglers


def cancel_active_runs(home: Path, environment: dict[str, str]) -> list[str]:
    """Ask the Dagster instance to cancel the runs that are queued or running, and wait a
    while for them to be marked CANCELED; returns their ids."""
    import dagster as dg

    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)  # the instance's dagster.yaml reads DAGSTER_PG_* from env
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            active_filter = dg.RunsFilter(
                statuses=[
                    dg.DagsterRunStatus.QUEUED,
                    dg.DagsterRunStatus.NOT_STARTED,
                    dg.DagsterRunStatus.STARTING,
                    dg.DagsterRunStatus.STARTED,
                ]
            )
            requested: list[str] = []
            pending: set[str] = set()
            deadline = time.monotonic() + CANCEL_WAIT_SECONDS
            while True:
                # again each round: the daemon may launch a queued run while we cancel
                for run in instance.get_runs(active_filter):
                    if run.run_id not in requested:
                        log.info("cancelling run %s (%s)", run.run_id, run.job_name)
                        instance.run_coordinator.cancel_run(run.run_id)
                        requested.append(run.run_id)
                        pending.add(run.run_id)
                for run_id in list(pending):
                    current = instance.get_run_by_id(run_id)
                    if current is None or current.is_finished:
                        pending.discard(run_id)
                if not pending or time.monotonic() >= deadline:
                    break
                time.sleep(0.5)
            for run_id in pending:  # the worker did not answer: say what happened
                instance.report_run_canceled(
                    instance.get_run_by_id(run_id),  # type: ignore[arg-type]
                    message="dict-ratelimit dev stopped while the run was in progress",
                )
            return requested
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie nobody reaped yet is as good as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
