"""Luxor's Hashrate Index REST API on loopback, and the rule that its key is never shown."""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from curtaild.controller.config import ConfigError, parse_config
from curtaild.drivers.hashprice import build_hashprice_source
from curtaild.drivers.hashprice_config import HashrateIndexSource
from curtaild.drivers.httpfeed import StaleSource
from tests.drivers.fakeapi import Clock, FakeApi, Reply, Seen, js, text

KEY = "hi.5f3c0ffee0ddba11cafe1234deadbeef"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def current(price_usd: float, price_btc: float, at: float | None = None) -> Reply:
    """GET /hashprice/current?hashunit=THS, as documented (data.priceBTC/priceUSD)."""
    return js({
        "$schema": "https://api.hashrateindex.com/v1/hashrateindex/schemas/"
                   "CurrentHashPriceData.json",
        "data": {"priceBTC": price_btc, "priceUSD": price_usd,
                 "timestamp": iso(at if at is not None else time.time())},
    })


def guarded(reply: Reply) -> callable:
    """Answer only with the right key in X-Hi-Api-Key, like the real API (401 otherwise)."""

    def route(seen: Seen) -> Reply:
        if seen.headers.get("x-hi-api-key") != KEY:
            return js({"message": "Unauthorized"}, 401)
        return reply

    return route


def source(api: FakeApi, clock: Clock | None = None, **kw):
    cfg = HashrateIndexSource(base_url=f"{api.url}/v1/hashrateindex",
                              **{"api_key": KEY, "backoff_s": 0.05, "backoff_max_s": 0.1, **kw})
    return build_hashprice_source(cfg, clock=clock or time.time)


async def test_current_hashprice(fake_api: FakeApi) -> None:
    fake_api.routes["/v1/hashrateindex/hashprice/current"] = guarded(
        current(0.0512, 4.875e-7, at=time.time() - 60))
    q = await source(fake_api).fetch()
    assert q.usd_per_th_day == 0.0512
    assert q.source == "hashrateindex"
    assert q.network["hashprice_btc_per_th_day"] == 4.875e-7
    assert q.network["btc_price_usd"] == pytest.approx(0.0512 / 4.875e-7, abs=0.01)
    assert time.time() - q.obtained_at == pytest.approx(60, abs=5)  # the data's timestamp
    (seen,) = fake_api.seen
    assert seen.query == {"hashunit": ["THS"]}
    assert seen.headers["x-hi-api-key"] == KEY  # in a header, never in the URL
    assert KEY not in seen.path


async def test_series_endpoint_takes_the_newest_point(fake_api: FakeApi) -> None:
    now = time.time()
    fake_api.routes["/v1/hashrateindex/hashprice"] = guarded(js({"data": [
        {"price": 0.0490, "timestamp": iso(now - 600)},
        {"price": 0.0501, "timestamp": iso(now - 60)},
        {"price": 0.0495, "timestamp": iso(now - 300)},
    ]}))
    q = await source(fake_api, endpoint="series").fetch()
    assert q.usd_per_th_day == 0.0501
    (seen,) = fake_api.seen
    assert seen.query == {"span": ["1D"], "bucket": ["5m"], "currency": ["USD"],
                          "hashunit": ["THS"]}


async def test_implausible_unit_is_rejected(fake_api: FakeApi) -> None:
    # priceUSD per PH/s per day (hashunit=PHS by mistake) would be ~50, not ~0.05
    fake_api.routes["/v1/hashrateindex/hashprice/current"] = current(51.2, 4.875e-4)
    with pytest.raises(StaleSource, match="implausible"):
        await source(fake_api).fetch()


async def test_rate_limit_burst_then_429(fake_api: FakeApi, clock: Clock) -> None:
    fake_api.routes["/v1/hashrateindex/hashprice/current"] = [
        current(0.05, 5e-7), js({"message": "Too Many Requests"}, 429, Retry_After="15"),
        current(0.052, 5.1e-7)]
    src = source(fake_api, clock, refresh_s=15, max_age_s=600, deadline_s=5)
    assert (await src.fetch()).usd_per_th_day == 0.05
    clock.advance(15)
    q = await src.fetch()  # 429: the cached value is still fresh and is kept
    assert q.usd_per_th_day == 0.05 and "429" in q.sources[0]["error"]
    clock.advance(10)  # Retry-After (and the failure backoff) not yet over: nothing sent
    await src.fetch()
    assert fake_api.hits["/v1/hashrateindex/hashprice/current"] == 2
    clock.advance(10)
    q = await src.fetch()
    assert q.usd_per_th_day == 0.052
    assert fake_api.hits["/v1/hashrateindex/hashprice/current"] == 3


# ------------------------------------------------------------------- the key stays secret
def _everything_said(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.getMessage()} {r.args} {r.exc_text}" for r in caplog.records)


async def test_key_never_logged_or_shown(fake_api: FakeApi,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # httpx/httpcore debug logs included
    path = "/v1/hashrateindex/hashprice/current"
    src = source(fake_api, attempts=2)
    # 1. a body that echoes the key back and does not parse
    fake_api.routes[path] = text(f"invalid key {KEY} <html>", content_type="text/html")
    with pytest.raises(StaleSource) as info:
        await src.fetch()
    assert KEY not in str(info.value) and "***" in str(info.value)
    # 2. rejected key (401), 3. server errors with the key in the body
    for reply in (js({"message": f"Unauthorized key {KEY}"}, 401),
                  Reply(500, f"internal error for {KEY}")):
        src = source(fake_api, attempts=2)
        fake_api.routes[path] = reply
        with pytest.raises(StaleSource) as info:
            await src.fetch()
        assert KEY not in str(info.value)
        assert KEY not in str(src.detail())
    assert KEY not in repr(src) and KEY not in repr(src.cache) and KEY not in repr(src.http)
    assert KEY not in repr(src.cfg) and KEY not in str(src.cfg.model_dump())
    assert caplog.records, "failures are logged"
    assert KEY not in _everything_said(caplog)


def test_key_not_in_config_repr_or_dump() -> None:
    cfg = parse_config({
        "fleet": {"hosts": ["127.66.0.1"]},
        "hashprice": {"source": "mempool", "fallbacks": [
            {"source": "hashrateindex", "api_key": KEY}]},
        "tariff": {"kind": "flat", "usd_per_kwh": 0.06},
        "policy": {"name": "margin"},
    })
    for shown in (repr(cfg), str(cfg), cfg.model_dump_json(), str(cfg.model_dump())):
        assert KEY not in shown


def test_key_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from curtaild.drivers.hashprice_config import resolve_hashrateindex_key

    monkeypatch.delenv("HASHRATEINDEX_API_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    base = {"fleet": {"hosts": ["127.66.0.1"]}, "tariff": {"kind": "flat", "usd_per_kwh": 0.06},
            "policy": {"name": "margin"}}
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "hashprice": {"source": "hashrateindex"}})
    assert info.value.problems[0].startswith("hashprice.api_key: no API key")
    # systemd credential (LoadCredential=hashrateindex-api-key:...)
    (tmp_path / "hashrateindex-api-key").write_text(KEY + "-cred\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = parse_config({**base, "hashprice": {"source": "hashrateindex"}})
    assert resolve_hashrateindex_key(cfg.hashprice) == KEY + "-cred"
    # the environment wins over the credential, the config over both
    monkeypatch.setenv("HASHRATEINDEX_API_KEY", KEY + "-env")
    assert resolve_hashrateindex_key(cfg.hashprice) == KEY + "-env"
    cfg = parse_config({**base, "hashprice": {"source": "hashrateindex", "api_key": KEY}})
    assert resolve_hashrateindex_key(cfg.hashprice) == KEY


async def test_key_from_environment_is_sent(fake_api: FakeApi,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HASHRATEINDEX_API_KEY", KEY)
    fake_api.routes["/v1/hashrateindex/hashprice/current"] = guarded(current(0.05, 5e-7))
    cfg = HashrateIndexSource(base_url=f"{fake_api.url}/v1/hashrateindex")
    q = await build_hashprice_source(cfg).fetch()
    assert q.usd_per_th_day == 0.05


async def test_redirects_are_not_followed_with_the_key(fake_api: FakeApi) -> None:
    fake_api.routes["/v1/hashrateindex/hashprice/current"] = Reply(
        302, "", headers={"Location": "http://127.0.0.1:9/steal"})
    with pytest.raises(StaleSource,
                       match=re.escape("redirect to http://127.0.0.1:9/steal not followed")):
        await source(fake_api).fetch()
