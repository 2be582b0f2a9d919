"""The monitor's one pipeline: sweep → validate → store → metrics → evaluations → alerts.

Every cadence calls these stages: the five-minute ``monitor_job`` (one Dagster asset per
stage, thin adapters around them), ``dict-ratelimit tick``, and the watch lane between sweeps.
Each stage returns a report that the adapters turn into metadata, logs or output.
"""
