"""Dagster definitions, by domain: resources, retention, (later) monitor assets and sensors."""
