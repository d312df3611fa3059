"""LTP: signing vectors, the example body normalized exactly, one row per currency across
networks, error envelopes, normalizer properties, and the simulator through the pipeline."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl import exactjson
from etl.errors import ConfigError, NormalizeError, VenueError
from etl.records import RawResponse
from etl.sim.base import Fault
from etl.sim.demo import ltp as demo_ltp
from etl.sim.ltp import LtpSimulator, asset
from etl.store.load import load_slot
from etl.venues import ltp
from tests.conftest import FIXTURES
from tests.helpers import SLOT, count, row_versions, rows, run, served, settings_for, source_entry

FETCHED = datetime(2026, 1, 1, tzinfo=UTC)
AMOUNTS = ("totalBalance", "available", "withdrawAvailable", "frozen", "valueUsdt")
COLUMNS = ("total", "available", "withdrawable", "frozen", "value_usdt")


def seed_body() -> dict[str, Any]:
    """The venue file's example (the seed page's own example body was not captured)."""
    return exactjson.loads((FIXTURES / "ltp_account_balance.json").read_text())


def response(body: object) -> list[RawResponse]:
    return [RawResponse(ltp.ACCOUNT_BALANCE, 200, body, FETCHED)]


def element(account_id: Any = 10001, account_type: str = "Spot", *assets: dict[str, Any]) -> dict[str, Any]:
    return {
        "accountId": account_id,
        "accountNote": "n",
        "venues": "BINANCE",
        "accountType": account_type,
        "totalUsdt": "1",
        "assetInfo": list(assets),
    }


def coin(
    currency: str = "USDT", network: str | None = None, amount: str = "1", **more: Any
) -> dict[str, Any]:
    return {**{name: amount for name in AMOUNTS}, "currency": currency, "network": network, **more}


def envelope(*elements: dict[str, Any]) -> dict[str, Any]:
    return {"code": 200000, "message": "Success", "data": list(elements)}


# --- signing -------------------------------------------------------------------------


# Self-computed vectors (shared/venues/ltp.md): LTP's docs and official SDKs (Python,
# Java, C++) show the recipe but publish no key/timestamp/signature triple, so these pin
# today's output; tests/sim/test_auth.py proves the signer against the simulator's own
# verifier, written from LTP's docs.


def test_signature_matches_the_documented_vector_without_params():
    assert ltp.canonical_params({}) == ""
    assert ltp.sign("test-secret", "", "1712345678") == (
        "674634d6fc1920380f4b8f209ca576e1bfb5acc346ef2dc47601d2742a1b5356"
    )


def test_signature_matches_the_documented_vector_with_params_signed_raw():
    params = ltp.canonical_params({"currency": "USDT", "accountId": "10001,10002"})
    assert params == "accountId=10001,10002&currency=USDT"  # sorted, comma not encoded
    assert ltp.sign("test-secret", params, "1712345678") == (
        "ef87730f0e5371d3bf914246b2814f035b26763ea288ee2acfda7ec602facf04"
    )


def test_request_is_sent_url_encoded_with_the_three_auth_headers_and_no_secret():
    request = ltp.build_request(
        "https://api.liquiditytech.com",
        {"currency": "USDT", "accountId": "10001,10002"},
        "k",
        "test-secret",
        "1712345678",
    )
    assert str(request.url) == (
        "https://api.liquiditytech.com/api/v1/asset/getAccountCurrencyInfo"
        "?accountId=10001%2C10002&currency=USDT"
    )
    assert request.headers["X-MBX-APIKEY"] == "k"
    assert request.headers["nonce"] == "1712345678"
    assert request.headers["signature"] == "ef87730f0e5371d3bf914246b2814f035b26763ea288ee2acfda7ec602facf04"
    assert "test-secret" not in str(request.url) + json.dumps(dict(request.headers))


def test_only_the_documented_filters_are_accepted():
    assert ltp.request_params({"accountId": " 10001,10002 ", "currency": ""}) == {"accountId": "10001,10002"}
    with pytest.raises(ConfigError, match=r"params: unknown ltp filter 'symbol'"):
        ltp.request_params({"symbol": "BTC"})
    with pytest.raises(ConfigError, match=r"params.currency: ltp takes one currency at a time"):
        ltp.request_params({"currency": "USDT,BTC"})


# --- the example body --------------------------------------------------------------------


def test_seed_example_normalizes_exactly():
    batch = ltp.normalize("ltp-main", response(seed_body()))
    assert [(a.external_id, a.exchange, a.note) for a in batch.accounts] == [
        ("10001", "BINANCE", "Your Note"),
        ("33333", "LTP", "Funding Account"),
    ]
    totals = {(r.account, r.account_type): r for r in batch.account_rows}
    assert list(totals) == [("10001", "Spot"), ("10001", "Margin-PM"), ("33333", "Funding")]
    assert totals["10001", "Spot"].equity == Decimal("15234.55")
    assert str(totals["10001", "Spot"].equity) == "15234.55"
    assert totals["10001", "Margin-PM"].equity == 0  # empty assetInfo: the sub-wallet is still recorded
    assert all(r.equity_currency == "USDT" and r.extra == {} for r in batch.account_rows)
    usdt, btc, funding = batch.balances
    assert (usdt.account, usdt.account_type, usdt.currency) == ("10001", "Spot", "USDT")
    assert (usdt.total, usdt.available, usdt.withdrawable, usdt.frozen, usdt.value_usdt) == (
        Decimal("10000.00"),
        Decimal("9500.00"),
        Decimal("9500.00"),
        Decimal("500.00"),
        Decimal("10000.00"),
    )
    assert str(usdt.total) == "10000.00" and usdt.extra == {"network": None}
    assert (btc.currency, btc.total, btc.frozen, btc.value_usdt) == (
        "BTC",
        Decimal("0.08"),
        Decimal(0),
        Decimal("5234.55"),
    )
    assert (funding.account, funding.account_type, funding.total) == ("33333", "Funding", Decimal("2500.00"))
    assert funding.extra == {"network": "ERC20"}
    assert batch.positions == ()


def test_an_empty_note_is_null_and_a_later_element_can_fill_it():
    body = envelope(element(7, "Spot"), element(7, "Funding"))
    body["data"][0].update(accountNote="", venues="")
    (account,) = ltp.normalize("l", response(body)).accounts
    assert (account.external_id, account.note, account.exchange) == ("7", "n", "BINANCE")
    body["data"][1].update(accountNote="", venues=None)
    (account,) = ltp.normalize("l", response(body)).accounts
    assert account.note is None and account.exchange is None


def test_an_account_id_sent_as_text_is_the_same_account():
    body = envelope(element(10001, "Spot"), element("10001", "Funding"))
    assert [a.external_id for a in ltp.normalize("l", response(body)).accounts] == ["10001"]


# --- one currency on several networks ---------------------------------------------------


def test_one_currency_on_several_networks_is_one_row_with_exact_sums_and_the_breakdown_in_extra():
    erc = coin("USDT", "ERC20", "12282.88002680674743639045")
    trc = coin("USDT", "TRC20", "0.00000000000000000000000000001", memo="x")
    body = envelope(element(33333, "Funding", erc, coin("BTC", "BTC"), trc))
    usdt, btc = ltp.normalize("l", response(body)).balances
    assert (usdt.currency, btc.currency) == ("USDT", "BTC")
    expected = Decimal("12282.88002680674743639045000000001")
    assert (usdt.total, usdt.available, usdt.withdrawable, usdt.frozen, usdt.value_usdt) == (expected,) * 5
    assert str(usdt.total) == "12282.88002680674743639045000000001"  # 34 digits: no float, no rounding
    assert usdt.extra == {"networks": [erc, trc]}  # each network as received, in payload order
    assert btc.extra == {"network": "BTC"}


def test_a_figure_missing_on_one_network_makes_the_sum_null_not_partial():
    erc, trc = coin("USDT", "ERC20", "5"), coin("USDT", "TRC20", "7")
    del trc["withdrawAvailable"]
    (usdt,) = ltp.normalize("l", response(envelope(element(1, "Funding", erc, trc)))).balances
    assert usdt.total == 12 and usdt.withdrawable is None


@pytest.mark.parametrize("network", ["ERC20", None])
def test_the_same_currency_twice_on_one_network_is_an_error_not_a_sum(network):
    body = envelope(element(1, "Funding", coin("USDT", network), coin("ETH"), coin("USDT", network)))
    with pytest.raises(
        NormalizeError,
        match=rf"ltp data\[0\]\.assetInfo\[2\]: USDT on network {network!r} repeats ltp data\[0\]\.assetInfo\[0\]",
    ):
        ltp.normalize("l", response(body))


def test_the_same_account_and_type_twice_is_an_error():
    body = envelope(element(1, "Spot"), element(2, "Spot"), element(1, "Spot"))
    with pytest.raises(NormalizeError, match=r"ltp data\[2\]: account 1 Spot repeats ltp data\[0\]"):
        ltp.normalize("l", response(body))


# --- malformed input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b["data"][0]["assetInfo"][1].update(available="x"), r"ltp data\[0\]\.assetInfo\[1\]\.available: expected a number, got 'x'"),
        (lambda b: b["data"][2].update(totalUsdt="2,500"), r"ltp data\[2\]\.totalUsdt: expected a number, got '2,500'"),
        (lambda b: b["data"][1].update(accountId="10001-b"), r"ltp data\[1\]\.accountId: expected an integer id, got '10001-b'"),
        (lambda b: b["data"][1].update(accountId=Decimal("10001.5")), r"ltp data\[1\]\.accountId: expected an integer id"),
        (lambda b: b["data"][0].pop("accountType"), r"ltp data\[0\]\.accountType: missing"),
        (lambda b: b["data"][2]["assetInfo"][0].pop("currency"), r"ltp data\[2\]\.assetInfo\[0\]\.currency: missing"),
        (lambda b: b["data"][2]["assetInfo"][0].update(network=5), r"ltp data\[2\]\.assetInfo\[0\]\.network: expected text or null"),
        (lambda b: b["data"].__setitem__(1, "oops"), r"ltp data\[1\]: expected an object, got str"),
        (lambda b: b["data"][2].update(assetInfo={}), r"ltp data\[2\]\.assetInfo: expected a list, got dict"),
        (lambda b: b.pop("data"), r"ltp\.data: missing"),
    ],
)  # fmt: skip
def test_a_malformed_payload_names_the_field_and_its_position(mutate, message):
    body = seed_body()
    mutate(body)
    with pytest.raises(NormalizeError, match=message):
        ltp.normalize("l", response(body))


# --- envelopes ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [200000, 200, "200000"])
def test_success_codes_pass(code):
    ltp.check_envelope(200, {**seed_body(), "code": code})


@pytest.mark.parametrize(
    ("status", "body", "message", "transient"),
    [
        (200, {"code": 2000, "message": "API verification failed", "data": None}, r"HTTP 200, code 2000: API verification failed \(check the key", False),
        (401, {"code": 2000, "message": "API verification failed"}, r"HTTP 401, code 2000: API verification failed", False),
        # 2002 "Invalid API authorization": LTP's arena docs (LiquidityTech/ltp-arena-docs, docs/03-advanced-api.md)
        (200, {"code": 2002, "message": "Invalid API authorization"}, r"code 2002: Invalid API authorization \(check the key and secret, that it is a V2 key, and the clock\)$", False),
        (200, {"code": 2003, "message": "Permission denied"}, r"code 2003: Permission denied \(use an LTP primary-user or sub-user key", False),
        (200, {"code": 429, "message": "Too Many Request", "data": None}, r"code 429: Too Many Request", True),
        (200, {"code": 400001, "data": None}, r"code 400001: no message", False),
        (200, [], r"expected a JSON object, got list", False),
    ],
)  # fmt: skip
def test_error_envelopes_become_venue_errors(status, body, message, transient):
    with pytest.raises(VenueError, match=message) as err:
        ltp.check_envelope(status, body)
    assert err.value.transient is transient


# --- properties ------------------------------------------------------------------------------

# Other engineers' tests share these 2 cores: no property may fail for being slow.
untimed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAPPED_ASSET = {"currency", "network", *AMOUNTS}
MAPPED_ACCOUNT = {"accountId", "accountNote", "venues", "accountType", "totalUsdt", "assetInfo"}


@st.composite
def wire_decimals(draw: st.DrawFn) -> tuple[Decimal, str, bool]:
    """(value, its text on the wire, sent as a bare JSON number?): up to 40 digits, exponents
    like 1E-8, negatives; as a string in plain or exponent form, or as a JSON number."""
    digits = draw(st.text("0123456789", min_size=1, max_size=40))
    value = Decimal(f"{draw(st.sampled_from(['', '-']))}{digits}E{draw(st.integers(-30, 30))}")
    text = draw(st.sampled_from([str(value), format(value, "f"), format(value, "E")]))
    return value, text, draw(st.booleans())


def body_with(fields: dict[str, tuple[Decimal, str, bool]], account_field: tuple[Decimal, str, bool]) -> Any:
    """An envelope whose one asset carries `fields`; bare JSON numbers are spliced in as text."""
    numbers: dict[str, str] = {}

    def wire(key: str, spec: tuple[Decimal, str, bool]) -> str:
        _, text, bare = spec
        if not bare:
            return text
        numbers[f"@{key}@"] = text
        return f"@{key}@"

    item = {"currency": "USDT", "network": None, **{k: wire(k, v) for k, v in fields.items()}}
    data = element(10001, "Spot", item)
    data["totalUsdt"] = wire("totalUsdt", account_field)
    text = json.dumps(envelope(data))
    for marker, number in numbers.items():
        text = text.replace(f'"{marker}"', number)
    return exactjson.loads(text)


@untimed
@given(st.fixed_dictionaries({k: wire_decimals() for k in AMOUNTS}), wire_decimals())
def test_any_decimal_the_venue_sends_is_kept_exactly(fields, total_usdt):
    batch = ltp.normalize("l", response(body_with(fields, total_usdt)))
    (row,) = batch.balances
    got = dict(
        zip(AMOUNTS, (row.total, row.available, row.withdrawable, row.frozen, row.value_usdt), strict=True)
    )
    assert got == {name: value for name, (value, _, _) in fields.items()}
    assert batch.account_rows[0].equity == total_usdt[0]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.fixed_dictionaries({k: wire_decimals() for k in AMOUNTS}), wire_decimals())
def test_any_decimal_the_venue_sends_round_trips_exactly_through_postgresql(engine, fields, total_usdt):
    responses = response(body_with(fields, total_usdt))
    batch = ltp.normalize("prop", responses)
    with engine.begin() as conn:
        load_slot(
            conn,
            source="prop",
            venue="ltp",
            slot=SLOT,
            batch=batch,
            responses=responses,
            started_at=FETCHED,
            attempts=1,
        )
    (stored,) = rows(engine, f"SELECT {', '.join(COLUMNS)} FROM balance_snapshots")
    assert dict(zip(AMOUNTS, stored, strict=True)) == {k: v[0] for k, v in fields.items()}
    assert rows(engine, "SELECT equity FROM account_snapshots") == [(total_usdt[0],)]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | wire_decimals().map(lambda spec: spec[0]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip
unknown_fields = st.dictionaries(
    st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=12).filter(
        lambda k: k not in MAPPED_ASSET | MAPPED_ACCOUNT
    ),
    json_values,
    max_size=4,
)


@untimed
@given(unknown_fields, unknown_fields)
def test_unknown_fields_land_in_extra_unchanged(asset_extra, account_extra):
    item = coin("USDT", "ERC20", **asset_extra)
    data = {**element(1, "Spot", item), **account_extra}
    batch = ltp.normalize("l", response(envelope(data)))
    assert batch.balances[0].extra == {"network": "ERC20", **asset_extra}
    assert batch.account_rows[0].extra == account_extra


@untimed
@given(
    st.dictionaries(
        st.sampled_from([*AMOUNTS, "totalUsdt", "accountNote", "venues", "network"]),
        st.sampled_from(["absent", "", None]),
    )
)
def test_missing_or_empty_optional_fields_give_null_never_zero(blanks):
    item = coin("USDT", "ERC20", "3")
    data = element(1, "Spot", item)
    for name, how in blanks.items():
        target = data if name in MAPPED_ACCOUNT else item
        if how == "absent":
            target.pop(name)
        else:
            target[name] = how
    batch = ltp.normalize("l", response(envelope(data)))
    (row,), (account_row,), (account,) = batch.balances, batch.account_rows, batch.accounts
    got = dict(
        zip(AMOUNTS, (row.total, row.available, row.withdrawable, row.frozen, row.value_usdt), strict=True)
    )
    assert got == {k: None if k in blanks else Decimal(3) for k in AMOUNTS}
    assert account_row.equity == (None if "totalUsdt" in blanks else Decimal(1))
    assert account.note == (None if "accountNote" in blanks else "n")
    assert account.exchange == (None if "venues" in blanks else "BINANCE")


def _is_number(text: str) -> bool:
    try:
        return Decimal(text.strip()).is_finite()
    except InvalidOperation:
        return False


not_numbers = (
    st.text(min_size=1, max_size=6).filter(lambda t: not _is_number(t))
    | st.booleans()
    | st.lists(st.integers(), max_size=2)
    | st.just({})
)


@untimed
@given(st.integers(1, 3), st.integers(1, 3), st.data(), not_numbers)
def test_a_malformed_number_anywhere_names_venue_field_and_position(n_accounts, n_assets, data, bad):
    elements = [
        element(100 + i, "Spot", *(coin(f"C{j}") for j in range(n_assets))) for i in range(n_accounts)
    ]
    i = data.draw(st.integers(0, n_accounts - 1))
    j = data.draw(st.integers(0, n_assets - 1))
    name = data.draw(st.sampled_from(AMOUNTS))
    elements[i]["assetInfo"][j][name] = bad
    with pytest.raises(NormalizeError) as err:
        ltp.normalize("l", response(envelope(*elements)))
    assert str(err.value).startswith(f"ltp data[{i}].assetInfo[{j}].{name}: expected a")


# --- through the pipeline, against the simulator over HTTP ---------------------------------------


def desk(sim: LtpSimulator, key: str, secret: str) -> None:
    """Three trade accounts behind one key: several sub-wallets, one empty, USDT on two networks."""
    sim.add_user(key, secret)
    sim.add_wallet(
        key,
        10001,
        "Spot",
        venue="BINANCE",
        note="A",
        assets=[asset("USDT", "1000.5"), asset("BTC", "0.5", "64000")],
    )
    sim.add_wallet(key, 10001, "Margin-PM", venue="BINANCE", note="A")
    sim.add_wallet(
        key, 10002, "Unified", venue="BYBIT", assets=[asset("USDT", "250.125"), asset("ETH", "2", "3100")]
    )
    sim.add_wallet(key, 33333, "Funding", venue="LTP", note="Funding Account", assets=[
        asset("USDT", "2500.00", network="ERC20"), asset("USDT", "1400.50", network="TRC20")])  # fmt: skip


@pytest.fixture
def sim() -> LtpSimulator:
    """`seed-key` serves the example body verbatim, `desk-key` a live desk."""
    sim = LtpSimulator(seed=3)
    sim.add_user("seed-key", "seed-secret", body=seed_body())
    desk(sim, "desk-key", "desk-secret")
    return sim


@pytest.fixture
def url(sim: LtpSimulator):
    """The simulator on loopback: real HTTP, so URL encoding and timeouts are real."""
    with served(sim) as server:
        yield server.url


def entry(url: str, name: str, key: str, secret: str, **more: Any) -> dict[str, Any]:
    return source_entry(name, "ltp", url, key, secret, **more)


def test_seed_example_loads_exactly(engine, url):
    result = run(engine, settings_for(entry(url, "ltp-seed", "seed-key", "seed-secret")))["ltp-seed"]
    assert result.status == "ok", result.error
    assert rows(engine, "SELECT external_id, exchange, note, venue FROM accounts ORDER BY external_id") == [
        ("10001", "BINANCE", "Your Note", "ltp"),
        ("33333", "LTP", "Funding Account", "ltp"),
    ]
    assert rows(engine, "SELECT external_id, account_type, equity::text, equity_currency FROM account_equity ORDER BY 1, 2") == [
        ("10001", "Margin-PM", "0", "USDT"),
        ("10001", "Spot", "15234.55", "USDT"),
        ("33333", "Funding", "2500.00", "USDT"),
    ]  # fmt: skip
    assert rows(
        engine,
        """SELECT a.external_id, b.account_type, b.currency, b.total::text, b.available::text,
                  b.withdrawable::text, b.frozen::text, b.value_usdt::text, b.extra
           FROM balance_snapshots b JOIN accounts a ON a.id = b.account_id ORDER BY 1, 2, 3""",
    ) == [
        ("10001", "Spot", "BTC", "0.08", "0.08", "0.08", "0", "5234.55", {"network": None}),
        ("10001", "Spot", "USDT", "10000.00", "9500.00", "9500.00", "500.00", "10000.00", {"network": None}),
        ("33333", "Funding", "USDT", "2500.00", "2500.00", "2500.00", "0", "2500.00", {"network": "ERC20"}),
    ]
    assert rows(engine, "SELECT body->'data'->0->>'totalUsdt' FROM raw_payloads") == [("15234.55",)]


def test_rerunning_a_slot_rewrites_no_row(engine, sim, url):
    funding = envelope(element(33333, "Funding", coin("USDT", "ERC20", "1.5"), coin("USDT", "TRC20", "2.25")))
    sim.add_user("fixed-key", "fixed-secret", body=funding)
    settings = settings_for(
        entry(url, "ltp-seed", "seed-key", "seed-secret"),
        entry(url, "ltp-fixed", "fixed-key", "fixed-secret"),
    )
    first = run(engine, settings)
    before = row_versions(engine)
    second = run(engine, settings)
    assert all(r.status == "ok" for r in first.values())
    assert len(before) == 3 + 3 + 1 + 1  # seed balances and account rows, then the merged networks' two
    assert row_versions(engine) == before
    assert all(sum(r.written.values()) == 0 for r in second.values())
    assert rows(engine, "SELECT total FROM balance_snapshots WHERE extra ? 'networks'") == [
        (Decimal("3.75"),)
    ]


def test_wrong_credentials_are_one_auth_error_line_and_nothing_is_written(engine, sim, url):
    settings = settings_for(
        entry(url, "ltp-bad", "desk-key", "not-the-secret"), entry(url, "ltp-seed", "seed-key", "seed-secret")
    )
    results = run(engine, settings)
    bad = results["ltp-bad"]
    assert bad.status == "error" and bad.attempts == 1  # terminal: not retried
    assert bad.error == (
        "ltp-bad: ltp GET /api/v1/asset/getAccountCurrencyInfo: HTTP 200, code 2000: "
        "API verification failed (check the key and secret, that it is a V2 key, and the clock)"
    )
    assert "not-the-secret" not in bad.error and "\n" not in bad.error
    assert results["ltp-seed"].status == "ok"
    assert rows(engine, "SELECT count(*) FROM accounts WHERE source = 'ltp-bad'") == [(0,)]
    assert rows(engine, "SELECT status, error FROM ingestion_runs WHERE source = 'ltp-bad'") == [
        ("error", bad.error)
    ]
    assert count(engine, "balance_snapshots") == 3  # the seed source's only
    assert sim.rejected == 1


def test_filters_are_signed_raw_and_sent_url_encoded(engine, sim, url):
    params = {"accountId": "10001,10002", "currency": "USDT"}
    result = run(engine, settings_for(entry(url, "ltp-f", "desk-key", "desk-secret", params=params)))["ltp-f"]
    assert result.status == "ok", result.error  # the simulator checked the signature over the raw comma
    assert rows(engine, "SELECT external_id FROM accounts ORDER BY 1") == [("10001",), ("10002",)]
    assert rows(engine, "SELECT DISTINCT currency FROM balance_snapshots") == [("USDT",)]
    assert count(engine, "account_snapshots") == 3  # Spot, Margin-PM, Unified
    assert sim.rejected == 0


def test_a_key_with_several_accounts_loads_them_all_and_balances_move_between_slots(engine, url):
    settings = settings_for(entry(url, "ltp-desk", "desk-key", "desk-secret"))
    assert run(engine, settings)["ltp-desk"].status == "ok"
    assert run(engine, settings, SLOT + timedelta(minutes=1))["ltp-desk"].status == "ok"
    assert rows(engine, "SELECT count(*), count(DISTINCT note) FROM accounts") == [
        (3, 2)
    ]  # 10002 has no note
    (empty,) = rows(
        engine,
        "SELECT equity FROM account_snapshots WHERE account_type = 'Margin-PM' AND snapshot_ts = :s",
        s=SLOT,
    )
    assert empty == (Decimal(0),)
    funding = rows(
        engine,
        """SELECT snapshot_ts, total, extra FROM balance_snapshots
           WHERE account_type = 'Funding' ORDER BY snapshot_ts""",
    )
    assert len(funding) == 2
    for _, total, extra in funding:  # one row for USDT on ERC20 + TRC20, the exact sum of both
        assert [n["network"] for n in extra["networks"]] == ["ERC20", "TRC20"]
        assert total == sum(Decimal(n["totalBalance"]) for n in extra["networks"])
    assert funding[0][1] != funding[1][1]


def test_rate_limited_answers_are_retried(engine, sim, url):
    sim.fail_next(
        Fault(429, "slow down", {"Retry-After": "0"}),
        Fault(200, '{"code":429,"message":"Too Many Request","data":null}', content_type="application/json"),
    )
    result = run(engine, settings_for(entry(url, "ltp-seed", "seed-key", "seed-secret")))["ltp-seed"]
    assert result.status == "ok" and result.attempts == 3


def test_the_demo_ltp_sources_load_several_accounts_each(engine):
    demo_sim, entries = demo_ltp()
    with served(demo_sim) as server:
        results = run(engine, settings_for(*({**e, "base_url": server.url} for e in entries)))
    assert len(results) >= 2 and all(r.status == "ok" for r in results.values()), results
    per_source = dict(rows(engine, "SELECT source, count(*) FROM accounts GROUP BY source"))
    assert len(per_source) == len(results) and min(per_source.values()) >= 3
    # one demo source filters by accountId: the key's fourth account is not polled
    assert rows(engine, "SELECT count(*) FROM accounts WHERE external_id = '20009'") == [(0,)]
