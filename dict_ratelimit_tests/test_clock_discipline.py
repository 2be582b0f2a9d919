"""Business time comes from the injected clock: nothing outside ``dict_ratelimit/clock.py``
(and the simulator, whose clocks *are* DICT's) reads the wall clock.

Durations (``time.monotonic``, ``time.perf_counter``) are fine: they measure, they don't decide.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dict_ratelimit

pytestmark = pytest.mark.unit

PACKAGE = Path(dict_ratelimit.__file__).parent
ALLOWED = {PACKAGE / "clock.py"}
ALLOWED_DIRS = {PACKAGE / "simulator"}
#: (object, attribute) calls that read the wall clock
WALL_CLOCK = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
    ("time", "time"),
    ("time", "time_ns"),
    ("time", "localtime"),
    ("time", "gmtime"),
}


def _wall_clock_reads(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
        if (owner_name, node.func.attr) in WALL_CLOCK:
            found.append(f"{path.name}:{node.lineno} {owner_name}.{node.func.attr}()")
    return found


def test_only_the_clock_module_reads_the_wall_clock() -> None:
    files = [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in ALLOWED and not any(d in path.parents for d in ALLOWED_DIRS)
    ]
    assert len(files) > 40
    offenders = [f"{path.parent.name}/{read}" for path in files for read in _wall_clock_reads(path)]
    assert offenders == [], "use the injected clock (dict_ratelimit.clock) for business time"


def test_the_check_sees_a_wall_clock_read(tmp_path: Path) -> None:
    """The scanner itself works: it finds each spelling of a wall-clock read."""
    sample = tmp_path / "probe.py"
    sample.write_text(
        "import datetime as dt, time\n"
        "a = dt.datetime.now(dt.timezone.utc)\n"
        "b = time.time()\n"
        "c = dt.date.today()\n"
        "d = time.monotonic()\n"
    )
    reads = _wall_clock_reads(sample)
    assert [read.split(" ")[1] for read in reads] == [
        "datetime.now()",
        "time.time()",
        "date.today()",
    ]
