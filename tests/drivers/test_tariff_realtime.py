"""Realtime tariffs: an ISO-style price feed polled over HTTP (JSON or CSV) on loopback, with
units, adders, staleness and the fallback tariff."""

from __future__ import annotations

import datetime as dt
import logging
import time

import pytest

from curtaild.controller.config import ConfigError, parse_config
from curtaild.drivers.httpfeed import FeedError
from curtaild.drivers.tariff import build_tariff_source
from tests.drivers.fakeapi import Clock, FakeApi, Reply, js, text

FAST = {"backoff_s": 0.05, "backoff_max_s": 0.1, "attempts": 1}


def tariff(table: dict, clock: Clock | None = None):
    cfg = parse_config({
        "fleet": {"hosts": ["127.66.0.1"]},
        "hashprice": {"source": "fixed", "usd_per_th_day": 0.05},
        "tariff": {"kind": "realtime", **FAST, **table},
        "policy": {"name": "margin"},
    }).tariff
    return build_tariff_source(cfg, clock=clock or time.time)


def iso(ts: float, tz: dt.tzinfo = dt.UTC) -> str:
    return dt.datetime.fromtimestamp(ts, tz).isoformat()


def spp_json(now: float) -> dict:
    """A settlement-point price feed: 15-min intervals, several points, USD/MWh."""
    start = now - now % 900
    rows = []
    for k, (houston, north) in enumerate([(21.4, 20.9), (25.1, 24.0), (31.7, 29.5)]):
        t = start - (2 - k) * 900
        rows += [{"interval_start": iso(t), "settlement_point": "HB_HOUSTON", "lmp": houston},
                 {"interval_start": iso(t), "settlement_point": "HB_NORTH", "lmp": north}]
    return {"market": "RTM", "data": rows}


JSON_FEED = {"format": "json", "rows": "data", "field": "lmp", "time_field": "interval_start",
             "match": {"settlement_point": "HB_HOUSTON"}, "unit": "usd_per_mwh"}


async def test_json_feed_with_rows_match_and_adders(fake_api: FakeApi, clock: Clock) -> None:
    fake_api.routes["/rtm/spp"] = js(spp_json(clock.now))
    src = tariff({**JSON_FEED, "url": f"{fake_api.url}/rtm/spp",
                  "adders_usd_per_kwh": {"tdsp": 0.0125, "retail": 0.003}}, clock)
    q = await src.fetch(clock.now)
    # newest HB_HOUSTON interval: 31.70 USD/MWh = 0.0317 USD/kWh; + 0.0125 + 0.003 = 0.0472
    assert q.energy_usd_per_kwh == pytest.approx(0.0317)
    assert q.usd_per_kwh == pytest.approx(0.0472)
    assert q.source == "realtime"
    # as of the interval's start, not the fetch
    assert clock.now - q.obtained_at == pytest.approx(clock.now % 900, abs=1)
    assert q.detail["feed_fresh"] is True and q.detail["error"] is None
    # no forward curve: the price now is held over the next 24 h (persistence)
    assert len(q.forecast) >= 24
    assert all(p == pytest.approx(0.0472) for _, p in q.forecast)


async def test_json_single_value_and_paths(fake_api: FakeApi, clock: Clock) -> None:
    fake_api.routes["/price"] = js({"result": {"prices": [{"usd_per_kwh": 0.051},
                                                          {"usd_per_kwh": 0.043}]}})
    src = tariff({"url": f"{fake_api.url}/price", "field": "result.prices[-1].usd_per_kwh",
                  "unit": "usd_per_kwh"}, clock)
    q = await src.fetch(clock.now)
    assert q.usd_per_kwh == 0.043
    assert q.obtained_at == pytest.approx(clock.now)  # no timestamp: as of the fetch


ERCOT_CSV = """DeliveryDate,DeliveryHour,DeliveryInterval,SettlementPointName,SettlementPointType,SettlementPointPrice,DSTFlag
07/15/2025,17,1,HB_HOUSTON,HU,25.10,N
07/15/2025,17,1,HB_NORTH,HU,24.00,N
07/15/2025,17,2,HB_HOUSTON,HU,-3.25,N
07/15/2025,17,2,HB_NORTH,HU,-4.10,N
"""  # noqa: E501 - the feed's own header line


async def test_csv_feed_last_matching_row(fake_api: FakeApi, clock: Clock) -> None:
    fake_api.routes["/spp.csv"] = text(ERCOT_CSV, content_type="text/csv")
    src = tariff({"url": f"{fake_api.url}/spp.csv", "format": "csv",
                  "field": "SettlementPointPrice",
                  "match": {"SettlementPointName": "HB_HOUSTON"}}, clock)
    q = await src.fetch(clock.now)
    assert q.usd_per_kwh == pytest.approx(-0.00325)  # negative prices happen: run!


async def test_csv_forward_curve_is_the_forecast(fake_api: FakeApi, clock: Clock) -> None:
    chicago = dt.timezone(dt.timedelta(hours=-5))
    hour0 = clock.now - clock.now % 3600
    lines = ["interval_start,price_usd_per_mwh"]
    for h in range(-1, 30):
        lines.append(f"{iso(hour0 + h * 3600, chicago)},{20 + h}")
    fake_api.routes["/dam.csv"] = text("\n".join(lines) + "\n", content_type="text/csv")
    src = tariff({"url": f"{fake_api.url}/dam.csv", "format": "csv",
                  "field": "price_usd_per_mwh", "time_field": "interval_start"}, clock)
    q = await src.fetch(clock.now)
    assert q.usd_per_kwh == pytest.approx(0.020)  # the hour in progress
    prices = dict(q.forecast)
    assert prices[hour0 + 3600] == pytest.approx(0.021)
    assert prices[hour0 + 5 * 3600] == pytest.approx(0.025)
    assert q.obtained_at == pytest.approx(clock.now)  # a curve is as fresh as its fetch


async def test_stale_feed_uses_the_fallback_price(fake_api: FakeApi, clock: Clock) -> None:
    doc = spp_json(clock.now - 7200)  # the feed stopped two hours ago
    fake_api.routes["/rtm/spp"] = js(doc)
    src = tariff({**JSON_FEED, "url": f"{fake_api.url}/rtm/spp", "max_age_s": 900,
                  "fallback_usd_per_kwh": 0.065, "adders_usd_per_kwh": {"tdsp": 0.01}}, clock)
    q = await src.fetch(clock.now)
    assert q.source == "realtime-fallback"
    assert q.usd_per_kwh == pytest.approx(0.075)  # fallback energy + adders
    assert q.obtained_at == clock.now  # a contract price: fresh, the loop keeps deciding
    assert q.detail["fallback"] == "flat"
    assert "old (max_age_s 900)" in q.detail["error"]
    # the feed comes back
    fake_api.routes["/rtm/spp"] = js(spp_json(clock.now + 60))
    clock.advance(60)
    q = await src.fetch(clock.now)
    assert q.source == "realtime" and q.usd_per_kwh == pytest.approx(0.0417)


@pytest.mark.parametrize("reply", [
    Reply(500, "internal error"),
    text("<html><body>maintenance</body></html>", content_type="text/html"),
    js({"data": [{"interval_start": "yesterday", "settlement_point": "HB_HOUSTON",
                  "lmp": 1.0}]}),
    js({"data": [{"interval_start": "2025-01-01T00:00:00Z", "settlement_point": "HB_NORTH",
                  "lmp": 1.0}]}),
    Reply(hang=True),
])
async def test_broken_feed_uses_the_fallback_tariff(fake_api: FakeApi, clock: Clock,
                                                    reply: Reply) -> None:
    fake_api.routes["/rtm/spp"] = reply
    src = tariff({**JSON_FEED, "url": f"{fake_api.url}/rtm/spp", "timeout_s": 0.5,
                  "timezone": "America/Chicago",
                  "fallback": {"kind": "tou", "timezone": "America/Chicago",
                               "usd_per_kwh": 0.04,
                               "periods": [{"name": "peak", "start": "14:00", "end": "20:00",
                                            "usd_per_kwh": 0.11}]}}, clock)
    now = dt.datetime(2025, 7, 15, 15, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    q = await src.fetch(now.timestamp())
    assert q.source == "realtime-fallback"
    assert q.usd_per_kwh == 0.11 and q.detail["period"] == "peak"
    assert q.detail["fallback"] == "tou" and q.detail["error"]
    prices = dict(q.forecast)
    assert prices[now.timestamp() + 5 * 3600] == 0.04  # 20:00 local: off-peak


async def test_no_fallback_raises_so_the_market_keeps_the_last_quote(
        fake_api: FakeApi, clock: Clock) -> None:
    fake_api.routes["/rtm/spp"] = Reply(503, "down")
    src = tariff({**JSON_FEED, "url": f"{fake_api.url}/rtm/spp"}, clock)
    with pytest.raises(FeedError, match="HTTP 503"):
        await src.fetch(clock.now)


async def test_refresh_and_429(fake_api: FakeApi, clock: Clock) -> None:
    fake_api.routes["/rtm/spp"] = [js(spp_json(clock.now)),
                                   js({"error": "throttled"}, 429, Retry_After="300"),
                                   js(spp_json(clock.now + 400))]
    src = tariff({**JSON_FEED, "url": f"{fake_api.url}/rtm/spp", "refresh_s": 60,
                  "max_age_s": 1800, "deadline_s": 5, "fallback_usd_per_kwh": 0.05}, clock)
    await src.fetch(clock.now)
    for _ in range(5):  # 10-s ticks inside refresh_s: cached
        clock.advance(10)
        await src.fetch(clock.now)
    assert fake_api.hits["/rtm/spp"] == 1
    clock.advance(10)
    q = await src.fetch(clock.now)  # 429: keeps the (still fresh) value
    assert q.source == "realtime" and "429" in q.detail["error"]
    for _ in range(28):  # Retry-After 300 s: nothing sent meanwhile
        clock.advance(10)
        await src.fetch(clock.now)
    assert fake_api.hits["/rtm/spp"] == 2
    clock.advance(30)
    q = await src.fetch(clock.now)
    assert fake_api.hits["/rtm/spp"] == 3 and q.detail["error"] is None


async def test_units_and_implausible_prices(fake_api: FakeApi, clock: Clock) -> None:
    fake_api.routes["/p"] = js({"price": 5000})  # the ERCOT offer cap, USD/MWh
    q = await tariff({"url": f"{fake_api.url}/p", "field": "price"}, clock).fetch(clock.now)
    assert q.usd_per_kwh == 5.0
    fake_api.routes["/p"] = js({"price": 250})  # 250 USD/kWh: a unit mistake
    with pytest.raises(FeedError, match="implausible"):
        await tariff({"url": f"{fake_api.url}/p", "field": "price",
                      "unit": "usd_per_kwh"}, clock).fetch(clock.now)


async def test_csv_missing_column_names_the_columns(fake_api: FakeApi, clock: Clock) -> None:
    fake_api.routes["/spp.csv"] = text(ERCOT_CSV, content_type="text/csv")
    src = tariff({"url": f"{fake_api.url}/spp.csv", "format": "csv", "field": "Price"}, clock)
    with pytest.raises(FeedError, match=r"no column 'Price'.*SettlementPointPrice"):
        await src.fetch(clock.now)


async def test_header_secrets_are_not_shown(fake_api: FakeApi, clock: Clock,
                                            caplog: pytest.LogCaptureFixture) -> None:
    secret = "ercot-subscription-0123456789abcdef"
    caplog.set_level(logging.DEBUG)
    seen = {}

    def route(s):
        seen["key"] = s.headers.get("ocp-apim-subscription-key")
        return text(f"bad key {secret}", content_type="text/html")

    fake_api.routes["/p"] = route
    src = tariff({"url": f"{fake_api.url}/p", "field": "price",
                  "headers": {"Ocp-Apim-Subscription-Key": secret},
                  "fallback_usd_per_kwh": 0.05}, clock)
    q = await src.fetch(clock.now)
    assert seen["key"] == secret
    assert q.source == "realtime-fallback" and secret not in str(q)
    assert secret not in repr(src) and secret not in caplog.text


@pytest.mark.parametrize(("table", "expected"), [
    ({"field": "p"}, "tariff.url: Field required"),
    ({"url": "ftp://x/y", "field": "p"}, "tariff.url: "),
    ({"url": "http://x/y", "field": "p", "format": "xml"}, "tariff.format: "),
    ({"url": "http://x/y", "field": "p", "unit": "eur_per_mwh"}, "tariff.unit: "),
    ({"url": "http://x/y", "field": "p", "fallback_usd_per_kwh": 0.05,
      "fallback": {"kind": "flat", "usd_per_kwh": 0.05}}, "tariff.fallback: "),
    ({"url": "http://x/y", "field": "p", "fallback": {"kind": "tou", "usd_per_kwh": 0.05}},
     "tariff.fallback.timezone: Field required"),
    ({"url": "http://x/y", "field": "p", "fallback": {"kind": "realtime"}}, "tariff.fallback: "),
    ({"url": "http://x/y", "field": "p", "refresh_s": 600, "max_age_s": 300},
     "tariff.max_age_s: must be at least refresh_s"),
    ({"url": "http://x/y", "field": "p", "format": "csv", "rows": "data"}, "tariff.rows: "),
    ({"url": "http://x/y", "feild": "p"}, "tariff.feild: Extra inputs"),
])
def test_config_errors_name_the_key(table: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        tariff(table)
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


async def test_token_in_the_url_is_not_logged(fake_api: FakeApi, clock: Clock,
                                              caplog: pytest.LogCaptureFixture) -> None:
    token = "tok_9f8e7d6c5b4a39281706"
    caplog.set_level(logging.DEBUG)
    fake_api.routes["/p"] = js({"price": 30.0})
    src = tariff({"url": f"{fake_api.url}/p?node=HB_HOUSTON&token={token}",
                  "field": "price"}, clock)
    q = await src.fetch(clock.now)
    assert q.usd_per_kwh == 0.03
    assert fake_api.seen[0].query["token"] == [token]
    assert "HTTP Request: GET" in caplog.text  # httpx's own INFO line, scrubbed
    assert token not in caplog.text and token not in str(q) and token not in repr(src)
