"""The monitor's own DICT spend as asset metadata (the sweeps' and the watch lane's)."""

from __future__ import annotations

from typing import Any

import dagster as dg


def spend_metadata(spend: dict[str, dict[str, int]], top: int = 20) -> dict[str, Any]:
    """The busiest participants' calls of the last hour, and the maxima over all of them: the
    operator compares them with the budget (by default 1,800 GetPolicy and 90 listings an hour,
    half of POLICIES_READ's refill and a quarter of POLICIES_LIST's)."""
    busiest = sorted(spend.items(), key=lambda item: (-item[1]["get_policy"], item[0]))[:top]
    return {
        "own_calls_last_hour": dg.MetadataValue.json(dict(busiest)),
        "own_get_policy_last_hour_max": max((c["get_policy"] for c in spend.values()), default=0),
        "own_list_policies_last_hour_max": max(
            (c["list_policies"] for c in spend.values()), default=0
        ),
    }
