"""Prometheus exporter: series read from Postgres at scrape time."""
