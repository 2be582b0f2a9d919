"""Where the Prometheus tools are (scripts/install-prometheus-tools unpacks them), and
reading an exporter's ``/metrics`` the way Prometheus parses it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from dict_ratelimit.exporter.server import start_exporter
from dict_ratelimit.settings import project_root

DEPLOY = project_root() / "deploy"


def tool(name: str) -> Path:
    """``promtool``, ``prometheus`` or ``amtool``: unpacked under .tools/, else on PATH."""
    unpacked = project_root() / ".tools" / "prometheus" / "usr" / "bin" / name
    if unpacked.is_file():
        return unpacked
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: run scripts/install-prometheus-tools")
    return Path(found)


def scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    [match] = [s for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    return match.value


def scrape_exporter(engine: Engine) -> dict[str, list]:
    """One scrape of an exporter started on ``engine`` for it (any free port), then stopped."""
    server, thread = start_exporter(engine, "127.0.0.1", 0)
    try:
        return scrape(server.server_port)
    finally:
        server.shutdown()
        thread.join(5)


@dataclass
class ExporterRun:
    """What ``dict-ratelimit exporter`` did against a database that is down."""

    first_line: str  # the "serving" line, as printed (text or JSON)
    database_up: float  # dict_rate_limit_exporter_database_up of one scrape
    stderr: str  # everything it printed, first line included
    returncode: int


def exporter_with_database_down(database_url: str, **environment: str) -> ExporterRun:
    """Start the exporter command on ``database_url`` (a server that is not there), scrape it
    once, stop it with SIGINT."""
    env = {**os.environ, "DATABASE_URL": database_url, **environment}
    process = subprocess.Popen(
        [sys.executable, "-m", "dict_ratelimit.cli", "exporter", "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", first)
        assert match, first
        up = value(scrape(int(match.group(1))), "dict_rate_limit_exporter_database_up")
    finally:
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=15)
    return ExporterRun(first, up, first + rest, process.returncode)
