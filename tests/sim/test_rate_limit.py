"""The simulators' optional per-key rate limit: a sliding window, 429 + Retry-After, counted."""

from __future__ import annotations

import asyncio

import httpx

from etl.sim.bittap import BittapSimulator
from etl.venues.bittap import ACCOUNT_INFO


def test_a_key_over_its_limit_gets_429_with_retry_after_and_other_keys_do_not():
    sim = BittapSimulator()
    sim.limit_rate(2, 60.0)

    async def go() -> tuple[list[int], httpx.Response, dict]:
        transport = httpx.ASGITransport(app=sim.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            statuses = [
                (await client.get(ACCOUNT_INFO, headers={"X-BT-APIKEY": "k1"})).status_code for _ in range(3)
            ]
            other = await client.get(ACCOUNT_INFO, headers={"X-BT-APIKEY": "k2"})
            stats = (await client.get("/_sim/stats")).json()
            return statuses, other, stats

    statuses, other, stats = asyncio.run(go())
    # unknown keys are refused (401) but still count: the limit is on what the gateway sees
    assert statuses[:2] == [401, 401] and statuses[2] == 429
    assert other.status_code == 401  # k2 has its own window
    assert stats["rate_limited"] == 1


def test_retry_after_says_when_the_window_frees_and_no_limit_by_default():
    limited, free = BittapSimulator(), BittapSimulator()
    limited.limit_rate(1, 30.0)

    async def go(sim: BittapSimulator) -> httpx.Response:
        transport = httpx.ASGITransport(app=sim.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            for _ in range(5):
                response = await client.get(ACCOUNT_INFO, headers={"X-BT-APIKEY": "k"})
            return response

    last = asyncio.run(go(limited))
    assert last.status_code == 429 and 29 <= int(last.headers["Retry-After"]) <= 30
    assert asyncio.run(go(free)).status_code == 401  # never 429 without limit_rate
