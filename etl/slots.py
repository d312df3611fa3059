"""Slot arithmetic: a snapshot's timestamp is its scheduled slot, UTC, floored to the interval."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def floor_to_slot(moment: datetime, interval: timedelta) -> datetime:
    """The slot `moment` falls in: slots are aligned to multiples of `interval` since the epoch."""
    if moment.tzinfo is None:
        raise ValueError("slot times must be timezone-aware")
    step = int(interval / timedelta(microseconds=1))
    since = int((moment - EPOCH) / timedelta(microseconds=1))
    return EPOCH + timedelta(microseconds=since - since % step)


def next_slot(moment: datetime, interval: timedelta) -> datetime:
    return floor_to_slot(moment, interval) + interval


def parse_slot(text: str) -> datetime:
    """ISO 8601 (`2026-01-01T00:00:00Z`); a time without zone is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise ValueError(f"expected an ISO 8601 time like 2026-01-01T00:00:00Z, got {text!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def refuse_future(slot: datetime, now: datetime, interval: timedelta) -> None:
    """A slot more than one interval ahead of now is a typo, not a schedule: loaded, it
    would stand as the latest balances and push the rollup watermarks years ahead."""
    if slot - now > interval:
        raise ValueError(
            f"{slot:%Y-%m-%dT%H:%M:%SZ} is more than one interval ({interval.total_seconds():g}s) "
            f"ahead of now ({now:%Y-%m-%dT%H:%M:%SZ})"
        )
