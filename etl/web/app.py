"""`etl serve`: the read-only dashboard and its JSON API (starlette, server-rendered pages).

Every page is a template over the same data its `/api/...` twin returns, so what a person
sees and what a script reads cannot drift apart. Money leaves as strings with every
digit stored (`exact`); ratios (changes in %, drawdowns) are floats. The engine this app
gets opens read-only transactions (`default_transaction_read_only`), so no route can
write, whatever it runs. Off loopback every request needs the token: a header
(`Authorization: Bearer T` or `X-ETL-Token: T`), the cookie `etl_token`, or `?token=T`
once, which sets the cookie and redirects to the same page without it.
"""

from __future__ import annotations

import csv
import hmac
import io
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib.resources import files
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from etl.config import Settings
from etl.slots import parse_slot
from etl.spool import Spool
from etl.web import queries

PACKAGE = Path(str(files("etl.web")))
STALE_INTERVALS = 3  # a source with no ok slot for this many intervals is stale (config/alerts.yml too)
TOKEN_COOKIE = "etl_token"


def exact(value: Any) -> Any:
    """JSON-ready: Decimals as their exact digits (never through float), times as ISO 8601 UTC."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, dict):
        return {k: exact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [exact(v) for v in value]
    return value


class ExactJSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(exact(content), ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class Dashboard:
    """What every route needs: the store, the configured sources, this machine's spool."""

    engine: Engine
    settings: Settings
    spool: Spool | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def overview(self) -> dict[str, Any]:
        now = self.clock()
        with self.engine.connect() as conn:
            latest = queries.latest_equity(conn)
            total = sum((r["equity"] for r in latest if r["equity"] is not None), Decimal(0))
            changes = {}
            for name, back in queries.CHANGES.items():
                then = queries.total_at(conn, now - back)
                changes[name] = {
                    "from": then,
                    "change": None if then is None else total - then,
                    "percent": None if then is None else _percent(total - then, then),
                }
            sources = self._health(conn, now)
            first = queries.first_slot(conn)
        currencies = sorted({r["equity_currency"] or "?" for r in latest})
        return {
            "now": now,
            "total_equity": total,
            "equity_currencies": currencies,
            "accounts": len({r["id"] for r in latest}),
            "changes": changes,
            "sources": sources,
            # A store younger than a day opens on its slots, not on one hourly point.
            "default_range": "1d" if first is None or now - first < timedelta(days=2) else "7d",
        }

    def _health(self, conn: Any, now: datetime) -> list[dict[str, Any]]:
        configured = {s.name: s for s in self.settings.sources}
        found = {r["source"]: r for r in queries.health(conn)}
        missed = queries.missed_since(conn, now - timedelta(hours=24))
        waiting = self.spool.depth_by_source() if self.spool is not None else {}
        out = []
        for name in sorted(configured.keys() | found.keys()):
            row = found.get(name, {})
            source = configured.get(name)
            interval = self.settings.interval_of(source) if source else self.settings.schedule.interval
            last_ok, error_slot = row.get("last_ok"), row.get("error_slot")
            lag = (now - last_ok).total_seconds() if last_ok else None
            failing = error_slot is not None and (last_ok is None or error_slot > last_ok)
            stale = lag is None or lag > STALE_INTERVALS * interval.total_seconds()
            out.append(
                {
                    "source": name,
                    "venue": source.venue if source else row.get("venue"),
                    "configured": source is not None,
                    "interval_seconds": interval.total_seconds(),
                    "last_ok": last_ok,
                    "lag_seconds": lag,
                    "last_error_slot": error_slot,
                    "last_error": row.get("error") if failing else None,
                    "missed_24h": missed.get(name, 0),
                    "spooled": waiting.get(name, 0),
                    "state": "failing" if failing else ("stale" if stale else "ok"),
                }
            )
        return out

    def equity(self, range_name: str) -> dict[str, Any]:
        now = self.clock()
        back = queries.RANGES[range_name][0]
        with self.engine.connect() as conn:
            points = queries.equity_series(conn, range_name, now)
        return {
            "range": range_name,
            # the window the chart spans, so one point or a gap is drawn where it is in time
            "from": now - back if back is not None else (points[0].at if points else now),
            "until": now,
            "points": [
                {
                    "at": p.at,
                    "total": p.total,
                    "reporting": p.reporting,
                    "expected": p.expected,
                    "drawdown": dd,
                }
                for p, dd in zip(points, queries.drawdowns(points), strict=True)
            ],
        }

    def accounts(self) -> dict[str, Any]:
        now = self.clock()
        with self.engine.connect() as conn:
            latest = queries.latest_equity(conn)
            before = queries.equity_at(conn, now - queries.CHANGES["24h"])
        rows = []
        for r in latest:
            then = before.get((r["id"], r["equity_currency"]))
            change = None if then is None or r["equity"] is None else r["equity"] - then
            rows.append(
                {
                    **r,
                    "change_24h": change,
                    "change_24h_percent": None if change is None or then is None else _percent(change, then),
                }
            )
        return {"accounts": rows}

    def account(self, account_id: int, range_name: str) -> dict[str, Any] | None:
        now = self.clock()
        back = queries.RANGES[range_name][0]
        with self.engine.connect() as conn:
            found = queries.account(conn, account_id)
            if found is None:
                return None
            series = queries.account_series(conn, account_id, range_name, now)
            return {
                "account": found,
                "range": range_name,
                "from": now - back if back is not None else (series[0]["at"] if series else now),
                "until": now,
                "equity": series,
                "balances": queries.balances(conn, None, account_id=account_id),
            }

    def balances(self, at: datetime | None, detail: bool) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return {"at": at, "detail": detail, "balances": queries.balances(conn, at, detail=detail)}

    def runs(self, source: str | None, status: str | None, limit: int) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return {
                "source": source,
                "status": status,
                "sources": queries.run_sources(conn),
                "runs": queries.runs(conn, source=source, status=status, limit=limit),
            }


class BadRequest(Exception):
    """A query parameter a user got wrong: 400 with the message."""


def _range(request: Request, ranges: dict[str, Any], default: str) -> str:
    value = request.query_params.get("range", default)
    if value not in ranges:
        raise BadRequest(f"range: expected one of {', '.join(ranges)}, got {value!r}")
    return value


def _at(request: Request) -> datetime | None:
    value = request.query_params.get("at") or None
    if value is None:
        return None
    try:
        return parse_slot(value)
    except ValueError:
        raise BadRequest(
            f"at: expected an ISO 8601 time such as 2026-11-01T00:00:00Z, got {value!r}"
        ) from None


def _limit(request: Request) -> int:
    value = request.query_params.get("limit", "200")
    if not value.isdigit() or not 0 < int(value) <= queries.RUNS_LIMIT:
        raise BadRequest(f"limit: expected a whole number from 1 to {queries.RUNS_LIMIT}, got {value!r}")
    return int(value)


def _csv(rows: list[dict[str, Any]], name: str) -> Response:
    """Every digit, as stored: Decimals are written by `exact`, never through float."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else exact(v) for k, v in row.items()})
    return Response(
        buffer.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def _token_of(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("x-etl-token") or request.cookies.get(TOKEN_COOKIE)


def token_middleware(token: str) -> Middleware:
    """Every request needs the token; `?token=` once sets the cookie (never kept in the URL)."""

    async def check(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        given = request.query_params.get("token")
        if given is not None and hmac.compare_digest(given.encode(), token.encode()):
            query = "&".join(f"{k}={v}" for k, v in request.query_params.multi_items() if k != "token")
            response: Response = RedirectResponse(request.url.path + (f"?{query}" if query else ""), 303)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return response
        sent = _token_of(request)
        if sent is None or not hmac.compare_digest(sent.encode(), token.encode()):
            return PlainTextResponse("401: this dashboard needs its token (see `etl serve --help`)", 401)
        return await call_next(request)

    return Middleware(BaseHTTPMiddleware, dispatch=check)


def create_app(dashboard: Dashboard, *, token: str | None = None) -> Starlette:
    templates = Jinja2Templates(directory=str(PACKAGE / "templates"))
    templates.env.filters["money"] = _money
    templates.env.filters["when"] = _when
    templates.env.filters["ago"] = _ago
    templates.env.filters["pct"] = _pct

    def page(name: str, request: Request, data: dict[str, Any], active: str) -> Response:
        return templates.TemplateResponse(
            request, name, {"data": data, "active": active, "now": dashboard.clock()}
        )

    def handles(route: Callable[[Request], Response]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return route(request)
            except BadRequest as err:
                return PlainTextResponse(f"400: {err}", 400)

        return endpoint

    def overview(request: Request) -> Response:
        return page("overview.html", request, dashboard.overview(), "overview")

    def accounts(request: Request) -> Response:
        return page("accounts.html", request, dashboard.accounts(), "accounts")

    def account_page(request: Request) -> Response:
        found = dashboard.account(
            int(request.path_params["id"]), _range(request, queries.RANGES, "7d")
        )
        if found is None:
            return PlainTextResponse(f"404: no account with id {request.path_params['id']}", 404)
        return page("account.html", request, found, "accounts")

    def balances(request: Request) -> Response:
        detail = request.query_params.get("detail") == "1"
        return page("balances.html", request, dashboard.balances(_at(request), detail), "balances")

    def balances_csv(request: Request) -> Response:
        detail = request.query_params.get("detail") == "1"
        return _csv(dashboard.balances(_at(request), detail)["balances"], "balances.csv")

    def runs(request: Request) -> Response:
        return page("runs.html", request, _runs(request), "runs")

    def _runs(request: Request) -> dict[str, Any]:
        return dashboard.runs(
            request.query_params.get("source") or None,
            request.query_params.get("status") or None,
            _limit(request),
        )

    def api(build: Callable[[Request], dict[str, Any] | None]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            data = build(request)
            if data is None:
                return ExactJSON({"error": "not found"}, 404)
            return ExactJSON(data)

        return endpoint

    routes = [
        Route("/", handles(overview)),
        Route("/accounts", handles(accounts)),
        Route("/accounts/{id:int}", handles(account_page)),
        Route("/balances", handles(balances)),
        Route("/balances.csv", handles(balances_csv)),
        Route("/runs", handles(runs)),
        Route("/api/overview", handles(api(lambda r: dashboard.overview()))),
        Route("/api/equity", handles(api(lambda r: dashboard.equity(_range(r, queries.RANGES, "7d"))))),
        Route("/api/accounts", handles(api(lambda r: dashboard.accounts()))),
        Route(
            "/api/accounts/{id:int}",
            handles(
                api(
                    lambda r: dashboard.account(
                        int(r.path_params["id"]), _range(r, queries.RANGES, "7d")
                    )
                )
            ),
        ),
        Route(
            "/api/balances",
            handles(api(lambda r: dashboard.balances(_at(r), r.query_params.get("detail") == "1"))),
        ),
        Route("/api/runs", handles(api(_runs))),
        Mount("/static", StaticFiles(directory=str(PACKAGE / "static")), name="static"),
    ]
    middleware = [token_middleware(token)] if token else []
    return Starlette(routes=routes, middleware=middleware)


def _percent(change: Decimal, base: Decimal) -> float | None:
    """A change in % of its base: a ratio, so a float; none from a base of 0."""
    return float(change / base * 100) if base else None


def _money(value: Any, places: int = 2) -> str:
    """For the eye: thousands separated, rounded to `places` with trailing zeros past the
    second dropped; the API and the CSV keep every digit, a cell's title too."""
    if value is None:
        return "—"
    shown = f"{Decimal(value):,.{places}f}"
    if places > 2:
        whole, _, fraction = shown.partition(".")
        shown = f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"
    return shown


def _when(value: datetime | None) -> str:
    return "never" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f} %"
