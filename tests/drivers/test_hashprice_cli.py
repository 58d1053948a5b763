"""End to end: `curtaild --config X plan --json` in its own process, market inputs from a
loopback server speaking mempool.space's API and an ISO-style price feed; the fleet is an
address where nothing listens, and plan still reports the market."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.drivers.fakeapi import MEMPOOL_HASHPRICE, FakeApi, Reply, js, mempool_routes
from tests.support.plan_config import write_plan_config

REPO = Path(__file__).resolve().parents[2]


def plan(config: Path) -> dict:
    res = subprocess.run([sys.executable, "-m", "curtaild.controller.cli", "--config", str(config),
                          "plan", "--json"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def write(tmp_path: Path, hashprice: str, tariff: str) -> Path:
    return write_plan_config(tmp_path, hashprice, tariff, host="127.66.0.1")


def test_plan_shows_the_computed_hash_price(fake_api: FakeApi, tmp_path: Path) -> None:
    mempool_routes(fake_api, price_time=time.time() - 30)
    now = time.time()
    fake_api.routes["/rtm/spp"] = js({"data": [
        {"interval_start": now - now % 900, "settlement_point": "HB_HOUSTON", "lmp": 31.7}]})
    config = write(tmp_path, f"""
[hashprice]
source = "mempool"
base_url = "{fake_api.url}/api"
""", f"""
[tariff]
kind = "realtime"
url = "{fake_api.url}/rtm/spp"
rows = "data"
field = "lmp"
time_field = "interval_start"
match = {{ settlement_point = "HB_HOUSTON" }}
timezone = "America/Chicago"
adders_usd_per_kwh = {{ tdsp = 0.0125 }}
fallback_usd_per_kwh = 0.06

[[tariff.demand_windows]]
name = "always"
start = "00:00"
end = "24:00"
""")
    out = plan(config)
    m = out["market"]
    # 144 x (3.125 + 0.025) x 100000 x 1e12 / (1e14 x 2^32 / 600) = 0.0633672
    assert m["hashprice_usd_per_th_day"] == pytest.approx(0.0633672, abs=1e-7)
    assert m["hashprice_usd_per_th_day"] == pytest.approx(MEMPOOL_HASHPRICE)
    assert m["hashprice_source"] == "mempool"
    assert 25 <= m["hashprice_age_s"] < 120  # as of the price's timestamp
    net = m["network"]
    assert net["difficulty"] == 1e14 and net["tip_height"] == 880_000
    assert net["subsidy_btc"] == 3.125 and net["btc_price_usd"] == 100_000
    assert net["network_hashrate_hs"] == pytest.approx(7.158278826666667e20)
    assert net["fees_share"] == pytest.approx(0.0079365, abs=1e-6)
    (detail,) = m["hashprice_sources"]
    assert detail["source"] == "mempool" and detail["fresh"] is True
    assert detail["url"] == f"{fake_api.url}/api"
    # the tariff: 31.7 USD/MWh + 0.0125 = 0.0442 USD/kWh, but a demand window is in force
    assert m["tariff_source"] == "realtime"
    assert m["tariff_energy_usd_per_kwh"] == pytest.approx(0.0317)
    assert m["tariff_adders_usd_per_kwh"] == pytest.approx(0.0125)
    assert m["tariff_in_demand_window"] is True and m["tariff_demand_window"] == "always"
    assert m["tariff_usd_per_kwh"] == 10.0
    assert len(m["tariff_forecast"]) >= 24
    assert out["miners"] == []
    assert fake_api.hits["/api/v1/prices"] == 1


def test_plan_shows_the_fallback_and_why(fake_api: FakeApi, tmp_path: Path) -> None:
    mempool_routes(fake_api)
    fake_api.routes["/api/v1/mining/hashrate/3d"] = Reply(503, "backend restarting")
    config = write(tmp_path, f"""
[hashprice]
source = "mempool"
base_url = "{fake_api.url}/api"
attempts = 2
backoff_s = 0.1
fallbacks = [{{ source = "fixed", usd_per_th_day = 0.045 }}]
""", """
[tariff]
kind = "flat"
usd_per_kwh = 0.07
""")
    m = plan(config)["market"]
    assert m["hashprice_usd_per_th_day"] == 0.045 and m["hashprice_source"] == "fixed"
    primary, fallback = m["hashprice_sources"]
    assert primary["role"] == "primary" and primary["used"] is False
    assert primary["fresh"] is False and "HTTP 503" in primary["error"]
    assert fallback["used"] is True
    assert fake_api.hits["/api/v1/mining/hashrate/3d"] == 2  # retried once
