"""Time one Prometheus scrape of the exporter over a database with N participants.

    .venv/bin/python bench/bench_exporter.py [--participants 100] [--ticks 3] [--scrapes 20]

Fills a fresh embedded PostgreSQL through monitor_job (the simulator's steady scenario, every
participant category A, a tick every 300 simulated seconds) and then scrapes ``/metrics``
over HTTP; prints the median and max scrape time and the number of series.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
import urllib.request

from _database import bench_database  # bench/ is on sys.path when run as a script

from dict_ratelimit.definitions import build_definitions
from dict_ratelimit.defs.monitor import TICK_TAGS
from dict_ratelimit.defs.resources import BridgeResource, PostgresResource, ThresholdsResource
from dict_ratelimit.exporter.server import start_exporter
from dict_ratelimit.simulator.clock import ManualClock
from dict_ratelimit.simulator.engine import Simulator
from dict_ratelimit.simulator.scenarios import load_scenario
from dict_ratelimit.simulator.server import start_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=100)
    parser.add_argument("--ticks", type=int, default=3)
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args()
    ispbs = [f"{10_000_000 + i:08d}" for i in range(args.participants)]
    clock = ManualClock(dt.datetime.now(dt.timezone.utc).replace(microsecond=0))
    simulator = Simulator(dict.fromkeys(ispbs, "A"), load_scenario("steady"), clock)
    server, port, _ = start_server(simulator, max_workers=32)
    with bench_database() as (url, engine):
        database_url = url.render_as_string(hide_password=False)
        job = build_definitions(
            {
                "postgres": PostgresResource(database_url=database_url),
                "bridge": BridgeResource(
                    target=f"127.0.0.1:{port}", participants=",".join(ispbs),
                    max_clock_skew_seconds=0,
                ),
                "thresholds": ThresholdsResource(),
            }
        ).resolve_job_def("monitor_job")  # fmt: skip
        for _ in range(args.ticks):
            clock.advance(300)
            simulator.now()
            job.execute_in_process(partition_key=clock.now().strftime("%Y-%m-%d"), tags=TICK_TAGS)
        from dict_ratelimit.exporter import collector as c

        collector = c.DictRateLimitCollector(engine)
        started = time.perf_counter()
        list(collector.collect())
        print(f"  collect(): {(time.perf_counter() - started) * 1000:.0f} ms")
        exporter, thread = start_exporter(engine, "127.0.0.1", 0)
        times, prometheus_times, body = [], [], b""
        url_metrics = f"http://127.0.0.1:{exporter.server_port}/metrics"
        # what Prometheus 2.x asks for: OpenMetrics or text, gzip
        prometheus_headers = {
            "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
            "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            "Accept-Encoding": "gzip",
        }
        for _ in range(args.scrapes):
            started = time.perf_counter()
            with urllib.request.urlopen(url_metrics, timeout=10) as response:
                body = response.read()
            times.append(time.perf_counter() - started)
            started = time.perf_counter()
            request = urllib.request.Request(url_metrics, headers=prometheus_headers)
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
            prometheus_times.append(time.perf_counter() - started)
        exporter.shutdown()
        thread.join(5)
    server.stop(None)
    lines = body.decode().splitlines()
    series = sum(1 for line in lines if line and not line.startswith("#"))
    for line in lines:  # the collector's own timing of each query group, last scrape
        if line.startswith("dict_rate_limit_exporter_collector_duration_seconds{"):
            print(f"  {line}")
    print(
        f"{args.participants} participants: {series} series, {len(body) / 1024:.0f} KiB; "
        f"scrape p50 {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms "
        f"({args.scrapes} scrapes); as Prometheus asks (OpenMetrics, gzip): p50 "
        f"{statistics.median(prometheus_times) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
