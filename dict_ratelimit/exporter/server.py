"""``dict-ratelimit exporter``: serve ``/metrics`` from the collector, whatever the clients do.

Three rules keep a scrape answering within its time budget:

- **Single flight.** Concurrent scrapes share one collection: a request that arrives while one
  runs waits for it instead of starting its own, so a pile of requests costs one round of
  queries, not one each behind a lock.
- **A budget.** A collection that does not finish within ``budget_seconds`` (a frozen
  database: SIGSTOP, a network partition) is answered with ``…_exporter_database_up 0`` and
  the collector failures, while it finishes (or times out) in the background; the next
  scrapes keep getting that answer, not a hang, until the database replies again.
- **No work for the departed.** A request whose client has already closed its connection
  (a Prometheus that gave up, a port scanner) is dropped before anything is collected.

And one rule keeps the slowest scrape near the median: Python's cyclic garbage collector is
paused while a collection builds and renders its samples (340,000 at 1,000 participants).
They hold no reference cycles, so reference counting frees them; the full collections their
allocation triggered took the slowest of ten scrapes from 0.73 s to 1.2-1.3 s.
"""

from __future__ import annotations

import gc
import gzip
import logging
import select
import socket
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sqlalchemy.engine import Engine

from dict_ratelimit.clock import Clock
from dict_ratelimit.exporter.collector import DictRateLimitCollector
from dict_ratelimit.exporter.exposition import CONTENT_TYPE, render

log = logging.getLogger(__name__)

DEFAULT_BUDGET_SECONDS = 4.0  # well inside Prometheus' default 10 s scrape timeout
REQUEST_READ_TIMEOUT_SECONDS = 10.0  # a client that connects and says nothing


class SingleFlight:
    """At most one collection at a time; every request in the meantime shares its result."""

    def __init__(self, collector: DictRateLimitCollector, budget_seconds: float) -> None:
        self.collector = collector
        self.budget_seconds = budget_seconds
        self._lock = threading.Lock()
        self._current: Future[bytes] | None = None
        self.collections = 0  # how many collections ran (shared ones count once)

    def _run(self, future: Future[bytes]) -> None:
        # one collection at a time (single flight), so one pause of the cyclic collector
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            future.set_result(render(self.collector.collect()))
        except BaseException as error:  # never leave waiters hanging
            future.set_exception(error)
        finally:
            if was_enabled:
                gc.enable()

    def metrics(self) -> bytes:
        """The exposition of the running collection, or of a new one; the failure answer
        when it is not done within the budget."""
        started = time.perf_counter()
        with self._lock:
            if self._current is None or self._current.done():
                self._current = Future()
                self.collections += 1
                threading.Thread(
                    target=self._run, args=(self._current,), name="collect", daemon=True
                ).start()
            current = self._current
        try:
            return current.result(timeout=self.budget_seconds)
        except FutureTimeout:
            log.error(
                "scrape: the database did not answer within %.1f s; serving database_up 0",
                self.budget_seconds,
            )
            return render(self.collector.failed_scrape(time.perf_counter() - started))


def client_gone(sock: socket.socket) -> bool:
    """True when the peer has closed its side (or reset) before we answered. A client waiting
    for its answer sends nothing more: its socket is not readable."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""  # readable and empty: end of stream
    except OSError:
        return True


class _Handler(BaseHTTPRequestHandler):
    flight: SingleFlight  # set on the subclass made per server
    timeout = REQUEST_READ_TIMEOUT_SECONDS
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/", "/metrics"):
            self._answer(404, b"not found: try /metrics\n", "text/plain")
            return
        if client_gone(self.connection):
            self.close_connection = True
            return
        body = self.flight.metrics()
        headers = {}
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        self._answer(200, body, CONTENT_TYPE, headers)

    def _answer(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # it left while we answered: nothing to do

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a scrape in flight does not keep the process alive
    request_queue_size = 128


def start_exporter(
    engine: Engine,
    host: str = "127.0.0.1",
    port: int = 9464,
    *,
    clock: Clock | None = None,
    budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    runbook_base_url: str | None = None,
) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serve ``/metrics`` on ``host:port`` in a background thread (port 0 = any free port)."""
    collector = DictRateLimitCollector(engine, clock=clock, runbook_base_url=runbook_base_url)
    flight = SingleFlight(collector, budget_seconds)
    handler = type("MetricsHandler", (_Handler,), {"flight": flight})
    server = _Server((host, port), handler)
    server.flight = flight  # type: ignore[attr-defined]  # for tests and diagnostics
    thread = threading.Thread(target=server.serve_forever, name="exporter", daemon=True)
    thread.start()
    return server, thread
