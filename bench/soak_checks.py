"""The soak's invariants, checked after the daemon stopped: each violation is one line with
its evidence (which source, which slot, which file or log record), grouped so a run with a
systematic fault prints a few lines, not hundreds.

Slots checked, per source: from the first slot that starts after the first daemon was
ready to the last that ended before SIGTERM. Not checked, on purpose: a slot that starts
while no daemon process runs because the soak killed it (from the kill -9 to the restarted
process's "daemon started"): no process exists to poll or record it. The slot the killed
process had in flight is checked: its claim must end as `missed`, not `running`.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from bench.soak_world import DaemonProcess, World
from etl.slots import floor_to_slot
from etl.store.engine import make_engine

# The fault kinds that are windows of time (the soak names them, the evidence lines too).
DATABASE_DOWN, DISK_FULL, DAEMON_KILL = "postgres_down", "spool_disk_full", "daemon_kill"
BAD_BODIES = ("nan", "nul", "duplicate_key", "huge")  # a slot that got one of these cannot be ok
INVARIANTS = {
    "rows": "every (source, slot) of the window has exactly one ingestion_runs row, none left running",
    "loaded": "ok slots have their snapshot rows (as counted in the run) and raw payloads",
    "reasons": "error and missed slots have a non-empty reason",
    "bad_bodies": "a slot that got a bad body (NaN, NUL, duplicate key, huge) is an error, not ok or missed",
    "secrets": "no secret in the database, the daemon's log or the spool",
    "spool": "the spool is empty: nothing pending, no temp file, nothing rejected",
    "rss": "the daemon's RSS stays under the limit",
    "tasks": "no task died: no unsupervised traceback, no claim abandoned by a live worker, no exit but SIGTERM's, exit 0",
}
SNAPSHOTS = {
    "balances": "balance_snapshots",
    "account_rows": "account_snapshots",
    "positions": "position_snapshots",
}


@dataclass
class Evidence:
    world: World
    database_url: str
    spool: Path
    daemon: DaemonProcess
    served: list[dict[str, Any]]  # the simulators' log of faults served
    stopped_at: float  # epoch seconds of the SIGTERM
    rss_limit_mb: float
    windows: list[tuple[str, float, float]]  # (fault kind, from, to) in epoch seconds


Slot = tuple[str, datetime]


def _t(moment: datetime) -> str:
    return f"{moment:%H:%M:%SZ}"


def _when(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def window(ev: Evidence) -> tuple[list[Slot], list[Slot]]:
    """(the slots checked, the slots that fell while the soak had the daemon killed)."""
    gens = ev.daemon.generations
    first = gens[0].ready or gens[0].started
    down = [(g.ended or 0.0, nxt.ready or ev.stopped_at) for g, nxt in itertools.pairwise(gens) if g.killed]
    checked: list[Slot] = []
    excluded: list[Slot] = []
    for name, interval in ev.world.intervals.items():
        step = interval.total_seconds()
        slot = math.ceil(first / step) * step
        while slot + step <= ev.stopped_at:
            key = (name, _when(slot))
            (excluded if any(a <= slot <= b for a, b in down) else checked).append(key)
            slot += step
    return checked, excluded


def _context(ev: Evidence, slot: Slot) -> str:
    """The faults whose windows overlap the slot: the likely cause, for the evidence line."""
    start = slot[1].timestamp()
    end = start + ev.world.intervals[slot[0]].total_seconds()
    kinds = sorted({kind for kind, a, b in ev.windows if a < end and b > start})
    return "+".join(kinds) or "no outage"


def _grouped(ev: Evidence, what: str, slots: list[Slot], detail: dict[Slot, str] | None = None) -> list[str]:
    """One line per cause: how many slots, which sources, the first few."""
    groups: dict[str, list[Slot]] = defaultdict(list)
    for slot in sorted(slots, key=lambda s: (s[1], s[0])):
        groups[_context(ev, slot)].append(slot)
    lines = []
    for context, members in groups.items():
        shown = ", ".join(f"{s} {_t(t)}" + (f" ({detail[(s, t)]})" if detail else "") for s, t in members[:3])
        more = f", +{len(members) - 3} more" if len(members) > 3 else ""
        lines.append(f"{what}: {len(members)} slot(s) during {context}: {shown}{more}")
    return lines


def check_rows(ev: Evidence, engine: Engine, checked: list[Slot], out: list[tuple[str, str]]) -> Counter[str]:
    with engine.connect() as conn:
        runs = {(r.source, r.snapshot_ts): r for r in conn.execute(text("SELECT * FROM ingestion_runs"))}
        loaded = {
            column: dict(
                ((s, ts), n)
                for s, ts, n in conn.execute(
                    text(
                        f"SELECT a.source, x.snapshot_ts, count(*) FROM {table} x "
                        "JOIN accounts a ON a.id = x.account_id GROUP BY 1, 2"
                    )
                )
            )
            for column, table in SNAPSHOTS.items()
        }
        raw = {
            (s, ts) for s, ts in conn.execute(text("SELECT DISTINCT source, snapshot_ts FROM raw_payloads"))
        }
    statuses: Counter[str] = Counter()
    missing, running, abandoned, no_reason, short, no_raw = [], [], [], [], {}, []
    for slot in checked:
        run = runs.get(slot)
        if run is None:
            missing.append(slot)
            continue
        statuses[run.status] += 1
        if run.status == "missed" and _abandoned_by_live(ev, run.error or ""):
            abandoned.append(slot)
        if run.status == "running":
            running.append(slot)
        elif run.status != "ok" and not (run.error or "").strip():
            no_reason.append(slot)
        elif run.status == "ok":
            wrong = [
                f"{c} {loaded[c].get(slot, 0)}/{getattr(run, c)}"
                for c in SNAPSHOTS
                if loaded[c].get(slot, 0) != getattr(run, c)
            ]
            if wrong:
                short[slot] = ", ".join(wrong)
            if slot not in raw:
                no_raw.append(slot)
    out += [("rows", line) for line in _grouped(ev, "no ingestion_runs row", missing)]
    out += [("rows", line) for line in _grouped(ev, "left 'running'", running)]
    what = "missed as a claim its worker never finished, though the soak never killed that worker"
    out += [("tasks", line) for line in _grouped(ev, what, abandoned)]
    out += [("reasons", line) for line in _grouped(ev, "error/missed without a reason", no_reason)]
    out += [
        ("loaded", line) for line in _grouped(ev, "ok but rows differ (rows/counted)", list(short), short)
    ]
    out += [("loaded", line) for line in _grouped(ev, "ok without a raw payload", no_raw)]
    _check_bad_bodies(ev, runs, set(checked), out)
    return statuses


def _abandoned_by_live(ev: Evidence, reason: str) -> bool:
    """The reason claim_slots gives names the worker (host:pid:…): was that process alive?"""
    match = re.search(r"claimed by worker [^:\s]+:(\d+):", reason)
    return match is not None and any(g.pid == int(match[1]) and not g.killed for g in ev.daemon.generations)


def _check_bad_bodies(
    ev: Evidence, runs: dict[Slot, Any], checked: set[Slot], out: list[tuple[str, str]]
) -> None:
    """A polled slot that got a bad body is that source's error. `missed` only when it
    could be neither loaded nor spooled (the disk full) or the process was killed."""
    wrong: dict[Slot, str] = {}
    for item in ev.served:
        if item["kind"] not in BAD_BODIES:
            continue
        for name, key in ev.world.keys.items():
            if key in item["credential"]:
                slot = (name, floor_to_slot(_when(item["at"]), ev.world.intervals[name]))
                run = runs.get(slot)
                excused = (
                    {"error", "missed"}
                    if {DISK_FULL, DAEMON_KILL} & set(_context(ev, slot).split("+"))
                    else {"error"}
                )
                if slot in checked and run is not None and run.status not in excused:
                    offset = item["at"] - slot[1].timestamp()  # near 0 or the interval: a late request?
                    wrong[slot] = f"{item['kind']} -> {run.status}, served {offset:.2f} s into the slot"
    out += [
        ("bad_bodies", line) for line in _grouped(ev, "bad body not recorded as error", list(wrong), wrong)
    ]


def check_secrets(ev: Evidence, engine: Engine, out: list[tuple[str, str]]) -> None:
    secrets = ev.world.secrets
    with engine.connect() as conn:
        columns = conn.execute(
            text(
                "SELECT c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() "
                "AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND a.attnum > 0 AND NOT a.attisdropped "
                "AND a.atttypid IN ('text'::regtype, 'jsonb'::regtype, 'json'::regtype, 'varchar'::regtype)"
            )
        ).all()
        for table, column in columns:
            hits = conn.execute(
                text(
                    f'SELECT count(*) FROM "{table}" WHERE EXISTS '
                    f'(SELECT 1 FROM unnest(CAST(:s AS text[])) s WHERE strpos("{column}"::text, s) > 0)'
                ),
                {"s": secrets},
            ).scalar_one()
            if hits:
                out.append(("secrets", f"secret in the database: {table}.{column}, {hits} row(s)"))
    logged = Counter(gen for gen, line in ev.daemon.lines if any(s in line for s in secrets))
    for gen, n in sorted(logged.items()):
        first = next(line for g, line in ev.daemon.lines if g == gen and any(s in line for s in secrets))
        out.append(
            (
                "secrets",
                f"secret in the daemon's log: {n} line(s) of process {gen}, first: "
                f"{_redacted(first, secrets)}",
            )
        )
    for path in sorted(p for p in ev.spool.rglob("*") if p.is_file()):
        body = path.read_bytes()
        if any(s.encode() in body for s in secrets):
            out.append(("secrets", f"secret in the spool: {path.relative_to(ev.spool)}"))


def _redacted(line: str, secrets: list[str]) -> str:
    for secret in secrets:
        line = line.replace(secret, "<SECRET>")
    return line[:300]


def check_spool(ev: Evidence, out: list[tuple[str, str]]) -> None:
    if not ev.spool.exists():
        return
    files = sorted(p for p in ev.spool.rglob("*") if p.is_file())
    for label, chosen in (
        ("pending", [p for p in files if p.parent == ev.spool and not p.name.startswith(".")]),
        ("temp files", [p for p in files if p.name.startswith(".tmp-")]),
        ("rejected", [p for p in files if "rejected" in p.relative_to(ev.spool).parts]),
    ):
        if chosen:
            names = ", ".join(p.name for p in chosen[:3]) + (
                f", +{len(chosen) - 3} more" if len(chosen) > 3 else ""
            )
            out.append(("spool", f"spool not empty: {len(chosen)} {label}: {names}"))


def _exception(trace: str) -> str:
    """The exception line of a traceback (not the notes after it) and our innermost frame."""
    lines = trace.strip().splitlines()
    error = next(
        (x for x in reversed(lines) if re.match(r"[A-Za-z_][\w.]*(: |$)", x)), lines[-1] if lines else ""
    )
    frames = re.findall(r'File ".*?/(etl/[\w/]+\.py)", line \d+, in (\w+)', trace)
    where = " > ".join(f"{path}:{func}" for path, func in frames[-2:])
    return error[:200] + (f" (in {where})" if where else "")


def check_log(ev: Evidence, out: list[tuple[str, str]]) -> int:
    """Tracebacks: a JSON record with `exc` is fine only from a supervisor that restarts the
    task (its message says so); raw lines (not JSON) are what escaped logging altogether."""
    supervised, seen = 0, Counter[str]()
    raw: list[tuple[int, list[str]]] = []
    for gen, line in ev.daemon.lines:
        try:
            record = json.loads(line)
        except ValueError:
            if line.startswith("Traceback") or not raw or not line.startswith((" ", "\t")):
                raw.append((gen, [line]))
            else:
                raw[-1][1].append(line)
            continue
        if not isinstance(record, dict):
            continue
        message = str(record.get("message", ""))
        if "exc" in record or "Traceback" in message:
            if "restart" in message.lower():
                supervised += 1
                continue
            message = re.sub(r" \(trigger: .*?\)", "", message)  # APScheduler's next run time
            error = _exception(str(record.get("exc", "")))
            seen[
                f"logged traceback in process {gen}: {record.get('logger')}: {message[:160]} -> {error}"
            ] += 1
    for gen, block in raw:
        if block[0].startswith("Traceback"):
            seen[f"raw traceback on stderr of process {gen}: {_exception(chr(10).join(block))}"] += 1
    secrets = ev.world.secrets
    out += [("tasks", _redacted(line + (f" (x{n})" if n > 1 else ""), secrets)) for line, n in seen.items()]
    return supervised


def check(ev: Evidence, process_violations: list[str]) -> dict[str, Any]:
    out: list[tuple[str, str]] = [("tasks", v) for v in process_violations]
    checked, excluded = window(ev)
    engine = make_engine(ev.database_url)
    try:
        statuses = check_rows(ev, engine, checked, out)
        check_secrets(ev, engine, out)
    finally:
        engine.dispose()
    check_spool(ev, out)
    if ev.daemon.rss_peak_mb > ev.rss_limit_mb:
        out.append(("rss", f"daemon RSS peaked at {ev.daemon.rss_peak_mb:.0f} MB > {ev.rss_limit_mb:g} MB"))
    supervised = check_log(ev, out)
    gens = ev.daemon.generations
    return {
        "slots": len(checked),
        "slots_by_status": dict(statuses),
        "excluded": f"{len(excluded)} slot(s) while the daemon was killed",
        "processes": len(gens),
        "killed": sum(g.killed for g in gens),
        "peak_rss_mb": round(ev.daemon.rss_peak_mb, 1),
        "median_rss_mb": round(statistics.median(ev.daemon.rss_samples or [0.0]), 1),
        "supervised_restarts": supervised,
        "invariants": {text_: not any(k == key for k, _ in out) for key, text_ in INVARIANTS.items()},
        "violations": [line for _, line in out],
        "interval_s": sorted({i / timedelta(seconds=1) for i in ev.world.intervals.values()}),
    }
