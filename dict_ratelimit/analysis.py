"""From stored rows to metric and evaluation rows: the glue between pandas frames and the
pure domain (``domain.metrics_batch`` and ``domain.thresholds``)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from dict_ratelimit.domain.catalog import POLICIES_BY_NAME
from dict_ratelimit.domain.metrics_batch import SnapshotPairs, compute_metrics
from dict_ratelimit.domain.thresholds import ThresholdConfig, evaluate

#: A reading older than this is no "previous reading" (the SQL bounds its lookups the same way).
MAX_PREVIOUS_AGE = pd.Timedelta(days=1)


def _max_overdraft(policies: pd.Series, a0: np.ndarray, a1: np.ndarray) -> np.ndarray:
    """How far one request can overdraw: its cost minus one (404 on anti-scan), or what the
    readings themselves show."""
    cost = policies.map(
        lambda name: POLICIES_BY_NAME[name].not_found_cost if name in POLICIES_BY_NAME else 1
    ).to_numpy(dtype=float)
    seen = -np.fmin(np.fmin(a0, a1), 0.0)
    return np.fmax(cost - 1, np.nan_to_num(seen))


def metrics_frame(pairs: pd.DataFrame, thresholds: ThresholdConfig) -> pd.DataFrame:
    """One metric row per snapshot of ``pairs`` (see ``storage.metrics.load_pairs``)."""
    if pairs.empty:
        return pd.DataFrame(columns=["ispb", "policy", "response_time"])
    pairs = pairs.copy()
    too_old = (pairs["response_time"] - pairs["prev_response_time"]) > MAX_PREVIOUS_AGE
    prev_columns = ["prev_response_time", "prev_available", "prev_capacity",
                    "prev_refill_tokens", "prev_refill_period_sec"]  # fmt: skip
    pairs.loc[too_old, prev_columns] = None  # the same rule the SQL applies (one day)
    a1 = pairs["available_tokens"].to_numpy(dtype=float)
    a0 = pairs["prev_available"].to_numpy(dtype=float)
    elapsed = (pairs["response_time"] - pairs["prev_response_time"]).dt.total_seconds()
    shape_changed = (
        pairs["prev_capacity"].notna()
        & (
            (pairs["prev_capacity"] != pairs["capacity"])
            | (pairs["prev_refill_tokens"] != pairs["refill_tokens"])
            | (pairs["prev_refill_period_sec"] != pairs["refill_period_sec"])
        )
    ).to_numpy()
    clear = pairs["policy"].map(lambda name: thresholds.for_policy(name).clear_ratio)
    own_calls = (
        pd.to_numeric(pairs["own_calls"], errors="coerce").fillna(0)
        if "own_calls" in pairs
        else pd.Series(0, index=pairs.index)
    )
    computed = compute_metrics(
        SnapshotPairs(
            available=a1,
            capacity=pairs["capacity"].to_numpy(dtype=float),
            refill_tokens=pairs["refill_tokens"].to_numpy(dtype=float),
            refill_period=pairs["refill_period_sec"].to_numpy(dtype=float),
            prev_available=a0,
            elapsed=elapsed.to_numpy(dtype=float),
            shape_changed=shape_changed,
            max_overdraft=_max_overdraft(pairs["policy"], a0, a1),
            own_calls=own_calls.to_numpy(dtype=float),
        ),
        clear_ratio=clear.to_numpy(dtype=float),
    )
    frame = pairs[
        ["ispb", "policy", "response_time", "prev_response_time", "available_tokens",
         "capacity", "refill_tokens", "refill_period_sec"]
    ].copy()  # fmt: skip
    frame["elapsed_seconds"] = elapsed.to_numpy()
    for name, values in computed.items():
        frame[name] = values
    total = pd.to_numeric(pairs["total"], errors="coerce")
    not_found = pd.to_numeric(pairs["not_found"], errors="coerce")
    # unknown (no stats, or no response in the window) stays NULL, never 0
    frame["not_found_share"] = (not_found / total.where(total > 0)).to_numpy()
    frame["own_calls"] = own_calls.astype(int).to_numpy()
    # DICT's 429s since the previous reading (the Bridge's counts); NULL when unknown
    if "throttled" in pairs:
        frame["throttled"] = pd.to_numeric(pairs["throttled"], errors="coerce").astype("Int64")
        frame["throttled_since"] = pairs["throttled_since"]
    else:  # no counts from the Bridge at all: unknown, never 0
        frame["throttled"] = pd.array([pd.NA] * len(frame), dtype="Int64")
        frame["throttled_since"] = pd.NaT
    return frame


def evaluations_frame(metrics: pd.DataFrame, thresholds: ThresholdConfig) -> pd.DataFrame:
    """One threshold evaluation per metric row: level, reasons, the thresholds used.

    Rows that are plainly OK (balance above zero, above the warning ratio, first 429 not
    within the warning horizon) get their level without a call per row; every other row goes
    through :func:`evaluate`, which writes the reasons. Both give the same answer (tested).
    """
    columns = [
        "ispb", "policy", "response_time", "level", "level_rank", "remaining_ratio",
        "time_to_429_s", "reasons", "thresholds",
    ]  # fmt: skip
    if metrics.empty:
        return pd.DataFrame(columns=columns)
    policies = metrics["policy"].unique()
    used = {name: thresholds.for_policy(name) for name in policies}
    used_json = {name: json.dumps(t.as_dict()) for name, t in used.items()}
    warning_ratio = metrics["policy"].map(lambda n: used[n].warning_ratio).to_numpy(float)
    horizon = metrics["policy"].map(lambda n: used[n].warning_horizon_seconds).to_numpy(float)
    available = metrics["available_tokens"].to_numpy(float)
    capacity = metrics["capacity"].to_numpy(float)
    ttl = metrics["time_to_429_s"].to_numpy(float)
    throttled = (
        pd.to_numeric(metrics["throttled"], errors="coerce").to_numpy(float)
        if "throttled" in metrics
        else np.full(len(metrics), np.nan)
    )
    since = (
        pd.to_datetime(metrics["throttled_since"], utc=True)
        if "throttled_since" in metrics
        else pd.Series(pd.NaT, index=metrics.index)
    )
    plainly_ok = (
        (available > 0)
        & (available / capacity > warning_ratio)
        & (np.isnan(ttl) | (ttl >= horizon))
        & (np.isnan(throttled) | (throttled == 0))
    )
    frame = metrics[["ispb", "policy", "response_time", "remaining_ratio", "time_to_429_s"]].copy()
    frame["level"] = "OK"
    frame["level_rank"] = 0
    frame["reasons"] = "[]"
    frame["thresholds"] = metrics["policy"].map(used_json)
    levels, ranks, reasons_json = [], [], []
    rest = ~plainly_ok
    for policy, tokens, size, horizon_value, rejected, rejected_since in zip(
        metrics["policy"].to_numpy()[rest],
        available[rest],
        capacity[rest],
        ttl[rest],
        throttled[rest],
        since.to_numpy()[rest],
        strict=True,
    ):
        level, reasons = evaluate(
            tokens,
            size,
            None if np.isnan(horizon_value) else horizon_value,
            used[policy],
            throttled=None if np.isnan(rejected) else int(rejected),
            throttled_since=None if pd.isna(rejected_since) else pd.Timestamp(rejected_since),
            policy=policy,
        )
        levels.append(level.name)
        ranks.append(int(level))
        reasons_json.append(
            json.dumps([reason.as_dict() for reason in reasons], ensure_ascii=False)
        )
    if levels:  # (an empty list would be taken for a scalar)
        frame.loc[rest, "level"] = levels
        frame.loc[rest, "level_rank"] = ranks
        frame.loc[rest, "reasons"] = reasons_json
    return frame[columns]
