"""Demand windows (e.g. ERCOT 4CP): energy treated as prohibitively expensive, so the margin
policy sleeps everything; flagged on the quote and visible in the forecast."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from curtaild.controller.config import ConfigError, parse_config
from curtaild.core.snapshot import FleetSnapshot, MarketSnapshot, MinerReading
from curtaild.drivers.tariff import build_tariff_source
from curtaild.policies.margin import MarginConfig, MarginPolicy

CHI = zoneinfo.ZoneInfo("America/Chicago")


def chi(local: str) -> float:
    return dt.datetime.fromisoformat(local).replace(tzinfo=CHI).timestamp()


def tariff(table: dict):
    return build_tariff_source(parse_config({
        "fleet": {"hosts": ["127.66.0.1"]},
        "hashprice": {"source": "fixed", "usd_per_th_day": 0.05},
        "tariff": table,
        "policy": {"name": "margin"},
    }).tariff)


FOUR_CP = {"kind": "flat", "usd_per_kwh": 0.045, "timezone": "America/Chicago",
           "adders_usd_per_kwh": {"tdsp": 0.015},
           "demand_windows": [{"name": "4CP", "months": "6-9", "days": "weekdays",
                               "start": "16:00", "end": "17:00"}]}


async def test_window_prices_energy_out_of_reach() -> None:
    src = tariff(FOUR_CP)
    q = await src.fetch(chi("2025-07-15T16:30"))  # Tuesday in July
    assert q.in_demand_window is True and q.demand_window == "4CP"
    assert q.usd_per_kwh == 10.0  # demand_window_usd_per_kwh default
    assert q.energy_usd_per_kwh == 0.045 and q.adders_usd_per_kwh == 0.015
    for local in ("2025-07-15T15:59", "2025-07-15T17:00",  # edges: end is exclusive
                  "2025-07-19T16:30",                      # Saturday
                  "2025-10-15T16:30"):                     # October
        q = await src.fetch(chi(local))
        assert q.in_demand_window is False, local
        assert q.usd_per_kwh == pytest.approx(0.060)


async def test_forecast_and_windows_ahead() -> None:
    src = tariff(FOUR_CP)
    now = chi("2025-07-15T12:00")
    q = await src.fetch(now)
    prices = dict(q.forecast)
    assert prices[chi("2025-07-15T16:00")] == 10.0
    assert prices[chi("2025-07-15T17:00")] == pytest.approx(0.060)
    # the next 24 h hold one window (tomorrow's starts after 12:00 tomorrow)
    assert q.demand_windows_ahead == (
        (chi("2025-07-15T16:00"), chi("2025-07-15T17:00"), "4CP"),)
    assert q.in_demand_window is False


async def test_window_edges_off_the_hour_are_in_the_forecast() -> None:
    src = tariff({**FOUR_CP, "demand_windows": [
        {"name": "peak-interval", "start": "16:30", "end": "16:45", "dates": [
            dt.date(2025, 8, 20)]}]})
    q = await src.fetch(chi("2025-08-20T08:00"))
    prices = dict(q.forecast)
    assert prices[chi("2025-08-20T16:30")] == 10.0
    assert prices[chi("2025-08-20T16:45")] == pytest.approx(0.060)
    assert q.demand_windows_ahead == ((chi("2025-08-20T16:30"), chi("2025-08-20T16:45"),
                                       "peak-interval"),)
    # only on the listed date
    q = await src.fetch(chi("2025-08-21T16:35"))
    assert q.in_demand_window is False


async def test_window_in_its_own_timezone_and_price() -> None:
    # a Berlin site following a (hypothetical) 19:00-20:00 window set in UTC
    src = tariff({"kind": "tou", "timezone": "Europe/Berlin", "usd_per_kwh": 0.12,
                  "demand_window_usd_per_kwh": 5.0,
                  "demand_windows": [
                      {"name": "grid-peak", "timezone": "UTC", "start": "17:00",
                       "end": "18:00"},
                      {"name": "local-peak", "start": "08:00", "end": "09:00",
                       "usd_per_kwh": 2.5}]})
    utc = dt.UTC
    q = await src.fetch(dt.datetime(2025, 3, 31, 17, 30, tzinfo=utc).timestamp())
    assert (q.demand_window, q.usd_per_kwh) == ("grid-peak", 5.0)
    # 08:00 CEST = 06:00Z after the spring change; 07:00Z before it
    q = await src.fetch(dt.datetime(2025, 3, 31, 6, 30, tzinfo=utc).timestamp())
    assert (q.demand_window, q.usd_per_kwh) == ("local-peak", 2.5)
    q = await src.fetch(dt.datetime(2025, 3, 28, 6, 30, tzinfo=utc).timestamp())
    assert q.in_demand_window is False
    q = await src.fetch(dt.datetime(2025, 3, 28, 7, 30, tzinfo=utc).timestamp())
    assert q.demand_window == "local-peak"


async def test_window_never_lowers_a_higher_price() -> None:
    src = tariff({"kind": "flat", "usd_per_kwh": 12.0, "timezone": "UTC",
                  "demand_windows": [{"start": "00:00", "end": "24:00"}]})
    q = await src.fetch(1_750_000_000.0)
    assert q.in_demand_window is True and q.usd_per_kwh == 12.0


async def test_window_running_past_the_horizon_has_its_end() -> None:
    src = tariff({"kind": "flat", "usd_per_kwh": 0.05, "timezone": "UTC",
                  "demand_windows": [{"name": "storm", "start": "20:00", "end": "08:00"}]})
    now = dt.datetime(2025, 7, 1, 21, 0, tzinfo=dt.UTC).timestamp()
    q = await src.fetch(now)
    assert q.in_demand_window is True
    first, second = q.demand_windows_ahead
    assert first == (now, now + 11 * 3600, "storm")
    assert second == (now + 23 * 3600, now + 35 * 3600, "storm")  # 20:00 -> 08:00 next day


async def test_margin_policy_sleeps_everything_in_a_window() -> None:
    src = tariff(FOUR_CP)
    ts = chi("2025-07-15T16:10")
    q = await src.fetch(ts)
    market = MarketSnapshot(hashprice_usd_per_th_day=0.05, hashprice_source="fixed",
                            hashprice_age_s=0.0, tariff_usd_per_kwh=q.usd_per_kwh,
                            tariff_source=q.source, tariff_age_s=0.0, pool_fee=0.02,
                            tariff_forecast=q.forecast)

    def miner(key: str, ths: float, watts: float) -> MinerReading:
        return MinerReading(key=key, ip="127.0.0.1", make="AntMiner", model=key,
                            firmware="antminer", state="mining", hashrate_ths=ths,
                            power_w=watts, power_source="nameplate", power_limit_w=None,
                            temp_c=60.0, nameplate_hashrate_ths=ths, nameplate_power_w=watts,
                            observed_at=ts)

    # the most efficient machines there are (S21 XP Hyd ~12 J/TH): 473 TH/s at 5676 W earns
    # 473 x 0.05 x 0.98 = 23.18 USD/day, and 5.676 kW x 24 h x 10 USD = 1362.24 USD/day
    fleet = FleetSnapshot(miners=(miner("S21 XP Hyd", 473.0, 5676.0),
                                  miner("S21", 200.0, 3500.0),
                                  miner("S19j Pro", 104.0, 3068.0)), taken_at=ts)
    decided = MarginPolicy(MarginConfig()).decide(fleet, market, ts)
    assert {k: d.action for k, d in decided.items()} == {
        "S21 XP Hyd": "sleep", "S21": "sleep", "S19j Pro": "sleep"}
    # outside the window the S21 XP Hyd and the S21 run again at 0.06 USD/kWh
    q = await src.fetch(chi("2025-07-15T17:05"))
    market = MarketSnapshot(hashprice_usd_per_th_day=0.05, hashprice_source="fixed",
                            hashprice_age_s=0.0, tariff_usd_per_kwh=q.usd_per_kwh,
                            tariff_source=q.source, tariff_age_s=0.0, pool_fee=0.02)
    decided = MarginPolicy(MarginConfig()).decide(fleet, market, ts)
    assert decided["S21 XP Hyd"].action == "run" and decided["S21"].action == "run"


def test_window_config_errors() -> None:
    with pytest.raises(ConfigError) as info:
        tariff({"kind": "flat", "usd_per_kwh": 0.05,
                "demand_windows": [{"start": "16:00", "end": "17:00"}]})
    assert info.value.problems == [
        "tariff.demand_windows[0].timezone: required: set timezone in the window or in "
        "[tariff]"]
    with pytest.raises(ConfigError) as info:
        tariff({**FOUR_CP, "demand_windows": [{"start": "16:00", "end": "17:00",
                                               "weekdays": "mon"}]})
    assert info.value.problems[0].startswith("tariff.demand_windows[0].weekdays: Extra inputs")
    with pytest.raises(ConfigError) as info:
        tariff({**FOUR_CP, "demand_window_usd_per_kwh": "lots"})
    assert info.value.problems[0].startswith("tariff.demand_window_usd_per_kwh: ")
