"""config/alerts.yml alerts on metrics the daemon exports (promtool tests the rules' logic: .ci/run)."""

from __future__ import annotations

import re
from pathlib import Path

from etl.metrics import Metrics

ALERTS = Path(__file__).resolve().parents[1] / "config" / "alerts.yml"


def test_every_metric_the_alerts_read_is_exported():
    exported = set()
    for family in Metrics().registry.collect():
        exported |= {family.name, f"{family.name}_total"} if family.type == "counter" else {family.name}
    used = set(re.findall(r"\betl_[a-z_]+", ALERTS.read_text()))
    assert {"etl_last_loaded_slot_timestamp_seconds", "etl_spool_depth", "etl_database_up"} <= used
    assert used <= exported, used - exported
