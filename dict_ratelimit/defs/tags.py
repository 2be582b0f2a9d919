"""Run tags shared by jobs and schedules."""

#: Runs with this tag never run at the same time (dagster.yaml: tag concurrency limit 1):
#: the monitor tick, metric backfills and the alert watchdog all write the same tables.
SERIAL_TAG = {"dict_ratelimit/serial": "monitor"}
