"""The container image definition, checked without a Docker engine: hadolint finds nothing,
the build context holds what the Dockerfile copies, the version it installs is the package's,
and the image runs unprivileged with a health check. (The install steps themselves, the wheel
and the pinned constraints, are exercised by test_installable.py.)"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

from dict_ratelimit.settings import PACKAGE_DIR

CHECKOUT = PACKAGE_DIR.parent
DOCKERFILE = CHECKOUT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_the_image_installs_the_packages_own_version() -> None:
    version = importlib.metadata.version("dict-ratelimit")  # pyproject.toml's, as installed
    args = dict(arg.split("=", 1) for keyword, arg in _final_stage() if keyword == "ARG")
    assert args["VERSION"] == version
    assert any(
        keyword == "RUN" and '"dict-ratelimit==${VERSION}"' in rest and "--no-index" in rest
        for keyword, rest in _final_stage()
    )


def test_everything_the_build_copies_is_in_the_build_context() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (CHECKOUT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = [
        rest.split()[:-1]
        for keyword, rest in _instructions()
        if keyword == "COPY" and not rest.startswith("--from")
    ]
    assert copied
    for sources in copied:
        for source in sources:
            assert source in allowed, f"{source} is excluded by .dockerignore"
            assert (CHECKOUT / source).exists(), source


def test_the_image_runs_unprivileged_with_a_health_check() -> None:
    final = _final_stage()
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "the final stage must switch to an unprivileged user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric: Kubernetes' runAsNonRoot can verify it
    health = [rest for keyword, rest in final if keyword == "HEALTHCHECK"]
    assert health and "/metrics" in health[0]
    port = next(rest for keyword, rest in final if keyword == "EXPOSE")
    assert f"127.0.0.1:{port}/metrics" in health[0]
