"""One source x one slot, end to end: simulator over HTTP semantics -> pipeline -> real PostgreSQL."""

from __future__ import annotations

import copy
import re
import secrets
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from etl.pipeline import Polled, store
from etl.records import AccountRef, BalanceRow, Batch, RawResponse
from etl.sim.base import Fault
from etl.sim.bittap import BittapSimulator
from tests.helpers import SLOT, count, row_versions, rows, run, served, settings_for, source_entry
from tests.venues.test_bittap import seed_body


@pytest.fixture
def two_sources():
    """`bad` and `good`: two Bittap accounts on separate simulators (served on loopback, so
    timeouts are real), so that faults hit only `bad`."""
    bad, good = BittapSimulator(seed=1), BittapSimulator(seed=2)
    bad.add_account("bad-key", "bad-secret", body=seed_body())
    good.add_account("good-key", "good-secret")
    with served(bad) as bad_server, served(good) as good_server:
        settings = settings_for(
            source_entry("bad", "bittap", bad_server.url, "bad-key", "bad-secret"),
            source_entry("good", "bittap", good_server.url, "good-key", "good-secret"),
            timeout="0.5s",
        )
        yield settings, bad, good


def test_seed_example_round_trips_exactly_through_postgresql(engine, two_sources):
    settings, _, _ = two_sources
    results = run(engine, settings)
    assert results["bad"].status == "ok", results["bad"].error
    (balance,) = rows(
        engine,
        """SELECT b.total, b.total::text, b.extra FROM balance_snapshots b
                                 JOIN accounts a ON a.id = b.account_id WHERE a.source = 'bad'""",
    )
    assert balance[0] == Decimal("12282.88002680674743639045")
    assert balance[1] == "12282.88002680674743639045"
    assert balance[2]["trialFundBalance"] == "0"
    (position,) = rows(
        engine,
        """SELECT p.mark_price, p.unrealized_pnl, p.extra->'bkrFee', p.side, p.quantity
                                  FROM position_snapshots p JOIN accounts a ON a.id = p.account_id
                                  WHERE a.source = 'bad'""",
    )
    assert position[0] is None and position[1] is None
    assert position[2] is None  # JSON null kept in extra as null
    assert position[3:] == ("long", Decimal("871.1"))
    (raw,) = rows(
        engine,
        "SELECT body->'data'->'assets'->0->>'balance' FROM raw_payloads WHERE source = 'bad'",
    )
    assert raw[0] == "12282.88002680674743639045"


def test_rerunning_a_slot_rewrites_no_snapshot_row(engine, two_sources):
    settings, _, good = two_sources
    account = good.accounts["good-key"]
    account.body = {
        "code": "0",
        "success": True,
        "msg": "",
        "data": good._data(account),
    }  # freeze it
    first = run(engine, settings)
    before = row_versions(engine)
    second = run(engine, settings)
    assert len(before) == 2 + 2 + 1 + 2  # balances, account rows, positions (1 seed + 2 good)
    assert row_versions(engine) == before
    assert all(sum(r.written.values()) == 0 for r in second.values())
    assert all(sum(r.written.values()) > 0 for r in first.values())
    assert count(engine, "ingestion_runs") == 2


def test_a_changed_value_is_updated_and_a_closed_position_removed_on_rerun(engine, two_sources):
    settings, bad, _ = two_sources
    run(engine, settings)
    body = copy.deepcopy(bad.accounts["bad-key"].body)
    body["data"]["assets"][0]["balance"] = "1.5"
    body["data"]["positions"] = []
    bad.accounts["bad-key"].body = body
    result = run(engine, settings)["bad"]
    assert result.written["balance_snapshots"] == 1
    assert rows(
        engine,
        "SELECT total FROM balance_snapshots b JOIN accounts a ON a.id = b.account_id WHERE a.source = 'bad'",
    )[0][0] == Decimal("1.5")
    assert (
        rows(
            engine,
            "SELECT count(*) FROM position_snapshots p JOIN accounts a ON a.id = p.account_id "
            "WHERE a.source = 'bad'",
        )[0][0]
        == 0
    )


BAD_ANSWERS = {
    "502 html page": (
        Fault(502, "<html><body><h1>502 Bad Gateway</h1></body></html>"),
        r"HTTP 502: 502 Bad Gateway",
    ),
    "truncated json": (
        Fault(
            200,
            '{"code": "0", "success": true, "data": {"assets": [',
            content_type="application/json",
        ),
        r"body is not JSON",
    ),
    "401 auth": (
        Fault(
            401,
            '{"code":"410002","msg":"Signature verification failed","success":false}',
            content_type="application/json",
        ),
        r"HTTP 401, code 410002: Signature verification failed",
    ),
    "timeout": (Fault(200, "{}", delay=1.5), r"timed out after 0.5s"),
}


@pytest.mark.parametrize("case", BAD_ANSWERS)
def test_a_bad_answer_is_one_error_line_and_the_other_source_still_loads(engine, two_sources, case):
    settings, bad, _ = two_sources
    fault, message = BAD_ANSWERS[case]
    bad.fail_next(*[fault] * 10)  # more than the retries
    results = run(engine, settings)
    error = results["bad"].error
    assert results["bad"].status == "error"
    assert error.startswith("bad: bittap GET /ftapi/v1/account/info: ")
    assert "\n" not in error
    assert re.search(message, error), error
    assert results["good"].status == "ok"
    assert rows(engine, "SELECT status, error FROM ingestion_runs WHERE source = 'bad'") == [("error", error)]
    assert (
        rows(
            engine,
            "SELECT count(*) FROM balance_snapshots b JOIN accounts a ON a.id = b.account_id "
            "WHERE a.source = 'bad'",
        )[0][0]
        == 0
    )
    assert count(engine, "accounts") == 1  # only `good`: nothing partial of `bad`
    assert rows(engine, "SELECT count(*) FROM balance_snapshots")[0][0] == 1


def test_a_non_number_is_an_error_naming_the_field_and_keeps_the_raw_body(engine, two_sources):
    settings, bad, _ = two_sources
    bad.accounts["bad-key"].body["data"]["assets"][0]["balance"] = "12,5 USDT"
    results = run(engine, settings)
    assert results["bad"].error == ("bad: bittap data.assets[0].balance: expected a number, got '12,5 USDT'")
    assert results["good"].status == "ok"
    assert count(engine, "accounts") == 1
    # the body is kept, so `etl replay` can load it once the venue or the normalizer is fixed
    assert rows(
        engine,
        "SELECT r.status FROM raw_payloads p JOIN ingestion_runs r ON r.id = p.run_id WHERE p.source = 'bad'",
    ) == [("error",)]


def test_transient_failures_are_retried_and_the_slot_still_loads(engine, two_sources):
    settings, bad, _ = two_sources
    bad.fail_next(
        Fault(503, "busy"), Fault(502, "bad gateway"), Fault(429, "slow down", {"Retry-After": "0"})
    )
    result = run(engine, settings)["bad"]
    assert result.status == "ok" and result.attempts == 4
    assert rows(engine, "SELECT attempts FROM ingestion_runs WHERE source = 'bad'") == [(4,)]


def test_an_auth_error_is_not_retried(engine, two_sources):
    settings, bad, _ = two_sources
    bad.accounts.clear()  # the key is no longer known: the simulator answers 410001
    result = run(engine, settings)["bad"]
    assert result.attempts == 1 and "410001" in result.error
    assert bad.requests["/ftapi/v1/account/info"] == 1


def test_a_failure_after_success_keeps_the_loaded_slot(engine, two_sources):
    settings, bad, _ = two_sources
    run(engine, settings)
    bad.fail_next(*[Fault(401, "{}", content_type="application/json")] * 3)
    assert run(engine, settings)["bad"].status == "error"
    assert rows(engine, "SELECT status FROM ingestion_runs WHERE source = 'bad'") == [("ok",)]
    assert count(engine, "balance_snapshots") == 2


def test_a_number_postgresql_cannot_hold_is_the_sources_error_not_a_crash(engine, two_sources):
    settings, bad, _ = two_sources
    bad.accounts["bad-key"].body["data"]["assets"][0]["balance"] = "1E+200000"
    results = run(engine, settings)
    assert results["bad"].status == "error"
    assert results["bad"].error.startswith("bad: value overflows numeric format")
    assert results["good"].status == "ok"
    assert rows(engine, "SELECT status FROM ingestion_runs WHERE source = 'bad'") == [("error",)]
    assert count(engine, "accounts") == 1


def test_the_first_load_of_a_new_hour_closes_the_rollup_buckets_before_it(engine, two_sources):
    settings, _, _ = two_sources
    first, second = datetime(2026, 3, 1, 10, 30, tzinfo=UTC), datetime(2026, 3, 1, 11, 0, tzinfo=UTC)
    run(engine, settings, first)
    assert count(engine, "account_equity_hourly_closed") == 0  # its hour is open
    hourly = rows(engine, "SELECT * FROM account_equity_hourly ORDER BY 1, 2, 3")
    run(engine, settings, second)
    assert rows(engine, "SELECT closed_until FROM rollup_watermarks WHERE width = 'hour'") == [(second,)]
    assert rows(engine, "SELECT * FROM account_equity_hourly_closed ORDER BY 1, 2, 3") == hourly


def test_a_value_postgresql_refuses_is_that_sources_error_and_the_others_load(engine, two_sources):
    """A 3 kB currency makes the index row too big (SQLSTATE 54000): the source's data,
    not an outage, so it is recorded as its error and nothing is left for a spool."""
    settings, bad, _ = two_sources
    coin = secrets.token_hex(1500)  # random: a compressible name would fit the index
    bad.accounts["bad-key"].body["data"]["assets"][0]["coin"] = coin
    results = run(engine, settings)
    assert results["good"].status == "ok"
    error = results["bad"].error
    assert results["bad"].status == "error" and "\n" not in error and len(error) < 400
    assert error.startswith("bad: index row size ")
    assert (
        f"balance_snapshots.currency of account 'bad' (account_type 'futures', currency '{coin[:20]}" in error
    )
    assert rows(engine, "SELECT status, error FROM ingestion_runs WHERE source = 'bad'") == [("error", error)]
    assert rows(engine, "SELECT count(*) FROM raw_payloads WHERE source = 'bad'") == [(1,)]  # kept for replay
    assert count(engine, "accounts") == 1


def _polled(batch: Batch | None, responses: tuple[RawResponse, ...] = (), error: str | None = None) -> Polled:
    source = settings_for(
        source_entry("s", "bittap", "http://127.0.0.1:9", "s-api-key", "s-api-secret")
    ).sources[0]
    return Polled(source, SLOT, SLOT, responses, batch, None if batch else error or "s: venue said no", 1)


def _one(currency: str = "USDT", total: str = "1", extra: dict | None = None) -> Batch:
    row = BalanceRow("s", "futures", currency, total=Decimal(total), extra=extra or {})
    return Batch(accounts=(AccountRef("s"),), balances=(row,))


REFUSED_BATCHES = {
    "NUL in the currency": (_one(currency="US\x00DT"), "balance_snapshots.currency of account 's'"),
    "lone surrogate in the currency": (
        _one(currency="US\ud800DT"),
        "balance_snapshots.currency of account 's'",
    ),
    "NaN in extra": (_one(extra={"fee": Decimal("NaN")}), "balance_snapshots.extra of account 's'"),
    "1e999999 in a mapped field": (_one(total="1e999999"), "balance_snapshots.total of account 's'"),
    "NUL in extra": (_one(extra={"note": "a\x00b"}), "balance_snapshots.extra of account 's'"),
    "NaN in a mapped field": (
        _one(total="NaN"),
        "BalanceRow of account 's': total is NaN, not a finite number",
    ),
    "-Infinity in a mapped field": (_one(total="-Infinity"), "total is -Infinity, not a finite number"),
}


@pytest.mark.parametrize("case", REFUSED_BATCHES)
def test_a_batch_postgresql_refuses_is_one_error_line_with_its_run_row(engine, case):
    batch, named = REFUSED_BATCHES[case]
    result = store(engine, _polled(batch))
    assert result.status == "error" and "\n" not in result.error and named in result.error, result.error
    assert rows(engine, "SELECT status, error FROM ingestion_runs") == [("error", result.error)]
    assert count(engine, "balance_snapshots") == 0


def _raw(text: str | None, body: object = None) -> RawResponse:
    return RawResponse("/ftapi/v1/account/info", 200, body, SLOT, text=text)


UNSTORABLE_BODIES = {
    "NaN": _raw('{"balance": NaN}'),
    "Infinity": _raw('{"balance": -Infinity}'),
    "1e999999": _raw('{"balance": 1e999999}'),
    "escaped NUL": _raw('{"coin": "\\u0000"}'),
    "escaped lone surrogate": _raw('{"coin": "\\ud800"}'),
    "NUL, parsed": _raw(None, {"coin": "US\x00DT"}),
    "lone surrogate, parsed": _raw(None, {"coin": "\udc80"}),
    "NaN Decimal, parsed": _raw(None, {"balance": Decimal("NaN")}),
}


@pytest.mark.parametrize("case", UNSTORABLE_BODIES)
def test_a_failed_poll_is_recorded_whatever_body_the_venue_sent(engine, case):
    fine = RawResponse("/other", 200, {"ok": 1}, SLOT, text='{"ok": 1}')
    polled = _polled(None, (UNSTORABLE_BODIES[case], fine), error="s: bittap: got 'a\x00b\ud800'")
    result = store(engine, polled)
    assert result.status == "error"
    ((stored,),) = rows(engine, "SELECT error FROM ingestion_runs WHERE status = 'error'")
    assert stored == result.error and "\n" not in stored
    assert stored.startswith(
        "s: bittap: got 'a\\u0000b\\ud800'; raw body of /ftapi/v1/account/info kept as text"
    )
    kept = dict(rows(engine, "SELECT endpoint, body FROM raw_payloads"))
    assert kept["/other"] == {"ok": 1}
    assert set(kept["/ftapi/v1/account/info"]) == {"etl_kept_as_text", "text"}
    if UNSTORABLE_BODIES[case].text is not None:  # the venue's text, as it came
        assert kept["/ftapi/v1/account/info"]["text"] == UNSTORABLE_BODIES[case].text


def test_a_refused_batch_keeps_its_unstorable_raw_body_too(engine):
    polled = _polled(_one(extra={"fee": Decimal("NaN")}), (_raw('{"fee": NaN}'),))
    result = store(engine, polled)
    assert result.status == "error" and "balance_snapshots.extra" not in result.error  # the body failed first
    assert "kept as text" in result.error
    assert rows(engine, "SELECT body->>'text' FROM raw_payloads") == [('{"fee": NaN}',)]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e999999", '"\\u0000"', '"\\ud800"'])
def test_a_body_postgresql_cannot_store_still_leaves_its_run_row(engine, two_sources, value):
    settings, bad, _ = two_sources
    body = '{"code": "0", "success": true, "msg": "", "data": {"assets": [{"coin": "USDT", "balance": %s}]}}'
    bad.fail_next(*[Fault(200, body % value, content_type="application/json")] * 10)
    results = run(engine, settings)
    assert results["good"].status == "ok"
    assert results["bad"].status == "error" and "\n" not in results["bad"].error
    assert rows(engine, "SELECT status, error FROM ingestion_runs WHERE source = 'bad'") == [
        ("error", results["bad"].error)
    ]


def test_a_malformed_body_is_one_error_line_and_its_text_is_kept_for_the_record(engine, two_sources):
    settings, bad, _ = two_sources
    bad.fail_next(Fault(200, '{"code": "0", "success": true, "data": {"a": "x\\u0000", "b": NaN}}',
                        content_type="application/json"))
    results = run(engine, settings)
    error = results["bad"].error
    assert error == 'bad: bittap GET /ftapi/v1/account/info: HTTP 200, malformed body at $.data.a: string "x\\u0000" holds a NUL (\\u0000)'
    assert results["good"].status == "ok" and results["bad"].attempts == 1
    assert rows(engine, "SELECT status, error FROM ingestion_runs WHERE source = 'bad'") == [("error", error)]
    (kept,) = rows(engine, "SELECT body->'etl_rejected_body' FROM raw_payloads WHERE source = 'bad'")
    assert kept[0]["text"].startswith('{"code": "0"') and kept[0]["reason"].startswith("$.data.a: string")


def test_a_redirect_with_a_json_body_is_an_error_not_an_ok_slot(engine, two_sources):
    settings, bad, _ = two_sources
    bad.fail_next(Fault(302, "{}", {"Location": "/login"}, content_type="application/json"))
    result = run(engine, settings)["bad"]
    assert result.status == "error" and result.error.endswith("HTTP 302 redirect to " + settings.sources[0].base_url + "/login not followed")


@pytest.mark.parametrize("key", ["key-7f3a9c1e55\n", "key-7f3a\n9c1e55"])
def test_a_key_with_a_newline_never_reaches_errors_logs_or_the_database(engine, key, caplog):
    sim = BittapSimulator()
    sim.add_account(key.strip(), "secret-b8d2e4f6a0")
    with served(sim) as server, caplog.at_level("DEBUG", logger="etl"):
        settings = settings_for(source_entry("s", "bittap", server.url, key, "secret-b8d2e4f6a0"), timeout="0.5s")
        result = run(engine, settings)["s"]
    assert result.attempts == 1  # refused before sending is never retried (ok once the key is stripped)
    dumped = str(rows(engine, "SELECT t::text FROM ingestion_runs t")) + caplog.text + str(result)
    for part in ("7f3a", "9c1e55"):
        assert part not in dumped


def test_a_secret_echoed_in_a_good_body_is_kept_nowhere(engine, two_sources):
    settings, bad, _ = two_sources
    bad.accounts["bad-key"].body["data"]["assets"][0]["echo"] = "bad-key and bad-secret"
    assert run(engine, settings)["bad"].status == "ok"
    stored = str(rows(engine, "SELECT body::text FROM raw_payloads")) + str(rows(engine, "SELECT extra::text FROM balance_snapshots"))
    assert "bad-key" not in stored and "bad-secret" not in stored and "*** and ***" in stored
