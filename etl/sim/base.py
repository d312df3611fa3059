"""What every simulator shares: fault injection, latency, request counting, control routes.

A venue simulator subclasses `Simulator`, lists its routes in `venue_routes()`, and
raises nothing on bad input: it answers the way the venue documents. Control routes
under `/_sim/` let a test in another process queue faults and read request counts:

    POST /_sim/faults   [{"status": 502, "body": "<html>…", "times": 3}, …]
    GET  /_sim/stats    {"requests": {"/ftapi/v1/account/info": 12}, "rejected": 0}
    POST /_sim/reset
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from etl import exactjson

Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class Fault:
    """One injected answer instead of the real one; `delay` longer than the client's timeout = a timeout."""

    status: int = 500
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    content_type: str = "text/html"


def json_response(body: Any, status: int = 200) -> Response:
    """JSON with exact Decimals (JSONResponse would go through float)."""
    return Response(exactjson.dumps(body), status_code=status, media_type="application/json")


class Simulator:
    venue = "base"

    def __init__(self, seed: int = 0, latency: float = 0.0):
        self.rng = random.Random(seed)
        self.latency = latency
        self.faults: deque[Fault] = deque()
        self.requests: Counter[str] = Counter()
        self.rejected = 0  # requests refused for a bad key or signature

    def fail_next(self, *faults: Fault) -> None:
        self.faults.extend(faults)

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
            if self.latency:
                await asyncio.sleep(self.latency)
            if self.faults:
                fault = self.faults.popleft()
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                return Response(
                    fault.body,
                    status_code=fault.status,
                    headers=fault.headers,
                    media_type=fault.content_type,
                )
            response: Response = await handler(request)
            return response

        return guarded

    async def _add_faults(self, request: Request) -> Response:
        items = json.loads(await request.body())
        for item in items:
            times = int(item.pop("times", 1))
            self.fail_next(*(Fault(**item) for _ in range(times)))
        return JSONResponse({"queued": len(self.faults)})

    async def _stats(self, request: Request) -> Response:
        return JSONResponse({"requests": dict(self.requests), "rejected": self.rejected})

    async def _reset(self, request: Request) -> Response:
        self.faults.clear()
        self.requests.clear()
        self.rejected = 0
        return JSONResponse({"ok": True})

    def drift(self, value: Any, scale: str = "0.001") -> Any:
        """A value moved by a small random relative step, keeping its decimal places."""
        from decimal import Decimal

        step = Decimal(str(self.rng.uniform(-1, 1))) * Decimal(scale)
        return (value * (1 + step)).quantize(value) if value else value
