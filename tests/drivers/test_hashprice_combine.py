"""Several hash price sources: fallback order, median, disagreement, and the market's
fail-safe (a failing source keeps its last quote, which keeps ageing)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest

from curtaild.controller.config import parse_config
from curtaild.controller.market import MarketInputs
from curtaild.drivers.hashprice import CompositeHashpriceSource, build_hashprice_source
from curtaild.drivers.httpfeed import FeedError
from curtaild.drivers.tariff import build_tariff_source
from tests.drivers.fakeapi import MEMPOOL_HASHPRICE, Clock, FakeApi, Reply, mempool_routes
from tests.drivers.test_hashprice_hashrateindex import KEY, current

FAST = {"backoff_s": 0.05, "backoff_max_s": 0.1, "attempts": 1}


def hashprice_cfg(table: dict):
    return parse_config({
        "fleet": {"hosts": ["127.66.0.1"]},
        "hashprice": table,
        "tariff": {"kind": "flat", "usd_per_kwh": 0.06},
        "policy": {"name": "margin"},
    }).hashprice


def build(table: dict, clock: Callable[[], float] = time.time):
    return build_hashprice_source(hashprice_cfg(table), clock=clock)


def hri(api: FakeApi, **kw) -> dict:
    return {"source": "hashrateindex", "base_url": f"{api.url}/v1/hashrateindex",
            "api_key": KEY, **FAST, **kw}


def mempool(api: FakeApi, **kw) -> dict:
    return {"source": "mempool", "base_url": f"{api.url}/api", **FAST, **kw}


async def test_primary_used_while_fresh(make_api) -> None:
    a, b = make_api(), make_api()
    mempool_routes(a)
    b.routes["/v1/hashrateindex/hashprice/current"] = current(0.0640, 6.4e-7)
    src = build({**mempool(a), "fallbacks": [hri(b), {"source": "fixed",
                                                       "usd_per_th_day": 0.045}]})
    assert isinstance(src, CompositeHashpriceSource)
    q = await src.fetch()
    assert q.source == "mempool"
    assert q.usd_per_th_day == pytest.approx(MEMPOOL_HASHPRICE)
    assert q.network["difficulty"] == 1e14
    assert [(d["source"], d["role"], d["used"], d["fresh"]) for d in q.sources] == [
        ("mempool", "primary", True, True),
        ("hashrateindex", "fallback 1", False, True),
        ("fixed", "fallback 2", False, True),
    ]
    # 0.0640 vs 0.0633672: 1.0 % apart, within the default 10 %
    assert q.disagreement == pytest.approx((0.0640 - MEMPOOL_HASHPRICE) /
                                           ((0.0640 + MEMPOOL_HASHPRICE) / 2), abs=1e-6)
    assert q.disagreement_exceeded is False
    assert b.hits["/v1/hashrateindex/hashprice/current"] == 1  # warm fallback


async def test_fallback_order(make_api, clock: Clock) -> None:
    a, b = make_api(), make_api()
    mempool_routes(a, price_time=clock.now)
    b.routes["/v1/hashrateindex/hashprice/current"] = current(0.0640, 6.4e-7, at=clock.now)
    src = build({**mempool(a, refresh_s=60, max_age_s=300),
                 "fallbacks": [hri(b, refresh_s=60, max_age_s=300),
                               {"source": "fixed", "usd_per_th_day": 0.045}]}, clock)
    assert (await src.fetch()).source == "mempool"
    # the primary breaks: its value stays in use while younger than its max_age_s...
    a.routes["/api/v1/prices"] = Reply(500, "down")
    clock.advance(120)
    b.routes["/v1/hashrateindex/hashprice/current"] = current(0.0640, 6.4e-7, at=clock.now)
    q = await src.fetch()
    assert q.source == "mempool" and "HTTP 500" in q.sources[0]["error"]
    # ...then the first fallback takes over
    clock.advance(240)
    b.routes["/v1/hashrateindex/hashprice/current"] = current(0.0640, 6.4e-7, at=clock.now)
    q = await src.fetch()
    assert q.source == "hashrateindex" and q.usd_per_th_day == 0.0640
    assert [d["used"] for d in q.sources] == [False, True, False]
    assert q.sources[0]["fresh"] is False
    assert q.obtained_at == pytest.approx(clock.now, abs=1)
    # both live sources down and stale: the fixed last resort
    b.routes["/v1/hashrateindex/hashprice/current"] = Reply(503, "maintenance")
    clock.advance(400)
    q = await src.fetch()
    assert q.source == "fixed" and q.usd_per_th_day == 0.045
    assert [d["used"] for d in q.sources] == [False, False, True]
    # the primary recovers: back to it
    mempool_routes(a, price_time=clock.now + 600)
    clock.advance(600)
    q = await src.fetch()
    assert q.source == "mempool"


async def test_no_fresh_source_raises(make_api) -> None:
    a, b = make_api(), make_api()
    a.routes["/api/v1/prices"] = Reply(500, "down")
    b.routes["/v1/hashrateindex/hashprice/current"] = Reply(502, "bad gateway")
    src = build({**mempool(a), "fallbacks": [hri(b)]})
    with pytest.raises(FeedError, match="no fresh hash price from any source"):
        await src.fetch()


async def test_median_and_disagreement_reported(make_api,
                                                caplog: pytest.LogCaptureFixture) -> None:
    a, b, c = make_api(), make_api(), make_api()
    mempool_routes(a)                                   # 0.0633672
    mempool_routes(b, price=120_000)                    # 0.0760406 (x 1.2)
    c.routes["/v1/hashrateindex/hashprice/current"] = current(0.0650, 6.5e-7)
    src = build({**mempool(a), "combine": "median", "max_disagreement": 0.05,
                 "fallbacks": [mempool(b), hri(c),
                               {"source": "fixed", "usd_per_th_day": 0.01}]})
    caplog.set_level(logging.WARNING, logger="curtaild.hashprice")
    q = await src.fetch()
    # median of 0.0633672, 0.0760406, 0.0650 = 0.0650; the fixed 0.01 does not vote
    assert q.usd_per_th_day == pytest.approx(0.0650)
    assert q.source == "median(mempool,mempool,hashrateindex)"
    assert q.combine == "median"
    # spread (0.0760406 - 0.0633672) / 0.0650 = 0.19497
    assert q.disagreement == pytest.approx((MEMPOOL_HASHPRICE * 1.2 - MEMPOOL_HASHPRICE) / 0.065,
                                           abs=1e-6)
    assert q.disagreement == pytest.approx(0.19497, abs=1e-4)
    assert q.disagreement_exceeded is True
    assert [d["used"] for d in q.sources] == [True, True, True, False]
    warnings = [r.getMessage() for r in caplog.records if "disagree" in r.getMessage()]
    assert len(warnings) == 1 and "19.5%" in warnings[0]
    await src.fetch()  # same values (cached): not said again
    assert len([r for r in caplog.records if "disagree" in r.getMessage()]) == 1


async def test_agreeing_sources_are_quiet(make_api, caplog: pytest.LogCaptureFixture) -> None:
    a, b = make_api(), make_api()
    mempool_routes(a)
    b.routes["/v1/hashrateindex/hashprice/current"] = current(0.0640, 6.4e-7)
    src = build({**mempool(a), "combine": "median", "fallbacks": [hri(b)]})
    q = await src.fetch()
    assert q.usd_per_th_day == pytest.approx((MEMPOOL_HASHPRICE + 0.0640) / 2)
    assert q.disagreement_exceeded is False
    assert not [r for r in caplog.records if "disagree" in r.getMessage()]


async def test_median_uses_fixed_only_as_last_resort(make_api) -> None:
    a = make_api()
    a.routes["/api/v1/prices"] = Reply(500, "down")
    src = build({**mempool(a), "combine": "median",
                 "fallbacks": [{"source": "fixed", "usd_per_th_day": 0.045}]})
    q = await src.fetch()
    assert q.source == "fixed" and q.usd_per_th_day == 0.045


def test_backward_compatible_fixed_table() -> None:
    src = build({"source": "fixed", "usd_per_th_day": 0.045})
    assert src.name == "fixed"


async def test_market_keeps_last_quote_which_keeps_ageing(fake_api: FakeApi,
                                                          clock: Clock) -> None:
    """controller/market.py's fail-safe with a live source: the guards see the age grow."""
    mempool_routes(fake_api, price_time=clock.now)
    hp = build(mempool(fake_api, refresh_s=60, max_age_s=300), clock)
    tariff = build_tariff_source(parse_config({
        "fleet": {"hosts": ["127.66.0.1"]}, "hashprice": {"source": "fixed",
                                                          "usd_per_th_day": 0.05},
        "tariff": {"kind": "flat", "usd_per_kwh": 0.06}, "policy": {"name": "margin"},
    }).tariff)
    market = MarketInputs(hp, tariff, pool_fee=0.02)
    snap = await market.snapshot(clock.now)
    assert snap.hashprice_source == "mempool" and snap.hashprice_age_s < 2
    assert snap.extra["network"]["tip_height"] == 880_000
    t0 = clock.now
    fake_api.routes["/api/v1/prices"] = Reply(500, "down")
    for age in (600, 1800, 3600):
        clock.now = t0 + age
        s = await market.snapshot(clock.now)
        assert s.hashprice_usd_per_th_day == pytest.approx(MEMPOOL_HASHPRICE)
        assert s.hashprice_age_s == pytest.approx(age, abs=5)
        assert "mempool" in market.errors["hashprice"]
        assert s.extra["hashprice"]["error"] == market.errors["hashprice"]
