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

The text is ASCII (every other character escaped), so any body spools, a lone surrogate
included. A failed write removes its temp file. Several processes may share the folder
(`etl daemon --processes N`, or replicas on one machine): a temp file names its writer's
pid, and a process starting up removes only those whose writer is gone. The daemon
reads the folder in bounded steps (`Spool.oldest(n)`) and keeps its depth as a count
(`Spool.depth`).
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from etl import exactjson
from etl.config import SourceConfig
from etl.errors import EtlError, Fault
from etl.faults import classify
from etl.pipeline import Polled
from etl.records import Batch, RawResponse
from etl.slots import parse_slot
from etl.venues import venue

log = logging.getLogger(__name__)
FORMAT = 1
_SEP = "@"  # not allowed in source names, so a file name splits unambiguously
RESCAN = 60.0  # seconds: how old the counted depth may get before the folder is counted again
STALE_TEMP = 600.0  # seconds: a temp file this old is an interrupted write, whatever its name says


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
    fault: Fault | None = None  # of the error


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


def source_of(name: str) -> str | None:
    """The source an entry's file name is for (None: not an entry's name)."""
    parts = name.split(_SEP)
    return parts[1] if len(parts) == 4 else None


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
        "fault": entry.fault,
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
        fault=Fault(data["fault"]) if data.get("fault") else None,  # absent from older files
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
        fault=polled.fault,
    )


def replayed(entry: SpooledPoll, source: SourceConfig) -> Polled:
    """The poll again, from its responses: normalized now, exactly as when it was polled."""
    batch: Batch | None = None
    error, fault = entry.error, entry.fault
    if error is None:
        try:
            batch = venue(entry.venue).normalize(source.name, entry.responses)
        except EtlError as err:
            error, fault = f"{source.name}: {err}", classify(err)
        except Exception as err:  # a normalizer bug: recorded for the slot, like a live poll's
            log.exception("source %s: unexpected error re-normalizing a spooled slot", source.name)
            error, fault = f"{source.name}: internal error {type(err).__name__}: {err}", Fault.BUG
    return Polled(
        source=source,
        slot=entry.slot,
        started_at=entry.started_at,
        responses=entry.responses,
        batch=batch,
        error=error,
        attempts=entry.attempts,
        fault=fault,
    )


class Spool:
    """The folder of entries. Its depth is counted once and then kept up to date by this
    object's own writes and removals, recounted at most every RESCAN seconds (another
    process or a person may add or take files): the daemon never lists the whole folder
    to learn how deep it is, and takes entries `oldest(n)` at a time."""

    def __init__(self, root: Path):
        self.root = root
        self.rejected = root / "rejected"
        self._depth: int | None = None
        self._counted_at = 0.0
        self._changes = 0  # this object's writes and removals: one during a count makes it stale
        self._unreadable: OSError | None = None

    def put(self, entry: Entry) -> Path:
        """Write durably: temp file, fsync, rename, fsync the folder. A write that fails
        (a full or read-only disk) removes its temp file and raises."""
        text = exactjson.dumps(_encode(entry), ascii=True)  # encodes whatever the strings hold
        self.root.mkdir(parents=True, exist_ok=True)
        first = entry.slots[0] if isinstance(entry, SpooledMissed) else entry.slot
        kind = "missed" if isinstance(entry, SpooledMissed) else "poll"
        path = self.root / _name(first, entry.source, kind)
        temp = self.root / f".tmp-{os.getpid()}-{path.name}"  # see recover()
        try:
            with open(temp, "x", encoding="ascii") as out:
                self._write(out, text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
        except BaseException:
            # a partial temp file left behind would keep a full disk full
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            raise
        self._changes += 1
        if self._depth is not None:
            self._depth += 1
        _fsync_dir(self.root)
        return path

    def _write(self, out: TextIO, text: str) -> None:
        out.write(text)

    def oldest(self, n: int, skip: Callable[[str], bool] | None = None) -> list[Path]:
        """The entries of the `n` oldest slots (but those whose name `skip` says to), oldest
        first: one pass over the folder with `n` names in memory, recounting the depth."""
        counted, since = 0, self._changes

        def names() -> Iterator[str]:
            nonlocal counted
            for name in self._names():
                counted += 1
                if skip is None or not skip(name):
                    yield name

        first = heapq.nsmallest(n, names())
        self._recounted(counted, since)
        return [self.root / name for name in first]

    def _names(self) -> Iterator[str]:
        """Entry names, unordered; a directory named `*.json` too (it gets rejected)."""
        try:
            with os.scandir(self.root) as found:
                for item in found:
                    if item.name.endswith(".json") and not item.name.startswith("."):
                        yield item.name
        except FileNotFoundError:
            return
        except OSError as err:  # no entry can be seen; said once, not on every tick
            if self._unreadable is None:
                log.error("spool %s cannot be read (%s): no entry is drained", self.root, err.strerror or err)
            self._unreadable = err
            return
        self._unreadable = None

    def read(self, path: Path) -> Entry:
        """Raises FileNotFoundError if another process took it, SpoolError if it is unreadable."""
        try:
            return _decode(exactjson.loads_own(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            # ValueError includes bytes that are not UTF-8; OSError a directory named *.json
            raise SpoolError(f"spool file {path}: unreadable ({type(err).__name__}: {err})") from None

    def remove(self, path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:  # a replica on the same spool removed it first
            return
        self._took_one()
        _fsync_dir(self.root)

    def reject(self, path: Path) -> Path:
        """Move an entry that cannot be loaded aside, for a person to look at; never delete it."""
        self.rejected.mkdir(parents=True, exist_ok=True)
        target = self.rejected / path.name
        os.replace(path, target)
        self._took_one()
        _fsync_dir(self.root)
        return target

    def recover(self) -> int:
        """Remove temp files of writes a crash interrupted (never renamed: not entries),
        but not those of another live process on this spool, which may be writing them now.
        A spool it cannot clean (a read-only disk) is logged in one line, never fatal."""
        removed, failed = 0, []
        for temp in self.root.glob(".tmp-*"):
            try:
                if _being_written(temp):
                    continue
                temp.unlink()
                removed += 1
            except FileNotFoundError:
                continue
            except OSError as err:
                failed.append(err)
        if failed:
            log.warning(
                "spool %s: %d temp file(s) of interrupted writes left in place (%s)",
                self.root,
                len(failed),
                failed[0].strerror or failed[0],
            )
        return removed

    def depth(self) -> int:
        if self._depth is None or time.monotonic() - self._counted_at > RESCAN:
            since = self._changes
            self._recounted(sum(1 for _ in self._names()), since)
        assert self._depth is not None
        return self._depth

    def depth_by_source(self) -> Counter[str]:
        return Counter(source for source in map(source_of, self._names()) if source is not None)

    def _recounted(self, depth: int, since: int) -> None:
        """A count of the folder. A write or removal of this object during it (`put` runs
        in a worker thread) may be missing from it, and its own +1 overwritten: such a
        count is kept only until the next look, which counts again: else an entry
        spooled during a count would go uncounted, and undrained, for RESCAN seconds."""
        self._depth = depth
        self._counted_at = time.monotonic() if self._changes == since else 0.0

    def _took_one(self) -> None:
        self._changes += 1
        if self._depth is not None:
            self._depth = max(0, self._depth - 1)


def _being_written(temp: Path) -> bool:
    """A temp file `.tmp-<pid>-…` of another process that still runs, and recent: a pid
    reused by an unrelated process leaves a file at most STALE_TEMP seconds."""
    pid = temp.name.removeprefix(".tmp-").partition("-")[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False  # a name of before the pid was in it, or this process's own crash
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        pass  # alive, another user's
    return time.time() - temp.stat().st_mtime < STALE_TEMP


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
