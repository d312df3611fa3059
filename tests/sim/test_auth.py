"""The simulators check signatures with their own code, so a client's signer is proven by
a verifier it did not write: a correctly signed request passes, and a tampered one (wrong
secret, altered parameter, stale timestamp) gets the venue's documented auth error."""

from __future__ import annotations

import ast
import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from etl.sim.base import Simulator
from etl.sim.bittap import BittapSimulator
from etl.sim.htx import HtxSimulator
from etl.sim.ltp import LtpSimulator, asset
from etl.sim.treadfi import TreadfiSimulator
from etl.venues import bittap, htx, ltp, treadfi

SIM_DIR = Path(__file__).resolve().parents[2] / "etl" / "sim"
BASE = "http://sim.test"


def venue_imports(source: str) -> list[str]:
    """Every `etl.venues` module a Python source imports, in any import form."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = (
                "etl" + (f".{node.module}" if node.module else "") if node.level == 2 else node.module or ""
            )
            found += [module] + [f"{module}.{a.name}" for a in node.names]
    return [m for m in found if m == "etl.venues" or m.startswith("etl.venues.")]


def test_no_simulator_imports_the_clients_code():
    offenders = {p.name: venue_imports(p.read_text()) for p in sorted(SIM_DIR.glob("*.py"))}
    assert {name: found for name, found in offenders.items() if found} == {}


@pytest.mark.parametrize(
    "source",
    [
        "from etl.venues.htx import sign",
        "from etl.venues import bittap",
        "import etl.venues.ltp as ltp",
        "from ..venues.htx import canonical_query",
    ],
)
def test_the_import_scan_sees_every_import_form(source):
    assert venue_imports(source)


def send(sim: Simulator, request: httpx.Request) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.app())) as client:
            return await client.send(request)

    return asyncio.run(go())


def with_query(request: httpx.Request, query: str) -> httpx.Request:
    """The same request (headers, signature) with another query string: a tampered one."""
    return httpx.Request("GET", request.url.copy_with(query=query.encode()), headers=request.headers)


# --- HTX: Signature v2 in the query, `Timestamp` valid 5 minutes -------------------------


def htx_sim() -> HtxSimulator:
    sim = HtxSimulator()
    sim.add_account("htx-key", "htx-secret")
    return sim


def htx_request(secret: str = "htx-secret", age: timedelta = timedelta(0)) -> httpx.Request:
    ts = htx.timestamp(datetime.now(UTC) - age)
    return htx.build_request(BASE, htx.POSITIONS, {"contract_code": "BTC-USDT"}, "htx-key", secret, ts)


def test_htx_a_signed_request_passes():
    response = send(htx_sim(), htx_request())
    assert response.json()["code"] == 200
    assert [p["contract_code"] for p in response.json()["data"]] == ["BTC-USDT"]


@pytest.mark.parametrize(
    "tamper, code, message",
    [
        ("secret", 403, "Verification failure [校验失败]"),
        ("param", 403, "Verification failure [校验失败]"),
        ("stale", 12001, "Invalid submission time"),
    ],
)
def test_htx_a_tampered_request_gets_the_documented_error(tamper, code, message):
    request = {
        "secret": lambda: htx_request(secret="not-the-secret"),
        "param": lambda: with_query(
            htx_request(), htx_request().url.query.decode().replace("BTC-USDT", "ETH-USDT")
        ),
        "stale": lambda: htx_request(age=timedelta(minutes=6)),
    }[tamper]()
    sim = htx_sim()
    body = send(sim, request).json()
    assert (body["status"], body["err_code"], body["err_msg"]) == ("error", code, message)
    assert sim.rejected == 1


# --- Bittap: X-BT-* headers, message = query as sent + timestamp + nonce -------------------

# Empty values and characters that must be percent-encoded: today's signer dropped the
# empty value and signed the raw text while the URL kept both, encoded.
AWKWARD = {"symbolId": "XRP-USDT-M", "note": "", "tag": "a b,c/ü&=+"}


def bittap_sim() -> BittapSimulator:
    sim = BittapSimulator()
    sim.add_account("bt-key", "bt-secret")
    return sim


def bittap_request(params: dict[str, str], secret: str = "bt-secret", age_ms: int = 0) -> httpx.Request:
    ts = str(int(time.time() * 1000) - age_ms)
    return bittap.build_request(BASE, bittap.ACCOUNT_INFO, params, "bt-key", secret, ts, "nonce-1")


@pytest.mark.parametrize("params", [{}, {"symbolId": "XRP-USDT-M"}, AWKWARD])
def test_bittap_a_signed_request_passes_the_independent_verifier(params):
    body = send(bittap_sim(), bittap_request(params)).json()
    assert (body["success"], body["code"]) == (True, "0")


def test_bittap_sends_exactly_the_query_it_signs():
    request = bittap_request(AWKWARD)
    sent = request.url.query.decode()
    assert sent == "symbolId=XRP-USDT-M&tag=a%20b%2Cc%2F%C3%BC%26%3D%2B"  # no empty `note=`
    assert request.headers["X-BT-SIGN"] == bittap.sign(
        "bt-secret", sent, request.headers["X-BT-TS"], "nonce-1"
    )


@pytest.mark.parametrize("tamper", ["secret", "param", "added param", "stale"])
def test_bittap_a_tampered_request_gets_410002(tamper):
    request = {
        "secret": lambda: bittap_request(AWKWARD, secret="not-the-secret"),
        "param": lambda: with_query(
            bittap_request(AWKWARD), "symbolId=BTC-USDT-M&tag=a%20b%2Cc%2F%C3%BC%26%3D%2B"
        ),
        "added param": lambda: with_query(bittap_request({}), "symbolId=BTC-USDT-M"),
        "stale": lambda: bittap_request(AWKWARD, age_ms=60_000),
    }[tamper]()
    sim = bittap_sim()
    response = send(sim, request)
    assert response.status_code == 401
    assert (response.json()["code"], response.json()["success"]) == ("410002", False)
    assert sim.rejected == 1


def test_bittap_an_unknown_key_gets_410001():
    request = bittap_request({})
    request.headers["X-BT-APIKEY"] = "someone-else"
    assert send(bittap_sim(), request).json()["code"] == "410001"


# --- LTP: X-MBX-APIKEY / nonce / signature over the raw values ----------------------------


def ltp_sim() -> LtpSimulator:
    sim = LtpSimulator()
    sim.add_user("ltp-key", "ltp-secret")
    for account_id in (10001, 10002):
        sim.add_wallet("ltp-key", account_id, "Spot", venue="BINANCE", assets=[asset("USDT", "100.5")])
    return sim


def ltp_request(secret: str = "ltp-secret", age: int = 0) -> httpx.Request:
    params = {"accountId": "10001,10002", "currency": "USDT"}
    return ltp.build_request(BASE, params, "ltp-key", secret, str(int(time.time()) - age))


def test_ltp_a_signed_request_passes():
    body = send(ltp_sim(), ltp_request()).json()
    assert body["code"] == 200000
    assert [e["accountId"] for e in body["data"]] == [10001, 10002]


@pytest.mark.parametrize("tamper", ["secret", "param", "stale"])
def test_ltp_a_tampered_request_gets_2000(tamper):
    request = {
        "secret": lambda: ltp_request(secret="not-the-secret"),
        "param": lambda: with_query(ltp_request(), "accountId=10001&currency=USDT"),
        "stale": lambda: ltp_request(age=120),
    }[tamper]()
    sim = ltp_sim()
    body = send(sim, request).json()
    assert (body["code"], body["message"]) == (2000, "API verification failed")
    assert sim.rejected == 1


# --- Tread.fi: a static token, nothing signed ----------------------------------------------


def treadfi_sim() -> TreadfiSimulator:
    sim = TreadfiSimulator()
    sim.add_account("good-token", "AccountABC", "Bybit")
    return sim


def test_treadfi_the_token_passes():
    response = send(treadfi_sim(), treadfi.build_request(BASE, {}, "good-token"))
    assert response.status_code == 200 and list(response.json()) == ["AccountABC"]


@pytest.mark.parametrize(
    "authorization, detail",
    [
        ("Token wrong-token", "Invalid token."),
        ("Bearer good-token", "Authentication credentials were not provided."),
    ],
)
def test_treadfi_a_wrong_token_or_scheme_gets_drf_401(authorization, detail):
    request = treadfi.build_request(BASE, {}, "good-token")
    request.headers["Authorization"] = authorization
    response = send(treadfi_sim(), request)
    assert (response.status_code, response.json()) == (401, {"detail": detail})
