"""The daemon's Prometheus metrics (prometheus-client), on `etl daemon --metrics-port P`.

Per source: when a slot last loaded and which, how late its load finished (slot lag),
rows, outcomes, errors by fault and missed slots; per venue: poll and load durations;
for the process: the spool depth, whether the database answers, and crashes of its own
tasks. Each daemon has its own registry, so tests can run several in one process.
"""

from __future__ import annotations

import functools

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from etl.errors import Fault
from etl.pipeline import RunResult

# Poll and load durations: from a fast loopback call to a slot budget spent on retries.
_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.last_success = Gauge(
            "etl_last_success_timestamp_seconds",
            "When a slot of the source last loaded",
            ["source"],
            registry=r,
        )
        self.last_slot = Gauge(
            "etl_last_loaded_slot_timestamp_seconds",
            "The latest slot of the source loaded",
            ["source"],
            registry=r,
        )
        self.slot_lag = Gauge(
            "etl_slot_lag_seconds",
            "From the start of the slot to the end of its load",
            ["source"],
            registry=r,
        )
        # Durations by venue, not by source: a histogram is 15 series, and per source at
        # 10,000 sources they took 84 MB a process and 3.3 CPU-s a scrape (of 4.1 s).
        self.poll_seconds = Histogram(
            "etl_poll_duration_seconds",
            "Venue poll of one source's slot, retries included",
            ["venue"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.load_seconds = Histogram(
            "etl_load_duration_seconds",
            "Database load of one source's slot",
            ["venue"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.rows = Counter("etl_rows_total", "Rows loaded", ["source", "table"], registry=r)
        self.slots = Counter(
            "etl_slots_total",
            "Slots by outcome: ok, error, spooled, drained, claimed_elsewhere, missed",
            ["source", "outcome"],
            registry=r,
        )
        self.errors = Counter(
            "etl_errors_total",
            "Failures by fault (etl.faults): source_data, venue_transient, venue_terminal, database_down, bug",
            ["source", "kind"],
            registry=r,
        )
        self.missed = Counter(
            "etl_missed_slots_total", "Slots the daemon did not poll", ["source"], registry=r
        )
        self.interval = Gauge(
            "etl_source_interval_seconds",
            "The source's poll interval (config/alerts.yml measures silence in intervals)",
            ["source"],
            registry=r,
        )
        self.spool_depth = Gauge("etl_spool_depth", "Entries waiting in the spool", registry=r)
        self.database_up = Gauge("etl_database_up", "1 if the database answers", registry=r)
        self.task_restarts = Counter(
            "etl_task_restarts_total",
            "Unexpected exceptions in the daemon's own tasks (logged with their traceback); "
            "a loop is restarted after a backoff, a one-off task runs again at its next occasion",
            ["task"],
            registry=r,
        )
        self._latest: dict[str, float] = {}  # a spooled slot drained late must not move it back
        # A child per label values, looked up once: prometheus-client's `labels()` converts
        # the values and takes a lock on every call, 4 % of the daemon's CPU at 10,000
        # sources. The label values are the config's sources, outcomes and kinds: bounded.
        for metric in (
            self.last_success, self.last_slot, self.slot_lag, self.poll_seconds, self.load_seconds,
            self.rows, self.slots, self.errors, self.missed, self.interval, self.task_restarts,
        ):  # fmt: skip
            metric.labels = functools.cache(metric.labels)  # type: ignore[method-assign,assignment]

    def serve(self, port: int, host: str) -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def stored(self, result: RunResult, lag: float, load_seconds: float) -> None:
        """A live slot's outcome (`ok` or a venue `error`), as written to the database."""
        source = result.source
        self.slots.labels(source, result.status).inc()
        self.load_seconds.labels(result.venue).observe(load_seconds)
        if result.status != "ok":
            self.failed(source, result.fault)
            return
        self.loaded(result)
        self.slot_lag.labels(source).set(lag)

    def failed(self, source: str, fault: Fault | None) -> None:
        """A failure of the source, by its fault (None: the daemon stopped before the poll ended)."""
        if fault is not None:
            self.errors.labels(source, fault.value).inc()

    def loaded(self, result: RunResult) -> None:
        """A slot's rows are in the database (live or from the spool)."""
        source = result.source
        self.last_success.labels(source).set_to_current_time()
        self._latest[source] = max(self._latest.get(source, 0.0), result.slot.timestamp())
        self.last_slot.labels(source).set(self._latest[source])
        for table, n in result.counts.items():
            self.rows.labels(source, table).inc(n)
