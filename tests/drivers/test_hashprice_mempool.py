"""Hash price from first principles, against a loopback server speaking mempool.space's API."""

from __future__ import annotations

import time

import pytest

from curtaild.drivers.hashprice import MempoolHashpriceSource, build_hashprice_source
from curtaild.drivers.hashprice_config import MempoolSource
from curtaild.drivers.httpfeed import FeedError, StaleSource
from tests.drivers.fakeapi import (
    MEMPOOL_HASHPRICE,
    Clock,
    FakeApi,
    Reply,
    js,
    mempool_routes,
    text,
)


def source(api: FakeApi, clock: Clock | None = None, **kw) -> MempoolHashpriceSource:
    cfg = MempoolSource(base_url=f"{api.url}/api", **{"backoff_s": 0.05, "backoff_max_s": 0.1,
                                                      **kw})
    return build_hashprice_source(cfg, clock=clock or time.time)


async def test_hand_calculation(fake_api: FakeApi) -> None:
    # difficulty 1e14 -> network 1e14 * 2^32 / 600 = 7.158278826666667e20 H/s
    # tip 880000 -> next block 880001 -> 4 halvings -> subsidy 50 / 16 = 3.125 BTC
    # fees: 360,000,000 sat over blocks 879857..880000 (144) = 0.025 BTC per block
    # 144 x (3.125 + 0.025) x 100,000 USD x 1e12 / 7.158278826666667e20 = 0.0633672 USD/TH/day
    mempool_routes(fake_api)
    q = await source(fake_api).fetch()
    assert q.usd_per_th_day == pytest.approx(0.0633672, abs=1e-7)
    assert q.usd_per_th_day == pytest.approx(MEMPOOL_HASHPRICE, rel=1e-12)
    assert q.source == "mempool"
    n = q.network
    assert n["difficulty"] == 1e14
    assert n["network_hashrate_hs"] == pytest.approx(7.158278826666667e20)
    assert n["observed_hashrate_hs"] == 7.0e20
    assert n["btc_price_usd"] == 100_000
    assert n["subsidy_btc"] == 3.125
    assert n["tip_height"] == 880_000
    assert n["fees_per_block_btc"] == pytest.approx(0.025)
    assert n["fees_blocks"] == 144
    assert n["fees_share"] == pytest.approx(0.025 / 3.15, abs=1e-6)  # 0.79 % of the reward
    assert abs(time.time() - q.obtained_at) < 5
    assert q.sources[0]["fresh"] is True and q.sources[0]["error"] is None


async def test_second_hand_calculation(fake_api: FakeApi) -> None:
    # difficulty 1.2e14 -> 8.589934592e20 H/s; fees 2.88 BTC / 144 = 0.02; price 95,000
    # 144 x 3.145 x 95,000 x 1e12 / 8.589934592e20 = 0.0500861 USD/TH/day
    mempool_routes(fake_api, difficulty=1.2e14, fee_sats=288_000_000, price=95_000)
    q = await source(fake_api).fetch()
    assert q.usd_per_th_day == pytest.approx(0.0500861, abs=1e-7)


@pytest.mark.parametrize(("tip", "subsidy"), [
    (839_998, 6.25),   # next block 839,999: still the 4th epoch
    (839_999, 3.125),  # next block 840,000 is the fourth halving
    (1_049_999, 1.5625),  # next block 1,050,000: the fifth
    (0, 50.0),
])
async def test_subsidy_follows_halvings_from_the_tip(fake_api: FakeApi, tip: int,
                                                    subsidy: float) -> None:
    mempool_routes(fake_api, tip=tip, fee_sats=0)
    q = await source(fake_api).fetch()
    assert q.network["subsidy_btc"] == subsidy
    # no fees: hash price scales with the subsidy alone
    expected = 144 * subsidy * 100_000 * 1e12 / (1e14 * 2**32 / 600)
    assert q.usd_per_th_day == pytest.approx(expected, rel=1e-12)


async def test_difficulty_from_series_when_current_is_zero(fake_api: FakeApi) -> None:
    # mempool answers currentDifficulty 0 when its bitcoind is unreachable
    mempool_routes(fake_api)
    fake_api.routes["/api/v1/mining/hashrate/3d"] = js({
        "hashrates": [], "currentHashrate": 0, "currentDifficulty": 0,
        "difficulty": [{"time": 1, "height": 1, "difficulty": 5e13, "adjustment": 1.0},
                       {"time": 2, "height": 2, "difficulty": 1e14, "adjustment": 1.0}]})
    q = await source(fake_api).fetch()
    assert q.network["difficulty"] == 1e14
    assert q.usd_per_th_day == pytest.approx(MEMPOOL_HASHPRICE)
    fake_api.routes["/api/v1/mining/hashrate/3d"] = js({
        "hashrates": [], "difficulty": [], "currentHashrate": 0, "currentDifficulty": 0})
    with pytest.raises(StaleSource, match="no positive difficulty"):
        await source(fake_api).fetch()


async def test_retries_server_errors_then_succeeds(fake_api: FakeApi) -> None:
    mempool_routes(fake_api)
    ok = fake_api.routes["/api/v1/prices"]
    fake_api.routes["/api/v1/prices"] = [Reply(503, "upstream down"), Reply(502, "bad gw"), ok]
    q = await source(fake_api, attempts=3).fetch()
    assert q.usd_per_th_day == pytest.approx(MEMPOOL_HASHPRICE)
    assert fake_api.hits["/api/v1/prices"] == 3


async def test_client_errors_are_not_retried(fake_api: FakeApi) -> None:
    mempool_routes(fake_api)
    fake_api.routes["/api/v1/prices"] = Reply(404, "Not Found")
    with pytest.raises(StaleSource, match="HTTP 404"):
        await source(fake_api, attempts=3).fetch()
    assert fake_api.hits["/api/v1/prices"] == 1


async def test_429_waits_retry_after_when_it_fits(fake_api: FakeApi) -> None:
    mempool_routes(fake_api)
    ok = fake_api.routes["/api/v1/prices"]
    fake_api.routes["/api/v1/prices"] = [js({"error": "slow down"}, 429, Retry_After="1"), ok]
    t0 = time.monotonic()
    q = await source(fake_api, deadline_s=10).fetch()
    took = time.monotonic() - t0
    assert q.usd_per_th_day == pytest.approx(MEMPOOL_HASHPRICE)
    assert fake_api.hits["/api/v1/prices"] == 2
    assert took >= 1.0  # honoured Retry-After
    first, second = [s.at for s in fake_api.seen if s.path == "/api/v1/prices"]
    assert second - first >= 1.0


async def test_429_longer_than_the_deadline_holds_off_until_retry_after(
        fake_api: FakeApi, clock: Clock) -> None:
    mempool_routes(fake_api)
    ok = fake_api.routes["/api/v1/prices"]
    fake_api.routes["/api/v1/prices"] = [js({"error": "rate limited"}, 429, Retry_After="120"),
                                         ok]
    src = source(fake_api, clock, deadline_s=5)
    t0 = time.monotonic()
    with pytest.raises(StaleSource, match="429"):
        await src.fetch()
    assert time.monotonic() - t0 < 3  # did not sit out 120 s inside a tick
    assert fake_api.hits["/api/v1/prices"] == 1
    # Within Retry-After nothing is sent, whatever the tick rate.
    for _ in range(5):
        clock.advance(20)
        with pytest.raises(StaleSource):
            await src.fetch()
    assert fake_api.hits["/api/v1/prices"] == 1
    clock.advance(25)  # 125 s after the 429
    q = await src.fetch()
    assert q.usd_per_th_day == pytest.approx(MEMPOOL_HASHPRICE)
    assert fake_api.hits["/api/v1/prices"] == 2


async def test_429_http_date_retry_after(fake_api: FakeApi) -> None:
    from email.utils import formatdate

    mempool_routes(fake_api)
    ok = fake_api.routes["/api/v1/prices"]
    when = formatdate(time.time() + 2, usegmt=True)
    fake_api.routes["/api/v1/prices"] = [js({}, 429, Retry_After=when), ok]
    t0 = time.monotonic()
    await source(fake_api, deadline_s=10).fetch()
    assert time.monotonic() - t0 >= 0.9  # HTTP-date honoured (second resolution)


async def test_malformed_json_is_an_error_not_a_number(fake_api: FakeApi) -> None:
    mempool_routes(fake_api)
    fake_api.routes["/api/v1/mining/reward-stats/144"] = text('{"startBlock": 879857, "tot')
    with pytest.raises(StaleSource, match="malformed JSON"):
        await source(fake_api).fetch()
    assert fake_api.hits["/api/v1/mining/reward-stats/144"] == 1


async def test_body_that_is_not_utf8_is_malformed_json(fake_api: FakeApi) -> None:
    # json.loads raises UnicodeDecodeError here, a ValueError without the .msg of a
    # JSONDecodeError: it must still end as this source's error, not an AttributeError.
    mempool_routes(fake_api)
    fake_api.routes["/api/v1/prices"] = Reply(200, b'{"USD": "\xff"}')
    with pytest.raises(StaleSource, match=r"malformed JSON.*can't decode byte 0xff"):
        await source(fake_api).fetch()


@pytest.mark.parametrize(("path", "reply", "match"), [
    ("/api/v1/prices", js({"EUR": 90000}), "'USD' missing"),
    ("/api/v1/prices", js({"USD": "lots"}), "not a number"),
    ("/api/v1/prices", js({"USD": 0}), "not positive"),
    ("/api/blocks/tip/height", text("<html>oops</html>"), "not a height"),
    ("/api/v1/mining/reward-stats/144",
     js({"startBlock": 1, "endBlock": 144, "totalReward": "10", "totalFee": "20"}),
     "inconsistent totals"),
])
async def test_wrong_documents_are_rejected(fake_api: FakeApi, path: str, reply: Reply,
                                            match: str) -> None:
    mempool_routes(fake_api)
    fake_api.routes[path] = reply
    with pytest.raises(FeedError, match=match):
        await source(fake_api).fetch()


async def test_a_server_that_never_answers_times_out(fake_api: FakeApi) -> None:
    mempool_routes(fake_api)
    fake_api.routes["/api/v1/mining/hashrate/3d"] = Reply(hang=True)
    t0 = time.monotonic()
    with pytest.raises(StaleSource, match=r"no answer .* within 0\.5 s"):
        await source(fake_api, timeout_s=0.5, attempts=2, deadline_s=5).fetch()
    took = time.monotonic() - t0
    assert 0.9 < took < 4  # two attempts of 0.5 s and a short backoff, then give up
    assert fake_api.hits["/api/v1/mining/hashrate/3d"] == 2


async def test_refresh_s_caches_between_refreshes(fake_api: FakeApi, clock: Clock) -> None:
    mempool_routes(fake_api)
    src = source(fake_api, clock, refresh_s=300, max_age_s=900)
    first = await src.fetch()
    for _ in range(10):  # ten 10-s ticks: one request per endpoint in all
        clock.advance(10)
        q = await src.fetch()
        assert q.obtained_at == first.obtained_at
    assert fake_api.hits["/api/v1/prices"] == 1
    assert fake_api.hits["/api/blocks/tip/height"] == 1
    clock.advance(200)  # 300 s since the refresh
    mempool_routes(fake_api, price=110_000)
    q = await src.fetch()
    assert fake_api.hits["/api/v1/prices"] == 2
    assert q.usd_per_th_day == pytest.approx(MEMPOOL_HASHPRICE * 1.1)


async def test_staleness_keeps_value_until_max_age_then_raises(fake_api: FakeApi,
                                                               clock: Clock) -> None:
    mempool_routes(fake_api, price_time=clock.now)
    src = source(fake_api, clock, refresh_s=60, max_age_s=600, attempts=1)
    good = await src.fetch()
    fake_api.routes["/api/v1/prices"] = Reply(500, "boom")
    clock.advance(120)
    q = await src.fetch()  # refresh failed, value still fresh enough: kept, error shown
    assert q.usd_per_th_day == good.usd_per_th_day
    assert q.obtained_at == good.obtained_at
    assert "HTTP 500" in q.sources[0]["error"]
    assert q.sources[0]["age_s"] == pytest.approx(120, abs=1)
    clock.advance(600)  # 720 s old
    with pytest.raises(StaleSource, match=r"72[01] s old \(max_age_s 600\).*HTTP 500"):
        await src.fetch()
    clock.advance(120)  # past the failure backoff
    fake_api.routes["/api/v1/prices"] = js({"USD": 100_000, "time": int(clock.now)})
    q = await src.fetch()
    assert q.obtained_at == pytest.approx(clock.now, abs=1)
    assert q.sources[0]["error"] is None


async def test_backs_off_after_failures(fake_api: FakeApi, clock: Clock) -> None:
    mempool_routes(fake_api)
    fake_api.routes["/api/v1/prices"] = Reply(500, "boom")
    src = source(fake_api, clock, attempts=1, refresh_s=300)
    for _ in range(12):  # 2 minutes of 10-s ticks
        with pytest.raises(StaleSource):
            await src.fetch()
        clock.advance(10)
    # attempts at 0 s, then 15 s later (t=20), then 30 s later (t=50), then 60 s (t=110)
    assert fake_api.hits["/api/v1/prices"] == 4


async def test_an_old_price_makes_an_old_quote(fake_api: FakeApi, clock: Clock) -> None:
    mempool_routes(fake_api, price_time=clock.now - 3600)
    src = source(fake_api, clock, max_age_s=1200)
    with pytest.raises(StaleSource, match=r"360[01] s old .*data is that old"):
        await src.fetch()
