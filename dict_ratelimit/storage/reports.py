"""Read-only views for operators: the latest readings as a table."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine


def latest_readings(engine: Engine, ispbs: Sequence[str]) -> Sequence[sa.Row]:
    """Latest reading per policy of these participants, lowest remaining ratio first."""
    with engine.connect() as connection:
        return connection.execute(
            sa.text(
                "SELECT ispb, policy, category, available_tokens, capacity, remaining_ratio, "
                "refill_per_minute, response_time, polled_at "
                "FROM dict_ratelimit.latest_policy_state "
                "WHERE ispb = ANY(:ispbs) ORDER BY remaining_ratio, ispb, policy"
            ),
            {"ispbs": list(ispbs)},
        ).fetchall()


def format_readings(rows: Sequence[sa.Row]) -> str:
    """A fixed-width table, one line per policy."""
    header = (
        f"{'ISPB':<8}  {'POLICY':<38} {'CAT':<3} {'AVAILABLE':>10} {'CAPACITY':>9} "
        f"{'LEFT':>7} {'REFILL/MIN':>10}  RESPONSE TIME (UTC)"
    )
    lines = [header]
    for r in rows:
        lines.append(
            f"{r.ispb:<8}  {r.policy:<38} {r.category:<3} {r.available_tokens:>10,} "
            f"{r.capacity:>9,} {r.remaining_ratio:>7.1%} {float(r.refill_per_minute):>10,.0f}  "
            f"{r.response_time:%Y-%m-%d %H:%M:%S}"
        )
    return "\n".join(lines)
