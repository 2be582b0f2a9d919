"""Simulator clocks: real time (optionally accelerated) or manual (tests, replays)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Tells the simulated wall-clock time."""

    def now(self) -> dt.datetime: ...


class RealClock:
    """Wall-clock time, ``speed`` times faster than real from the moment it was created.

    With ``speed == 1`` it is plain UTC now. Faster clocks run ahead of the real time, so
    DICT's ResponseTime lies in the future: meant for replaying scenarios, not for the demo.
    """

    def __init__(self, speed: float = 1.0, start: dt.datetime | None = None) -> None:
        if speed <= 0:
            raise ValueError("clock speed must be > 0")
        self.speed = speed
        self._start = start or dt.datetime.now(dt.timezone.utc)
        self._t0 = time.monotonic()

    def now(self) -> dt.datetime:
        elapsed = (time.monotonic() - self._t0) * self.speed
        return self._start + dt.timedelta(seconds=elapsed)


class ManualClock:
    """Stands still until :meth:`advance` moves it."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = start or dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        if self._now.tzinfo is None:
            raise ValueError("the clock's start must be timezone-aware")
        self._lock = threading.Lock()

    def now(self) -> dt.datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> dt.datetime:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += dt.timedelta(seconds=seconds)
            return self._now


def parse_clock(spec: str, start: dt.datetime | None = None) -> RealClock | ManualClock:
    """``real``, ``manual`` or ``xN`` (real time accelerated N times)."""
    if spec == "real":
        return RealClock(1.0, start)
    if spec == "manual":
        return ManualClock(start)
    if spec.startswith("x"):
        try:
            return RealClock(float(spec[1:]), start)
        except ValueError:
            pass
    raise ValueError(f"clock must be real, manual or xN (e.g. x60), got {spec!r}")
