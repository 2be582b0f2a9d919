"""``dict-ratelimit exporter``: serve ``/metrics`` from the collector until interrupted."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from sqlalchemy.engine import Engine

from dict_ratelimit.exporter.collector import DictRateLimitCollector


def start_exporter(
    engine: Engine, host: str = "127.0.0.1", port: int = 9464
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` on ``host:port`` in a background thread (port 0 = any free port).

    Only this project's series are exposed: the registry holds the one collector, so a scrape
    costs exactly the database reads it needs.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DictRateLimitCollector(engine))
    return start_http_server(port, addr=host, registry=registry)
