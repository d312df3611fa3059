"""The one HTTP seam every venue goes through: bounds, retries, rate limit, error wording.

A venue hands `VenueClient.send` a *request factory* (called again on each attempt, so
signatures carry a fresh timestamp and nonce) and an envelope check. This module bounds
every exchange and classifies every failure once (`etl.faults`):

- Bounds. One request takes at most `timeout` in all: connect, headers and the whole
  body (httpx's own timeout is per read, which a venue dripping a byte a second never
  trips). A body is read in chunks and refused past `max_body` bytes. Retries and
  `Retry-After` waits end by the poll's `deadline`.
- Transient (retried with exponential backoff and jitter): timeouts, connection errors,
  5xx and 429. A 429's `Retry-After` is honoured when the wait ends before the deadline;
  otherwise (`3600`, `inf`) the request fails at once, still a transient fault.
- Terminal (one try, or as many as the venue's check allows: `VenueError.retries`, e.g.
  HTX's spurious 403 once): 4xx, an error envelope, a 3xx (redirects are not followed: only
  the venue's success status, 200, is success), a request httpx refuses to send (a
  header value with a newline, an unsupported URL).
- The source's data (one try): a body over the cap, not JSON, or JSON that `exactjson`
  refuses (a duplicate key, NaN, NUL, ...). What we got is kept for the record as a
  `rejected_body`, never as if it were the venue's JSON.

Messages are built from safe parts only (venue, method, endpoint path, status, exception
type, the OS's text for an errno), never from `str()` of an httpx error, which can quote
a header and so a credential. The source's secrets are replaced by `***` in every body
before anything reads it. What sends is handed in (`Sender`): the transport of the source's
venue host (`HostPools`), called directly, or a test's `httpx.AsyncClient` (an ASGI
simulator, a mock). httpx's client layer adds nothing our requests use (no redirect is
followed, there is no auth flow) and cost 16 % of a request's CPU, most of it copying each
response's cookies into a jar, which a pool shared by many sources must not have anyway:
one key's session cookie would go out with the next key's request.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import json
import math
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import httpx
import tenacity
import yarl
from aiolimiter import AsyncLimiter
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream, map_aiohttp_exceptions
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
from etl.errors import EtlError, Fault, VenueError
from etl.records import RawResponse

RequestFactory = Callable[[], httpx.Request]
EnvelopeCheck = Callable[[int, Any], None]
# What a request goes through: a transport (the daemon's and the one-shot commands' pools,
# called directly), or a client (a test's ASGI or mock routing, through httpx's client layer).
Sender = httpx.AsyncBaseTransport | httpx.AsyncClient

HOST_CONNECTIONS = 32  # per venue host, for a one-shot command: see HostPools
DAEMON_HOST_CONNECTIONS = 256  # per venue host, for the daemon: all its sources start at the slot
SUCCESS = 200  # every venue we poll answers its data with 200 (shared/venues/*.md)
DEFAULT_MAX_BODY = 16 * 2**20  # real balance answers are kilobytes; see [schedule] max_body
REJECTED = "etl_rejected_body"  # the key that marks a raw payload as ours, not the venue's
# httpx refuses these before a byte is sent: the same request would fail the same way again.
_MALFORMED = (httpx.LocalProtocolError, httpx.UnsupportedProtocol, httpx.InvalidURL)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def snippet(body: bytes, limit: int = 120) -> str:
    """A short, single-line, tag-free excerpt of a body for error messages."""
    text = _CONTROL.sub(" ", body[: limit * 8].decode("utf-8", "replace"))
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


def rejected_body(reason: str, content: bytes | None) -> dict[str, Any]:
    """What `raw_payloads` keeps of a body we refused: `{"etl_rejected_body": {"reason": ...,
    "text": ...}}`. `text` is the body as a JSON string jsonb accepts (bytes that are not
    UTF-8 as `\\xNN`, a NUL character as `\\x00`), or null when it was not kept (`reason` says why)."""
    text = None
    if content is not None:
        text = content.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
    return {REJECTED: {"reason": reason, "text": text}}


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """A 429's `Retry-After` in seconds (inf when absurd), or None: back off as usual."""
    try:
        seconds = float(headers.get("Retry-After", ""))
    except ValueError:
        return None  # absent, or an HTTP date: the backoff applies
    return None if math.isnan(seconds) else max(0.0, seconds)


SECRET_MIN_SCRUBBED = 6  # characters; shorter is no real credential, and replacing it would garble bodies


def secret_forms(secrets: Sequence[str]) -> tuple[bytes, ...]:
    """Each secret as a body might spell it: raw, or JSON-escaped (also with `\\/`). A
    value shorter than SECRET_MIN_SCRUBBED (a test's "k") is left alone: replacing every
    "k" of a body would change the venue's answer, not hide a credential."""
    forms: set[bytes] = set()
    for secret in secrets:
        if len(secret) >= SECRET_MIN_SCRUBBED:
            escaped = json.dumps(secret)[1:-1]
            for form in (secret, escaped, json.dumps(secret, ensure_ascii=False)[1:-1]):
                forms.update({form.encode(), form.replace("/", "\\/").encode()})
    return tuple(sorted(forms, key=len, reverse=True))  # longest first: no half-replaced secret


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


def _cause(err: BaseException, name: str | None = None) -> str:
    """`ConnectError (Connection refused)`: the type (or `name`), and the OS's own text for
    the errno underneath (never the exception's message, which may quote the request)."""
    name = name or type(err).__name__
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, socket.gaierror) and seen.strerror:
            return f"{name} ({seen.strerror})"  # the resolver's fixed table
        if isinstance(seen, OSError) and seen.errno and seen.errno > 0:
            return f"{name} ({os.strerror(seen.errno)})"
        seen = seen.__cause__ or seen.__context__
    return name


def _unlink(retrying: AsyncRetrying) -> None:
    """Break the reference cycles a finished tenacity loop leaves: its state keeps the last
    step's actions (bound methods of `retrying`) and a RetryCallState that points back at
    it. Left alone, ~40 objects a request that only a full collection frees: with 10,000
    polls in flight they outlived the young collections and piled up (measured with
    DEBUG_SAVEALL over bench/poll.py --sources 2000: 38,000-128,000 unreachable objects a
    slot, all tenacity's; now none). tenacity's call form (`await retrying(fn)`) keeps the
    RetryCallState local but cost twice the CPU of this loop (110 against 50 µs a
    request). `_retry_state` is tenacity's own attribute: popped only if it is there, and
    tests/venues/test_http.py finds the garbage again if a new release moves it."""
    retrying.iter_state.reset()
    state = vars(retrying).pop("_retry_state", None)
    if state is not None:
        state.outcome = None  # a failed attempt's exception, whose traceback holds this frame


_TENACITY = os.path.dirname(tenacity.__file__) + os.sep  # not a sibling such as tenacity_x/


def _unlink_frames(err: BaseException) -> None:
    """Break the cycles of a request that failed: tenacity keeps the exception in a Future,
    re-raises it from there, and its finished frames on the traceback hold that Future.
    Left alone, every poll cut at the deadline (a CancelledError in aiohttp's frames) or
    failed for good left ~130 objects, its socket among them, for a full collection: a
    daemon that overran its slots grew. Only tenacity's frames are cleared: they have all
    returned, and the traceback keeps its lines for the log."""
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith(_TENACITY):
            tb.tb_frame.clear()
        tb = tb.tb_next


def _aiohttp_connection_error(err: BaseException) -> bool:
    """A connection refused, reset or closed under httpx-aiohttp, which maps every aiohttp
    connection error to httpx's ConnectTimeout: only aiohttp's own timeouts are timeouts."""
    cause = err.__cause__
    return isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(
        cause, aiohttp.ServerTimeoutError
    )


class VenueClient:
    """HTTP access for one source during one poll (or for the daemon's lifetime)."""

    def __init__(
        self,
        client: Sender,
        venue: str,
        base_url: str,
        *,
        timeout: float = 10.0,
        limiter: AsyncLimiter | None = None,
        max_attempts: int = 5,
        deadline: float | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        secrets: Sequence[str] = (),
        backoff_initial: float = 0.25,
        backoff_max: float = 8.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.client = client
        self.venue = venue
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout  # seconds for one whole request, body included
        self.limiter = limiter
        self.max_attempts = max_attempts
        self.deadline = deadline  # time.monotonic() by which retries must have ended
        self.max_body = max_body
        self._secret_forms = secret_forms(secrets)
        self.backoff = wait_exponential_jitter(
            multiplier=backoff_initial, max=backoff_max, jitter=backoff_initial
        )
        # the retry strategies, the same for every request (built once: 15 % of tenacity's cost)
        self._retry, self._wait = _retry_policy(), _wait_retry_after(self.backoff)
        self._stop: stop_base = stop_after_attempt(max_attempts)
        self.clock = clock
        self.attempts = 0  # the most attempts any one request of this poll needed
        # every good response, and a rejected_body for a refused one: kept even if a later call fails
        self.received: list[RawResponse] = []

    def url(self, path: str) -> str:
        return self.base_url + path

    async def send(self, endpoint: str, build: RequestFactory, check: EnvelopeCheck) -> RawResponse:
        """Send with retries; returns the parsed body or raises a one-line VenueError."""
        stop = self._stop
        if self.deadline is not None:
            stop = stop | stop_before_delay(max(0.0, self.deadline - time.monotonic()))
        retrying = AsyncRetrying(retry=self._retry, wait=self._wait, stop=stop, reraise=True)
        attempt_no = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempt_no += 1
                    self.attempts = max(self.attempts, attempt_no)
                    return await self._send_once(endpoint, build, check)
        except BaseException as err:
            _unlink_frames(err)
            raise
        finally:
            _unlink(retrying)
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    async def _send_once(self, endpoint: str, build: RequestFactory, check: EnvelopeCheck) -> RawResponse:
        if self.limiter is not None:
            await self.limiter.acquire()
        request = self._request(endpoint, build)
        where = f"{self.venue} {request.method} {endpoint}"
        response, content = await self._exchange(where, request)
        fetched_at, status = self.clock(), response.status_code
        if content is None:
            reason = f"body over the {_size(self.max_body)} cap (max_body), not read further"
            self._reject(endpoint, status, fetched_at, reason, None)
            raise VenueError(f"{where}: HTTP {status}, {reason}", fault=Fault.SOURCE_DATA)
        content = self._scrubbed(content)
        self._check_status(where, response, content)
        body = self._parse(where, endpoint, status, fetched_at, content)
        try:
            check(status, body)
        except VenueError as err:
            raise VenueError(
                f"{where}: {err}",
                transient=err.transient,
                retry_after=err.retry_after,
                retries=err.retries,
                fault=err.fault,
            ) from None
        if status != SUCCESS:
            raise VenueError(f"{where}: HTTP {status}: {snippet(content)}")
        raw = RawResponse(
            endpoint=endpoint, http_status=status, body=body, fetched_at=fetched_at, text=json_text(content)
        )
        self.received.append(raw)
        return raw

    def _request(self, endpoint: str, build: RequestFactory) -> httpx.Request:
        try:
            request = build()
        except (httpx.InvalidURL, UnicodeEncodeError) as err:  # e.g. a non-ASCII header value
            raise VenueError(
                f"{self.venue} {endpoint}: request cannot be built ({type(err).__name__})"
            ) from None
        request.extensions["timeout"] = httpx.Timeout(self.timeout).as_dict()
        return request

    async def _exchange(self, where: str, request: httpx.Request) -> tuple[httpx.Response, bytes | None]:
        """The response and its body (None: over the cap), all within `timeout`."""
        try:
            async with asyncio.timeout(self.timeout):
                if isinstance(self.client, httpx.AsyncClient):
                    response = await self.client.send(request, stream=True)
                else:
                    response = await self.client.handle_async_request(request)
                try:
                    return response, await self._read(response)
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException) as err:
            if _aiohttp_connection_error(err):  # httpx-aiohttp names a refused connection ConnectTimeout
                raise VenueError(
                    f"{where}: connection failed: {_cause(err, 'ConnectError')}", transient=True
                ) from None
            raise VenueError(f"{where}: timed out after {self.timeout:g}s", transient=True) from None
        except (
            *_MALFORMED,
            ValueError,
        ) as err:  # ValueError: aiohttp refusing a control character in a header
            raise VenueError(f"{where}: request refused before sending ({type(err).__name__})") from None
        except (
            httpx.TransportError,
            aiohttp.ClientError,
        ) as err:  # aiohttp's: what httpx-aiohttp leaves unmapped
            raise VenueError(f"{where}: connection failed: {_cause(err)}", transient=True) from None

    async def _read(self, response: httpx.Response) -> bytes | None:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            return None
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > self.max_body:
                return None
        return bytes(body)

    def _scrubbed(self, content: bytes) -> bytes:
        """The body with the source's secrets replaced, once, before anything reads or keeps it."""
        for form in self._secret_forms:
            if form in content:
                content = content.replace(form, b"***")
        return content

    def _check_status(self, where: str, response: httpx.Response, content: bytes) -> None:
        """Statuses decided before the body is parsed: 429, 5xx, 3xx, any other non-error."""
        status = response.status_code
        if status == 429:
            wait = retry_after_seconds(response.headers)
            if wait is not None and not self._fits(wait):
                # still the venue's transient fault, but no retry: the wait would pass the deadline
                raise VenueError(
                    f"{where}: HTTP 429 rate limited, Retry-After {wait:g}s ends past the deadline",
                    fault=Fault.VENUE_TRANSIENT,
                )
            raise VenueError(f"{where}: HTTP 429 rate limited", transient=True, retry_after=wait)
        if status >= 500:
            raise VenueError(f"{where}: HTTP {status}: {snippet(content)}", transient=True)
        if 300 <= status < 400:
            location = _location(response)
            raise VenueError(f"{where}: HTTP {status} redirect to {location} not followed")
        if status < 400 and status != SUCCESS:
            raise VenueError(f"{where}: HTTP {status}, not the venue's success status {SUCCESS}")

    def _fits(self, wait: float) -> bool:
        if self.deadline is None:
            return math.isfinite(wait)
        return time.monotonic() + wait < self.deadline

    def _parse(self, where: str, endpoint: str, status: int, fetched_at: datetime, content: bytes) -> Any:
        try:
            return exactjson.loads(content)
        except exactjson.JsonError as err:
            if status >= 400:  # an error page that is not JSON: the status says what happened
                raise VenueError(f"{where}: HTTP {status}: {snippet(content)}") from None
            self._reject(endpoint, status, fetched_at, str(err), content)
            problem = f"body {err}: {snippet(content)}" if err.path is None else f"malformed body at {err}"
            raise VenueError(f"{where}: HTTP {status}, {problem}", fault=Fault.SOURCE_DATA) from None

    def _reject(
        self, endpoint: str, status: int, fetched_at: datetime, reason: str, content: bytes | None
    ) -> None:
        body = rejected_body(reason, content)
        self.received.append(
            RawResponse(endpoint=endpoint, http_status=status, body=body, fetched_at=fetched_at)
        )


class ExactUrlTransport(AiohttpTransport):
    """httpx-aiohttp's transport, sending the URL's bytes exactly as httpx encoded them.

    httpx-aiohttp hands aiohttp `str(request.url)`, which yarl re-quotes on the way out
    (`Timestamp=…15%3A19%3A30` goes out as `…15:19:30`): the query on the wire would no
    longer be the one signed, and a venue that checks the signature over the query as it
    arrives (Binance-style, as Bittap's docs describe) would refuse it. ccxt's aiohttp
    client passes `yarl.URL(url, encoded=True)` for the same reason; so does this one.
    Only what our requests use is passed on (a method, a URL, headers, a small body).

    The session keeps no cookies: its pool is shared by the sources of a venue host, and
    one key's session cookie must not go out with the next key's request."""

    def get_client(self) -> aiohttp.ClientSession:
        """httpx-aiohttp's session for our use (TCP, the limits and TLS context given), without a cookie jar."""
        connector = aiohttp.TCPConnector(
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
            limit=self.limits.max_connections or 0,  # 0: aiohttp's "no limit", as httpx's None
        )
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        timeout = request.extensions.get("timeout", {})
        with map_aiohttp_exceptions():
            response = await self.client.request(
                method=request.method,
                url=yarl.URL(str(request.url), encoded=True),
                headers=request.headers,
                data=request.content or None,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=aiohttp.ClientTimeout(
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                    connect=timeout.get("pool"),
                ),
            ).__aenter__()
        extensions = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=AiohttpResponseStream(response),
            request=request,
            extensions=extensions,
        )


class HostPools:
    """The HTTP pools of every command that polls many sources (`etl daemon`, `etl run
    --once`, `etl check`): one pool per venue host of at most `connections` connections,
    and a gate that lets as many of that host's sources poll at a time, so that no request
    waits in a pool's queue, where its timeout would run. A pool per source (the daemon's
    until issue 17) cost a connection and a TLS handshake per source and slot, unless the
    venue kept thousands of idle connections open, and 10,000 aiohttp sessions; the sources
    of a host share a few warm connections instead. The pools are aiohttp's behind httpx's
    transport API (`ExactUrlTransport`): httpcore matches its whole queue against every
    connection on each request and response (quadratic), and 10,000 sources on one of its
    pools spent the command's deadline there and sent no request at all. `keepalive`: how
    long an idle connection is kept (the daemon's outlives the time between slots). A
    `client` handed in (a test's ASGI routing) serves every host; the gates still apply.
    """

    def __init__(
        self,
        connections: int = HOST_CONNECTIONS,
        client: httpx.AsyncClient | None = None,
        *,
        keepalive: float = 5.0,
    ):
        self.connections = connections
        self.keepalive = keepalive
        self._shared = client
        self._transports: dict[tuple[str, str, int | None], ExactUrlTransport] = {}
        self._gates: dict[tuple[str, str, int | None], asyncio.Semaphore] = {}
        self._tls = httpx.create_ssl_context() if client is None else None  # the CA bundle loaded once

    def sender(self, base_url: str) -> Sender:
        """What sends the requests of a source at `base_url`."""
        if self._shared is not None:
            return self._shared
        host = _host(base_url)
        if host not in self._transports:
            limits = httpx.Limits(
                max_connections=self.connections,
                max_keepalive_connections=self.connections,
                keepalive_expiry=self.keepalive,
            )
            self._transports[host] = ExactUrlTransport(limits=limits, verify=self._tls or True)
        return self._transports[host]

    def gate(self, base_url: str) -> asyncio.Semaphore:
        """Held by a source for its whole poll: a venue host has `connections` sources in flight."""
        return self._gates.setdefault(_host(base_url), asyncio.Semaphore(self.connections))

    @contextlib.asynccontextmanager
    async def admitted(self, base_url: str, deadline: float | None) -> AsyncIterator[None]:
        """The host's gate, held for a source's whole poll. A source still waiting at
        `deadline` (time.monotonic()) goes on without it: its poll then fails at once, with
        the deadline's error, instead of waiting for polls of a later deadline."""
        gate = self.gate(base_url)
        try:
            async with asyncio.timeout_at(deadline):
                await gate.acquire()
        except TimeoutError:
            yield
            return
        try:
            yield
        finally:
            gate.release()

    async def __aenter__(self) -> HostPools:
        return self

    async def __aexit__(self, *exc: object) -> None:
        transports, self._transports = list(self._transports.values()), {}
        for transport in transports:
            await transport.aclose()


# parsed on each poll, a source's base_url cost 7 % of the daemon's CPU
@functools.lru_cache(maxsize=4096)
def _host(base_url: str) -> tuple[str, str, int | None]:
    url = httpx.URL(base_url)
    return url.scheme, url.host, url.port


def _location(response: httpx.Response) -> str:
    """Where a redirect points, without its query (which could echo a signed request's key)."""
    target = response.headers.get("Location")
    if not target:
        return "(no Location)"
    try:
        url = response.url.join(target)
    except httpx.InvalidURL:
        return "(an invalid Location)"
    return _CONTROL.sub(
        "", f"{url.scheme}://{url.netloc.decode('ascii', 'replace').rpartition('@')[2]}{url.path}"
    )


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n / 2**10:g} KiB"
