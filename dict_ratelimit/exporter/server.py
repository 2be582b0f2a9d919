"""``dict-ratelimit exporter``: serve ``/metrics`` from the collector until interrupted."""

from __future__ import annotations

import logging
import socketserver
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from sqlalchemy.engine import Engine

from dict_ratelimit.exporter.collector import DictRateLimitCollector
from dict_ratelimit.exporter.exposition import metrics_app

log = logging.getLogger(__name__)


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in flight does not keep the process alive


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def start_exporter(
    engine: Engine, host: str = "127.0.0.1", port: int = 9464
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` on ``host:port`` in a background thread (port 0 = any free port)."""
    collector = DictRateLimitCollector(engine)
    server = make_server(
        host, port, metrics_app(collector.collect), _ThreadingServer, _QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="exporter", daemon=True)
    thread.start()
    return server, thread
