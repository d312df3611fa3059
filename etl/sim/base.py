"""What every simulator shares: fault injection, latency, request counting, control routes.

A venue simulator subclasses `Simulator`, lists its routes in `venue_routes()`, and
raises nothing on bad input: it answers the way the venue documents. Control routes
under `/_sim/` let a test in another process queue faults and read request counts:

    POST /_sim/faults   [{"status": 502, "body": "<html>…", "times": 3}, …]
    GET  /_sim/stats    {"requests": {"/ftapi/v1/account/info": 12}, "rejected": 0, "rate_limited": 0,
                         "served": [{"kind": "nan", "at": 1764626400.1, "credential": "…"}]}
    POST /_sim/reset

A fault either replaces the answer (`status`, `body`) or, with `real` set, serves the
venue's real answer changed by one of `MUTATIONS` (a NaN, a NUL, a duplicate key, …; ""
leaves it unchanged) or padded past 96 MiB (`HUGE`, streamed); `drip` sends the answer
one byte per `drip` seconds. A fault with a `kind` is listed in `served` when a request
gets it, so a test in another process can tell which (credential, time) received what.

`limit_rate(count, seconds)` enforces a venue's documented limit per API key (off by
default): a sliding window over the requests it accepted; one more answers HTTP 429 with
`Retry-After` (whole seconds, rounded up), counted in `rate_limited`. The key is the
credential the request carries (`credential`), so several keys on one simulator are
limited separately, as the venues do.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from etl import exactjson

Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class Fault:
    """One injected answer instead of the real one; `delay` longer than the client's timeout = a timeout.

    `repeat` sends the body that many times over, streamed (a huge answer that costs the
    simulator one copy); `drip` waits that long before each byte (a venue at a trickle,
    which no per-read timeout ever trips)."""

    status: int = 500
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    content_type: str = "text/html"
    real: str | None = None  # a MUTATIONS name or HUGE: serve the real answer so changed instead of `body`
    drip: float = 0.0  # seconds between bytes of the answer
    kind: str = ""  # listed in /_sim/stats "served" when a request gets this fault
    repeat: int = 1  # the body sent this many times over, streamed (a huge answer without its memory)


# a decimal as the venues send money: a string ("1.5"), or a bare number (1.5, Tread.fi)
_NUMBER = re.compile(rb'"-?\d+\.\d+"|(?<=:)-?\d+\.\d+')
_STRING = re.compile(rb'(": ?")([A-Za-z][^"\\]*")')  # a plain string value
HUGE = "huge"  # the `real` of a fault that pads the answer with HUGE_BYTES
HUGE_BYTES = 96 * 2**20  # above any response cap a client should have
_PAD = b"x" * 2**20


def _pick(pattern: re.Pattern[bytes], body: bytes, rng: random.Random) -> re.Match[bytes] | None:
    matches = list(pattern.finditer(body))
    return rng.choice(matches) if matches else None


def _replace(pattern: re.Pattern[bytes], new: Callable[[re.Match[bytes]], bytes]) -> Mutation:
    """One value of the body, chosen at random among the pattern's matches, replaced."""

    def mutate(body: bytes, rng: random.Random, credential: str) -> bytes:
        match = _pick(pattern, body, rng)
        return body if match is None else body[: match.start()] + new(match) + body[match.end() :]

    return mutate


def _around_first_member(body: bytes) -> tuple[bytes, bytes]:
    """(before, after): `before + member + after` has `member` ("key": value) first in the
    top-level object."""
    start = body.index(b"{") + 1
    return body[:start], (b"" if body[start:].lstrip().startswith(b"}") else b", ") + body[start:]


def _first_member(body: bytes, member: bytes) -> bytes:
    """`member` ("key": value) inserted first into the top-level object."""
    before, after = _around_first_member(body)
    return before + member + after


def _huge(body: bytes) -> list[bytes]:
    """The real answer with a first member `"pad": "xxx…"` of HUGE_BYTES, as the parts to
    stream: one MiB of padding sent over and over, never the whole answer in memory. Built
    whole, it took ~300 MB and 0.3 s of the simulator's thread a request here, more on a loaded
    machine: enough to trip a client's timeout, whose retry then got the real answer."""
    before, after = _around_first_member(body)
    return [before + b'"pad": "', *[_PAD] * (HUGE_BYTES // len(_PAD)), b'"' + after]


def _duplicate_key(body: bytes, rng: random.Random, credential: str) -> bytes:
    """The top-level object's last key sent twice, the first copy with other contents:
    a parser that keeps the last copy reads a plausible answer and hides the conflict."""
    keys = list(json.loads(body))
    if not keys:
        return body
    return _first_member(body, json.dumps(keys[-1]).encode() + b': {"decoy": "1000000"}')


Mutation = Callable[[bytes, random.Random, str], bytes]
MUTATIONS: dict[str, Mutation] = {
    "": lambda body, rng, credential: body,
    "nan": _replace(_NUMBER, lambda m: b"NaN"),
    "nul": _replace(_STRING, lambda m: m.group(1) + b"\\u0000" + m.group(2)),
    "wrong_type": _replace(_NUMBER, lambda m: b'{"value": ' + m.group(0) + b"}"),
    "duplicate_key": _duplicate_key,
    "echo_credential": lambda body, rng, credential: _first_member(
        body, b'"echo": ' + json.dumps(credential).encode()
    ),
}


async def _stream(parts: list[bytes], drip: float) -> AsyncIterator[bytes]:
    for part in parts:
        if not drip:
            yield part
            await asyncio.sleep(0)  # lets the server see a client that hung up, not write on to it
            continue
        for i in range(len(part)):
            yield part[i : i + 1]
            await asyncio.sleep(drip)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """JSON with exact Decimals (JSONResponse would go through float)."""
    return Response(exactjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


class Simulator:
    venue = "base"

    def __init__(self, seed: int = 0, latency: float = 0.0):
        self.rng = random.Random(seed)
        self.latency = latency
        self.faults: deque[Fault] = deque()
        self.requests: Counter[str] = Counter()
        self.rejected = 0  # requests refused for a bad key or signature
        self.rate_limit: tuple[int, float] | None = None  # (requests, seconds) per key
        self.rate_limited = 0  # requests answered 429 by the rate limit
        self.served: list[dict[str, Any]] = []  # faults with a kind, as requests got them
        self._admitted: dict[str, deque[float]] = {}

    def fail_next(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    def limit_rate(self, count: int, seconds: float) -> None:
        """Enforce `count` requests per `seconds` per API key, as the venue documents."""
        self.rate_limit = (count, seconds)

    def credential(self, request: Request) -> str:
        """The API key a request carries (header or query, as each venue sends it)."""
        for header in ("X-BT-APIKEY", "X-MBX-APIKEY", "Authorization"):
            if header in request.headers:
                return request.headers[header]
        return request.query_params.get("AccessKeyId", "")

    def _over_limit(self, request: Request) -> float | None:
        """Seconds until the key may send again if this request is over its limit, else None."""
        if self.rate_limit is None:
            return None
        count, seconds = self.rate_limit
        now = time.monotonic()
        window = self._admitted.setdefault(self.credential(request), deque())
        while window and window[0] <= now - seconds:
            window.popleft()
        if len(window) >= count:
            return window[0] + seconds - now
        window.append(now)
        return None

    def venue_routes(self) -> list[Route]:
        raise NotImplementedError

    def app(self) -> Starlette:
        routes = [Route(r.path, self._guard(r.endpoint), methods=r.methods) for r in self.venue_routes()]
        routes += [
            Route("/_sim/faults", self._add_faults, methods=["POST"]),
            Route("/_sim/stats", self._stats, methods=["GET"]),
            Route("/_sim/reset", self._reset, methods=["POST"]),
        ]
        return Starlette(routes=routes)

    def _guard(self, handler: Any) -> Handler:
        async def guarded(request: Request) -> Response:
            self.requests[request.url.path] += 1
            wait = self._over_limit(request)  # counted on arrival, as a venue's gateway does
            if wait is not None:
                self.rate_limited += 1
                return json_response(
                    {"code": 429, "message": "Too Many Requests"},
                    429,
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
            if self.latency:
                await asyncio.sleep(self.latency)
            if self.faults:
                return await self._faulty(self.faults.popleft(), request, handler)
            response: Response = await handler(request)
            return response

        return guarded

    async def _faulty(self, fault: Fault, request: Request, handler: Handler) -> Response:
        credential = self.credential(request)
        if fault.kind:
            self.served.append({"kind": fault.kind, "at": time.time(), "credential": credential})
        if fault.delay:
            await asyncio.sleep(fault.delay)
        status, headers, media_type, body = (
            fault.status,
            fault.headers,
            fault.content_type,
            fault.body.encode(),
        )
        if fault.real is not None:
            real = await handler(request)
            status, headers, media_type = real.status_code, {}, real.media_type or "application/json"
            if fault.real == HUGE:
                parts = _huge(bytes(real.body))
                headers = {"Content-Length": str(sum(map(len, parts)))}
                return StreamingResponse(_stream(parts, fault.drip), status, headers, media_type)
            body = MUTATIONS[fault.real](bytes(real.body), self.rng, credential)
        if fault.drip or fault.repeat != 1:
            return StreamingResponse(_stream([body] * fault.repeat, fault.drip), status, headers, media_type)
        return Response(body, status_code=status, headers=headers, media_type=media_type)

    async def _add_faults(self, request: Request) -> Response:
        items = json.loads(await request.body())
        for item in items:
            times = int(item.pop("times", 1))
            self.fail_next(*(Fault(**item) for _ in range(times)))
        return JSONResponse({"queued": len(self.faults)})

    async def _stats(self, request: Request) -> Response:
        return JSONResponse(
            {
                "requests": dict(self.requests),
                "rejected": self.rejected,
                "rate_limited": self.rate_limited,
                "served": self.served,
            }
        )

    async def _reset(self, request: Request) -> Response:
        self.faults.clear()
        self.requests.clear()
        self.rejected = 0
        self.rate_limited = 0
        self.served.clear()
        self._admitted.clear()
        return JSONResponse({"ok": True})

    def drift(self, value: Any, scale: str = "0.001") -> Any:
        """A value moved by a small random relative step, keeping its decimal places."""
        from decimal import Decimal

        step = Decimal(str(self.rng.uniform(-1, 1))) * Decimal(scale)
        return (value * (1 + step)).quantize(value) if value else value
