"""The one HTTP seam every venue goes through: timeouts, retries, rate limit, error wording.

A venue hands `VenueClient.send` a *request factory* (called again on each attempt, so
signatures carry a fresh timestamp and nonce) and an envelope check. This module
classifies failures: timeouts, connection errors, 5xx and 429 are transient and
retried with exponential backoff and jitter (a 429's `Retry-After` is honoured), all
within the slot's deadline; anything else (auth, validation, bad body) is terminal,
retried only as often as the venue's check says (`VenueError.retries`, e.g. HTX's
spurious 403 once).
The httpx client is shared (connection pooling); tests pass one built on
`httpx.ASGITransport(simulator)`.
"""

from __future__ import annotations

import codecs
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)
from tenacity.retry import retry_base
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from etl import exactjson
from etl.errors import EtlError, VenueError
from etl.records import RawResponse

RequestFactory = Callable[[], httpx.Request]
EnvelopeCheck = Callable[[int, Any], None]


def snippet(body: bytes, limit: int = 120) -> str:
    """A short, single-line, tag-free excerpt of a body for error messages."""
    text = body.decode("utf-8", "replace")
    text = re.sub(r"<[^>]*>", " ", text)
    text = " ".join(text.split())
    return text[:limit] + ("…" if len(text) > limit else "") if text else "(empty body)"


def json_text(body: bytes) -> str | None:
    """A JSON body as text PostgreSQL's jsonb takes as is (UTF-8, no byte-order mark), or
    None: the loader then writes the parsed body, re-encoded."""
    if body.startswith(codecs.BOM_UTF8):
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class _wait_retry_after(wait_base):
    """Back off exponentially with jitter, or exactly as long as the venue asked (429)."""

    def __init__(self, backoff: wait_base):
        self.backoff = backoff

    def __call__(self, retry_state: Any) -> float:
        outcome = retry_state.outcome
        err = outcome.exception() if outcome is not None else None
        if isinstance(err, VenueError) and err.retry_after is not None:
            return err.retry_after
        return float(self.backoff(retry_state))


class _retry_policy(retry_base):
    """Retry a transient error; a terminal one only as often as its `retries` allows."""

    def __call__(self, retry_state: Any) -> bool:
        outcome = retry_state.outcome
        err = outcome.exception() if outcome is not None else None
        if not isinstance(err, EtlError):
            return False
        if err.transient:
            return True
        return isinstance(err, VenueError) and retry_state.attempt_number <= err.retries


class VenueClient:
    """HTTP access for one source during one poll (or for the daemon's lifetime)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        venue: str,
        base_url: str,
        *,
        timeout: float = 10.0,
        limiter: AsyncLimiter | None = None,
        max_attempts: int = 5,
        deadline: float | None = None,
        backoff_initial: float = 0.25,
        backoff_max: float = 8.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.client = client
        self.venue = venue
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.limiter = limiter
        self.max_attempts = max_attempts
        self.deadline = deadline  # time.monotonic() by which retries must have ended
        self.backoff = wait_exponential_jitter(
            multiplier=backoff_initial, max=backoff_max, jitter=backoff_initial
        )
        self.clock = clock
        self.attempts = 0  # the most attempts any one request of this poll needed
        self.received: list[RawResponse] = []  # every good response, kept even if a later call fails

    def url(self, path: str) -> str:
        return self.base_url + path

    async def send(self, endpoint: str, build: RequestFactory, check: EnvelopeCheck) -> RawResponse:
        """Send with retries; returns the parsed body or raises a one-line VenueError."""
        stop: stop_base = stop_after_attempt(self.max_attempts)
        if self.deadline is not None:
            stop = stop | stop_before_delay(max(0.0, self.deadline - time.monotonic()))
        attempt_no = 0
        async for attempt in AsyncRetrying(
            retry=_retry_policy(),
            wait=_wait_retry_after(self.backoff),
            stop=stop,
            reraise=True,
        ):
            with attempt:
                attempt_no += 1
                self.attempts = max(self.attempts, attempt_no)
                return await self._send_once(endpoint, build, check)
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    async def _send_once(self, endpoint: str, build: RequestFactory, check: EnvelopeCheck) -> RawResponse:
        where = f"{self.venue} GET {endpoint}"
        if self.limiter is not None:
            await self.limiter.acquire()
        request = build()
        request.extensions["timeout"] = httpx.Timeout(self.timeout).as_dict()
        try:
            response = await self.client.send(request)
        except httpx.TimeoutException:
            raise VenueError(f"{where}: timed out after {self.timeout:g}s", transient=True) from None
        except httpx.TransportError as err:
            raise VenueError(
                f"{where}: connection failed: {type(err).__name__} {err}", transient=True
            ) from None
        fetched_at = self.clock()
        status = response.status_code
        if status == 429:
            raise VenueError(
                f"{where}: HTTP 429 rate limited",
                transient=True,
                retry_after=retry_after_seconds(response),
            )
        if status >= 500:
            raise VenueError(f"{where}: HTTP {status}: {snippet(response.content)}", transient=True)
        try:
            body = exactjson.loads(response.content)
        except ValueError:
            raise VenueError(
                f"{where}: HTTP {status}, body is not JSON: {snippet(response.content)}"
            ) from None
        try:
            check(status, body)
        except VenueError as err:
            raise VenueError(
                f"{where}: {err}", transient=err.transient, retry_after=err.retry_after, retries=err.retries
            ) from None
        if status >= 400:
            raise VenueError(f"{where}: HTTP {status}: {snippet(response.content)}")
        raw = RawResponse(
            endpoint=endpoint,
            http_status=status,
            body=body,
            fetched_at=fetched_at,
            text=json_text(response.content),
        )
        self.received.append(raw)
        return raw
