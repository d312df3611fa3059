"""Errors as values a user can act on.

Every error carries one line that names where it happened (source, key path, field)
and whether trying again may help (`transient`): the retry policy reads that flag, the
pipeline records the message in `ingestion_runs`, the CLI prints it. Messages never
contain secrets: they are built from names and venue replies, not from credentials.
"""

from __future__ import annotations

from enum import StrEnum


class Fault(StrEnum):
    SOURCE_DATA = "source_data"
    VENUE_TRANSIENT = "venue_transient"
    VENUE_TERMINAL = "venue_terminal"
    DATABASE_DOWN = "database_down"
    BUG = "bug"

    @property
    def retry(self) -> bool:
        """Whether trying the same thing again may succeed (within the slot, or later)."""
        return self in (Fault.VENUE_TRANSIENT, Fault.DATABASE_DOWN)


class EtlError(Exception):
    """Base: `str(err)` is the one line shown to users; `fault` its class (`etl.faults`),
    or None where `etl.faults.classify` decides from `transient`."""

    transient = False
    fault: Fault | None = None


class ConfigError(EtlError):
    """The config file or the environment is wrong; raised at start-up."""


class VenueError(EtlError):
    """A venue call failed: HTTP status, envelope error code, bad body, timeout."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool = False,
        retry_after: float | None = None,
        fault: Fault | None = None,
        retries: int = 0,
    ):
        super().__init__(message)
        self.transient = transient
        self.retry_after = retry_after
        self.fault = fault  # None: VENUE_TRANSIENT or VENUE_TERMINAL by `transient`
        # A terminal error the venue is known to send spuriously: retried this many times
        # (a fresh request each time), then terminal as classified.
        self.retries = retries


class NormalizeError(EtlError):
    """A venue payload does not have the shape or the numbers we expect."""

    fault = Fault.SOURCE_DATA


class StoreError(EtlError):
    """The database refused or could not be reached; `fault` says which, when known."""

    def __init__(self, message: str, *, transient: bool = False, fault: Fault | None = None):
        super().__init__(message)
        self.transient = transient or fault is Fault.DATABASE_DOWN
        self.fault = fault
