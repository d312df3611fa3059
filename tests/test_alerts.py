"""config/alerts.yml alerts on metrics the daemon exports (promtool tests the rules' logic: .ci/run)."""

from __future__ import annotations

import re
from pathlib import Path

from etl.metrics import Metrics
from etl.scheduler import Daemon
from etl.spool import Spool
from tests.helpers import settings_for, source_entry

ALERTS = Path(__file__).resolve().parents[1] / "config" / "alerts.yml"


def test_every_metric_the_alerts_read_is_exported():
    exported = set()
    for family in Metrics().registry.collect():
        exported |= {family.name, f"{family.name}_total"} if family.type == "counter" else {family.name}
    used = set(re.findall(r"\betl_[a-z_]+", ALERTS.read_text()))
    assert {"etl_last_loaded_slot_timestamp_seconds", "etl_spool_depth", "etl_database_up"} <= used
    assert used <= exported, used - exported


def test_the_daemon_exports_each_sources_interval(tmp_path, session_engine):
    settings = settings_for(source_entry("a", "bittap", "http://x.test", "k", "s", interval="5m"),
                            source_entry("b", "bittap", "http://x.test", "k2", "s"), interval="60s")
    daemon = Daemon(settings, session_engine, Spool(tmp_path))
    values = {s.labels["source"]: s.value for f in daemon.metrics.registry.collect()
              if f.name == "etl_source_interval_seconds" for s in f.samples}
    assert values == {"a": 300.0, "b": 60.0}
