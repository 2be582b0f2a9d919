"""Where the Prometheus tools are (scripts/install-prometheus-tools unpacks them), and
reading an exporter's ``/metrics`` the way Prometheus parses it."""

from __future__ import annotations

import shutil
import urllib.request
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
