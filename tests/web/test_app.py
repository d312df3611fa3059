"""`etl serve`: every page renders from a real loaded store, the numbers are the views'
exactly, the token is enforced off loopback, and nothing can write."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from etl.cli import app as cli
from etl.config import parse_settings
from etl.store.engine import make_engine
from etl.web.app import Dashboard, create_app
from tests.helpers import rows
from tests.store.builders import at, fail, load


class AppClient:
    """Requests to the app in-process over httpx's ASGI transport (starlette's own
    TestClient now asks for another HTTP package; this is the seam the venue tests use)."""

    def __init__(self, dashboard: Dashboard, token: str | None = None):
        self.dashboard = dashboard
        self.transport = httpx.ASGITransport(app=create_app(dashboard, token=token))
        self.cookies = httpx.Cookies()

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            async with httpx.AsyncClient(
                transport=self.transport, base_url="http://127.0.0.1", cookies=self.cookies
            ) as client:
                response = await client.get(
                    path, follow_redirects=kwargs.pop("follow_redirects", True), **kwargs
                )
                self.cookies.update(client.cookies)
                return response

        return asyncio.run(go())


NOW = at("2026-03-10T12:00:30")
# 26 digits, more than a float holds: the API and the CSV must carry every one.
BIG = "12282.88002680674743639045"


def _store(engine: Engine) -> None:
    """Two sources over two days of hourly slots, then a failure of the second one."""
    start = at("2026-03-08T12:00:00")
    for hour in range(49):
        slot = start + timedelta(hours=hour)
        load(engine, "desk", slot, {"A1": str(1000 + hour), "A2": BIG}, venue="ltp")
        if hour < 48:
            load(engine, "fund", slot, {"fund": "500.5"})
    fail(engine, "fund", NOW)


@pytest.fixture
def client(engine: Engine, database_url: str) -> Iterator[AppClient]:
    _store(engine)
    settings = parse_settings({"schedule": {"interval": "1h"}})
    readonly = make_engine(database_url, connect_args={"options": "-c default_transaction_read_only=on"})
    yield AppClient(Dashboard(readonly, settings, clock=lambda: NOW))
    readonly.dispose()


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/accounts",
        "/accounts/1",
        "/balances",
        "/balances?detail=1",
        "/runs",
        "/runs?status=error",
        "/static/uPlot.iife.min.js",
        "/static/app.js",
    ],
)
def test_every_page_renders(client: AppClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200, response.text[:300]


def test_overview_total_is_the_sum_of_each_accounts_latest_equity_exactly(client, engine):
    data = client.get("/api/overview").json()
    expected = rows(
        engine,
        """SELECT sum(e.equity) FROM account_equity e
           JOIN (SELECT source, max(snapshot_ts) AS slot FROM ingestion_runs WHERE status = 'ok'
                 GROUP BY source) last ON last.source = e.source AND last.slot = e.slot""",
    )[0][0]
    assert Decimal(data["total_equity"]) == expected
    assert data["total_equity"] == format(expected, "f")  # a string, every digit
    assert data["total_equity"] == "13831.38002680674743639045"  # 1048 + BIG + 500.5, exactly
    page = client.get("/").text
    assert "13,831.38" in page  # rounded for the eye


def test_change_over_24h_compares_with_the_hourly_bucket_a_day_before(client, engine):
    data = client.get("/api/overview").json()
    then = rows(
        engine,
        "SELECT total_equity FROM portfolio_equity_hourly WHERE bucket = :b",
        b=at("2026-03-09T12:00:00"),
    )[0][0]
    assert Decimal(data["changes"]["24h"]["from"]) == then
    assert Decimal(data["changes"]["24h"]["change"]) == Decimal(data["total_equity"]) - then
    assert data["changes"]["30d"]["change"] is None  # no data 30 days ago: no made-up figure


def test_a_failing_source_is_shown_failing_with_its_error(client):
    sources = {s["source"]: s for s in client.get("/api/overview").json()["sources"]}
    assert sources["fund"]["state"] == "failing"
    assert "venue down" in sources["fund"]["last_error"]
    assert sources["desk"]["state"] == "ok"
    page = client.get("/").text
    assert 'class="failing"' in page and "fund: venue down" in page


def test_equity_series_are_the_views_rows(client, engine):
    hourly = client.get("/api/equity?range=7d").json()["points"]
    view = rows(engine, "SELECT bucket, total_equity FROM portfolio_equity_hourly ORDER BY bucket")
    assert [(p["at"], Decimal(p["total"])) for p in hourly] == [
        (b.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), t) for b, t in view
    ]
    # the fund's missing last hour is incomplete: no drawdown, not a fall
    assert hourly[-1]["reporting"] < hourly[-1]["expected"] and hourly[-1]["drawdown"] is None
    assert {p["drawdown"] for p in hourly[:-1]} == {0.0}  # A1 rises every hour
    slots = client.get("/api/equity?range=1d").json()["points"]
    assert len(slots) == 25  # every slot of the last day
    daily = client.get("/api/equity?range=all").json()["points"]
    assert [p["at"][:10] for p in daily] == ["2026-03-08", "2026-03-09", "2026-03-10"]


def test_accounts_list_each_account_with_its_change(client):
    accounts = {a["external_id"]: a for a in client.get("/api/accounts").json()["accounts"]}
    assert accounts["A2"]["equity"] == BIG
    assert Decimal(accounts["A1"]["change_24h"]) == Decimal(24)
    detail = client.get(f"/api/accounts/{accounts['A1']['id']}?range=all").json()
    assert detail["account"]["source"] == "desk"
    assert [b["currency"] for b in detail["balances"]] == ["USDT"]


def test_balances_csv_carries_every_digit(client):
    csv = client.get("/balances.csv?detail=1").text
    assert BIG in csv
    summed = client.get("/balances.csv").text.splitlines()
    assert summed[0].startswith("venue,currency,total")
    as_of = client.get("/api/balances?at=2026-03-09T00:00:00Z&detail=1").json()["balances"]
    assert {b["snapshot_ts"] for b in as_of} == {"2026-03-09T00:00:00Z"}


def test_runs_filter_by_source_and_status(client):
    runs = client.get("/api/runs?source=fund&status=error").json()["runs"]
    assert [(r["source"], r["status"]) for r in runs] == [("fund", "error")]
    assert client.get("/api/runs?limit=3").json()["runs"].__len__() == 3


@pytest.mark.parametrize(
    "path", ["/api/equity?range=2y", "/api/balances?at=yesterday-ish", "/api/runs?limit=0"]
)
def test_a_bad_parameter_is_a_400_with_its_name(client, path):
    response = client.get(path)
    assert response.status_code == 400
    assert path.split("?")[1].split("=")[0] in response.text


def test_an_unknown_account_is_a_404(client):
    assert client.get("/accounts/999999").status_code == 404
    assert client.get("/api/accounts/999999").status_code == 404


def test_the_token_is_required_when_set(client):
    dashboard = client.dashboard
    client = AppClient(dashboard, token="s3cret")
    assert client.get("/api/overview").status_code == 401
    assert client.get("/api/overview", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/overview", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/api/overview", headers={"X-ETL-Token": "s3cret"}).status_code == 200
    first = client.get("/runs?token=s3cret&status=ok", follow_redirects=False)
    assert first.status_code == 303 and "token" not in first.headers["location"]
    assert client.get("/runs?status=ok").status_code == 200  # the cookie it set


def test_serve_refuses_to_bind_off_loopback_without_a_token(monkeypatch):
    monkeypatch.delenv("ETL_SERVE_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "needs --token" in result.output


def test_the_dashboards_connections_cannot_write(database_url):
    readonly = make_engine(database_url, connect_args={"options": "-c default_transaction_read_only=on"})
    with pytest.raises(Exception, match="read-only transaction"), readonly.begin() as conn:
        conn.execute(text("DELETE FROM ingestion_runs"))
    readonly.dispose()


def test_serve_reads_the_database_given_and_needs_no_venue_secret(database_url, monkeypatch, tmp_path):
    """The command's own engine: a config whose secret is unset still serves (checked via
    the schema guard, which runs before the server starts)."""
    url = make_url(database_url).render_as_string(hide_password=False)
    config = tmp_path / "etl.toml"
    config.write_text(f'[database]\nurl = "{url}"\n')
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: None)
    result = CliRunner().invoke(cli, ["serve", "--config", str(config), "--port", "0"])
    assert result.exit_code == 0, result.output
    assert "read-only" in result.output
    _ = datetime.now(UTC)
