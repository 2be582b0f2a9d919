"""Shards: the participant list split into ``count`` parts that tick as separate runs.

A direct participant serving hundreds of indirect ones has too many buckets for one process
every five minutes; split into shards, each run polls, stores, derives and alerts only its own
participants, and the Kubernetes run launcher spreads the runs over pods.

Membership is positional: the sorted list dealt round-robin (``sorted(ispbs)[index::count]``),
so shards differ in size by at most one participant. Adding a participant may move others to
another shard; that is harmless, because every stage is safe to run twice or side by side for
the same participant (the store keeps each DICT ResponseTime once, and the derive and alert
steps hold database locks and take their work from queues).

Pure: no Dagster, no SQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

#: Most shards a deployment may ask for (each is a run every tick).
MAX_SHARDS = 64

_TAG = re.compile(r"(\d+)/(\d+)")


@dataclass(frozen=True, order=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ValueError(f"shard count {self.count} is not between 1 and {MAX_SHARDS}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index {self.index} is not between 0 and {self.count - 1}")

    @property
    def label(self) -> str:
        """``index/count``: the run tag's value and the ``shard`` column of ``monitor_tick``."""
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, label: str) -> Shard:
        """The shard a label such as ``"2/4"`` names; a clear error for anything else."""
        match = _TAG.fullmatch(label.strip())
        if match is None:
            raise ValueError(f"shard {label!r} is not of the form INDEX/COUNT, e.g. 0/4")
        return cls(int(match.group(1)), int(match.group(2)))

    def members(self, ispbs: Iterable[str]) -> list[str]:
        """This shard's participants, in sorted order."""
        return sorted(set(ispbs))[self.index :: self.count]


def all_shards(count: int) -> list[Shard]:
    """Every shard of a split in ``count`` parts, in order."""
    return [Shard(index, count) for index in range(count)]
