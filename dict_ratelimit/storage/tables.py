"""SQLAlchemy Core descriptions of the tables the code writes in bulk.

The SQL migrations in ``sql/`` are the source of truth for the schema; these objects only
name the columns so that inserts can be built (and batched by SQLAlchemy's insertmanyvalues).
"""

from __future__ import annotations

import sqlalchemy as sa

from dict_ratelimit.storage.database import SCHEMA

metadata = sa.MetaData(schema=SCHEMA)

policy_snapshot = sa.Table(
    "policy_snapshot",
    metadata,
    sa.Column("ispb", sa.CHAR(8), primary_key=True),
    sa.Column("policy", sa.Text, primary_key=True),
    sa.Column("response_time", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("polled_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("category", sa.CHAR(1), nullable=False),
    sa.Column("available_tokens", sa.BigInteger, nullable=False),
    sa.Column("capacity", sa.BigInteger, nullable=False),
    sa.Column("refill_tokens", sa.BigInteger, nullable=False),
    sa.Column("refill_period_sec", sa.Integer, nullable=False),
    sa.Column("correlation_id", sa.Text),
)
