"""Tables in asset metadata as Dagster tables (typed columns the UI sorts), not markdown."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

#: Column types the UI knows: string, int, float, bool.
Column = tuple[str, str]


def metadata_table(
    columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]
) -> dg.MetadataValue:
    """``rows`` (dicts keyed by column name) as a table with ``columns`` (name, type);
    a missing or None value is an empty cell. Every record keeps every column: Dagster refuses
    a table whose records have different fields."""
    return dg.MetadataValue.table(
        records=[dg.TableRecord({name: row.get(name) for name, _ in columns}) for row in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in columns]),
    )
