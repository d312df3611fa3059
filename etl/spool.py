"""The durable spool: what the database could not take, kept on disk until it answers again.

One file per entry under `<data dir>/spool/`, exact JSON (`etl.exactjson`: Decimals keep
every digit). A file is written to a temp name in the same folder, fsynced, renamed into
place and the folder fsynced, so after a crash it is either whole or absent. Names start
with the slot, so sorting them gives oldest first.

A poll entry keeps the raw responses, not the normalized rows: `normalize` is pure, so
draining re-normalizes them into the very batch the poll produced, and the slot loads
through the same upsert as a live one (`etl.pipeline.store(..., keep_loaded=True)`), which
skips a slot already loaded: a file drained twice (a crash between the load and the
removal, or two replicas on one spool) changes nothing the second time. A missed entry
keeps slots nobody polled, to be recorded as `missed` in `ingestion_runs`.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from etl import exactjson
from etl.config import SourceConfig
from etl.errors import EtlError
from etl.pipeline import Polled
from etl.records import Batch, RawResponse
from etl.slots import parse_slot
from etl.venues import venue

log = logging.getLogger(__name__)
FORMAT = 1
_SEP = "@"  # not allowed in source names, so a file name splits unambiguously


class SpoolError(EtlError):
    """A spool file that cannot be read back (it is moved aside, never deleted)."""


@dataclass(frozen=True)
class SpooledPoll:
    source: str
    venue: str
    slot: datetime
    started_at: datetime
    attempts: int
    error: str | None
    responses: tuple[RawResponse, ...]


@dataclass(frozen=True)
class SpooledMissed:
    source: str
    slots: tuple[datetime, ...]
    reason: str


Entry = SpooledPoll | SpooledMissed


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _name(slot: datetime, source: str, kind: str) -> str:
    return f"{slot:%Y%m%dT%H%M%S%fZ}{_SEP}{source}{_SEP}{kind}{_SEP}{uuid.uuid4().hex[:12]}.json"


def _encode(entry: Entry) -> dict[str, Any]:
    if isinstance(entry, SpooledMissed):
        return {
            "format": FORMAT,
            "kind": "missed",
            "source": entry.source,
            "slots": [_iso(s) for s in entry.slots],
            "reason": entry.reason,
        }
    return {
        "format": FORMAT,
        "kind": "poll",
        "source": entry.source,
        "venue": entry.venue,
        "slot": _iso(entry.slot),
        "started_at": _iso(entry.started_at),
        "attempts": entry.attempts,
        "error": entry.error,
        "responses": [
            {
                "endpoint": r.endpoint,
                "http_status": r.http_status,
                "fetched_at": _iso(r.fetched_at),
                "body": r.body,
            }
            for r in entry.responses
        ],
    }


def _decode(data: Any) -> Entry:
    if data.get("format") != FORMAT:
        raise ValueError(f"unknown spool format {data.get('format')!r}")
    if data["kind"] == "missed":
        return SpooledMissed(
            source=data["source"], slots=tuple(parse_slot(s) for s in data["slots"]), reason=data["reason"]
        )
    return SpooledPoll(
        source=data["source"],
        venue=data["venue"],
        slot=parse_slot(data["slot"]),
        started_at=parse_slot(data["started_at"]),
        attempts=int(data["attempts"]),
        error=data["error"],
        responses=tuple(
            RawResponse(
                endpoint=r["endpoint"],
                http_status=int(r["http_status"]),
                body=r["body"],
                fetched_at=parse_slot(r["fetched_at"]),
            )
            for r in data["responses"]
        ),
    )


def spooled(polled: Polled) -> SpooledPoll:
    return SpooledPoll(
        source=polled.source.name,
        venue=polled.source.venue,
        slot=polled.slot,
        started_at=polled.started_at,
        attempts=polled.attempts,
        error=polled.error,
        responses=polled.responses,
    )


def replayed(entry: SpooledPoll, source: SourceConfig) -> Polled:
    """The poll again, from its responses: normalized now, exactly as when it was polled."""
    batch: Batch | None = None
    error = entry.error
    if error is None:
        try:
            batch = venue(entry.venue).normalize(source.name, entry.responses)
        except EtlError as err:
            error = f"{source.name}: {err}"
        except Exception as err:  # a normalizer bug: recorded for the slot, like a live poll's
            log.exception("source %s: unexpected error re-normalizing a spooled slot", source.name)
            error = f"{source.name}: internal error {type(err).__name__}: {err}"
    return Polled(
        source=source,
        slot=entry.slot,
        started_at=entry.started_at,
        responses=entry.responses,
        batch=batch,
        error=error,
        attempts=entry.attempts,
    )


class Spool:
    def __init__(self, root: Path):
        self.root = root
        self.rejected = root / "rejected"

    def put(self, entry: Entry) -> Path:
        """Write durably: temp file, fsync, rename, fsync the folder."""
        self.root.mkdir(parents=True, exist_ok=True)
        first = entry.slots[0] if isinstance(entry, SpooledMissed) else entry.slot
        kind = "missed" if isinstance(entry, SpooledMissed) else "poll"
        path = self.root / _name(first, entry.source, kind)
        temp = self.root / f".tmp-{path.name}"
        with open(temp, "w", encoding="utf-8") as out:
            out.write(exactjson.dumps(_encode(entry)))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
        _fsync_dir(self.root)
        return path

    def pending(self) -> list[Path]:
        """Entries, oldest slot first."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("*.json") if not p.name.startswith("."))

    def read(self, path: Path) -> Entry:
        """Raises FileNotFoundError if another process took it, SpoolError if it is unreadable."""
        text = path.read_text(encoding="utf-8")
        try:
            return _decode(exactjson.loads(text))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise SpoolError(f"spool file {path}: unreadable ({type(err).__name__}: {err})") from None

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)  # a replica on the same spool may have removed it first
        _fsync_dir(self.root)

    def reject(self, path: Path) -> Path:
        """Move an entry that cannot be loaded aside, for a person to look at; never delete it."""
        self.rejected.mkdir(parents=True, exist_ok=True)
        target = self.rejected / path.name
        os.replace(path, target)
        _fsync_dir(self.root)
        return target

    def recover(self) -> int:
        """Remove temp files of writes a crash interrupted (never renamed: not entries)."""
        if not self.root.is_dir():
            return 0
        leftovers = list(self.root.glob(".tmp-*"))
        for temp in leftovers:
            temp.unlink(missing_ok=True)
        return len(leftovers)

    def depth(self) -> int:
        return len(self.pending())

    def depth_by_source(self) -> Counter[str]:
        return Counter(p.name.split(_SEP)[1] for p in self.pending() if p.name.count(_SEP) == 3)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
