"""The simulators' bad-body faults: the real answer with one bad value, dripped or not, logged as served."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from etl.sim.base import HUGE_BYTES, Simulator, json_response

ANSWER = {"code": "0", "data": {"balance": "25000.5", "coin": "USDT"}}


class Echo(Simulator):
    """A venue with one route that always answers ANSWER."""

    def venue_routes(self) -> list[Route]:
        return [Route("/balance", self.balance, methods=["GET"])]

    async def balance(self, request: Request) -> Response:
        return json_response(ANSWER)


def fetch(faults: list[dict[str, Any]]) -> tuple[list[httpx.Response], dict[str, Any]]:
    sim = Echo()

    async def go() -> tuple[list[httpx.Response], dict[str, Any]]:
        transport = httpx.ASGITransport(app=sim.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            (await client.post("/_sim/faults", json=faults)).raise_for_status()
            answers = [await client.get("/balance", headers={"X-BT-APIKEY": "key-1"}) for _ in faults]
            return answers, (await client.get("/_sim/stats")).json()

    return asyncio.run(go())


def test_each_mutation_changes_one_value_of_the_real_answer_and_is_logged_as_served():
    kinds = ["nan", "nul", "wrong_type", "duplicate_key", "echo_credential"]
    answers, stats = fetch([{"real": kind, "kind": kind} for kind in kinds])
    nan, nul, wrong, duplicate, echo = (a.content for a in answers)
    assert b'"balance":NaN' in nan
    assert json.loads(nul)["data"]["coin"] == "\x00USDT"
    assert json.loads(wrong)["data"]["balance"] == {"value": "25000.5"}
    pairs = json.loads(duplicate, object_pairs_hook=lambda p: p)
    assert [k for k, _ in pairs].count("data") == 2 and json.loads(duplicate) == ANSWER  # the last copy wins
    assert json.loads(echo)["echo"] == "key-1"
    assert all(a.status_code == 200 for a in answers)
    assert [(s["kind"], s["credential"]) for s in stats["served"]] == [(k, "key-1") for k in kinds]


def test_a_huge_answer_is_padded_past_any_cap_and_still_parses():
    (answer,), _ = fetch([{"real": "huge"}])
    assert len(answer.content) > HUGE_BYTES
    assert answer.headers["Content-Length"] == str(len(answer.content))  # declared, though streamed
    assert json.loads(answer.content)["data"] == ANSWER["data"]


def test_a_drip_sends_the_answer_one_byte_at_a_time():
    t0 = time.monotonic()
    (answer,), stats = fetch([{"real": "", "drip": 0.002}])
    assert json.loads(answer.content) == ANSWER
    assert time.monotonic() - t0 >= 0.002 * len(answer.content)
    assert stats["served"] == []  # no kind: not logged
