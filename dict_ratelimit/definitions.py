"""Dagster entry point: ``dagster dev -m dict_ratelimit.definitions``."""

from __future__ import annotations

import dagster as dg

from dict_ratelimit.defs.resources import default_resources
from dict_ratelimit.defs.retention import retention_job, retention_schedule
from dict_ratelimit.settings import get_settings


def build_definitions() -> dg.Definitions:
    """All jobs, schedules and resources of the code location."""
    settings = get_settings()
    return dg.Definitions(
        jobs=[retention_job],
        schedules=[retention_schedule(settings.retention_months, settings.months_ahead)],
        resources=default_resources(),
    )


defs = build_definitions()
