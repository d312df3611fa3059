"""Errors as values a user can act on.

Every error carries one line that names where it happened (source, key path, field)
and whether trying again may help (`transient`): the retry policy reads that flag, the
pipeline records the message in `ingestion_runs`, the CLI prints it. Messages never
contain secrets: they are built from names and venue replies, not from credentials.
"""

from __future__ import annotations


class EtlError(Exception):
    """Base: `str(err)` is the one line shown to users."""

    transient = False


class ConfigError(EtlError):
    """The config file or the environment is wrong; raised at start-up."""


class VenueError(EtlError):
    """A venue call failed: HTTP status, envelope error code, bad body, timeout."""

    def __init__(self, message: str, *, transient: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.transient = transient
        self.retry_after = retry_after


class NormalizeError(EtlError):
    """A venue payload does not have the shape or the numbers we expect."""


class StoreError(EtlError):
    """The database refused or could not be reached."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient
