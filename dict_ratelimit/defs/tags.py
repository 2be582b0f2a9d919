"""Run tags shared by jobs and schedules, and what a run's tags say about its participants."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dict_ratelimit.domain.shards import Shard

#: Runs with the same value of this tag never run at the same time (dagster.yaml: tag
#: concurrency limit 1 per value): the unsharded monitor tick, metric backfills and the alert
#: watchdog share the value ``monitor``; each shard of a sharded tick has its own value, so
#: shards run side by side but a shard never overlaps its own previous tick. (Where runs of
#: different values meet, the database keeps them apart: the derive and alert steps hold
#: advisory locks and take their work from queues.)
SERIAL_KEY = "dict_ratelimit/serial"
SERIAL_TAG = {SERIAL_KEY: "monitor"}

#: ``INDEX/COUNT`` on a run of a sharded tick; absent on a run for every participant.
SHARD_KEY = "dict_ratelimit/shard"


#: Run config that makes a run print its event log with the job's ``console`` logger (Dagster
#: uses a job's loggers only when the run config names them; otherwise its colored text one).
JSON_RUN_LOGS: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "DEBUG"}}}}


def run_logs_config(json_logs: bool) -> dict[str, Any]:
    """The run config our schedules add: the JSON console logger's, when logs are JSON."""
    return dict(JSON_RUN_LOGS) if json_logs else {}


def shard_tags(shard: Shard) -> dict[str, str]:
    """The tags of a shard's tick run (of the only shard: the unsharded tick's)."""
    if shard.count == 1:
        return dict(SERIAL_TAG)
    return {SERIAL_KEY: f"monitor-shard-{shard.index}-of-{shard.count}", SHARD_KEY: shard.label}


def run_shard(tags: Mapping[str, str]) -> Shard | None:
    """The shard a run's tags name (None: every participant); a malformed tag fails the run
    with a clear error before anything is polled or stored."""
    label = tags.get(SHARD_KEY)
    if label is None:
        return None
    try:
        return Shard.parse(label)
    except ValueError as error:
        raise ValueError(f"run tag {SHARD_KEY}: {error}") from None


def shard_scope(
    tags: Mapping[str, str], participants: list[str]
) -> tuple[list[str] | None, list[str] | None]:
    """What a run's derive and alert steps take from the queues: ``(members, everyone)``.

    ``(None, None)`` for a run of every participant (everything waiting); for a shard of a
    split, its members, and for shard 0 also the whole list, so that it takes what
    participants no longer listed left behind (their keys and alert tracks)."""
    shard = run_shard(tags)
    if shard is None or shard.count == 1:
        return None, None
    return shard.members(participants), (participants if shard.index == 0 else None)


def run_participants(tags: Mapping[str, str], participants: list[str]) -> list[str]:
    """The participants a run works on: its shard's share of ``participants``, or all."""
    shard = run_shard(tags)
    return participants if shard is None else shard.members(participants)
