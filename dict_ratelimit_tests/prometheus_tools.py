"""Where the Prometheus tools are (scripts/install-prometheus-tools unpacks them)."""

from __future__ import annotations

import shutil
from pathlib import Path

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
