"""Flat and time-of-use tariffs: local wall-clock periods through zoneinfo, DST-correct.

Transition instants used below (2025):
  America/Chicago  spring 2025-03-09 02:00 CST -> 03:00 CDT (08:00Z)
                   fall   2025-11-02 02:00 CDT -> 01:00 CST (07:00Z)
  Europe/Berlin    spring 2025-03-30 02:00 CET -> 03:00 CEST (01:00Z)
                   fall   2025-10-26 03:00 CEST -> 02:00 CET (01:00Z)
"""

from __future__ import annotations

import datetime as dt
import itertools
import zoneinfo

import pytest

from curtaild.controller.config import ConfigError, parse_config
from curtaild.drivers.tariff import build_tariff_source

UTC = dt.UTC


def z(text: str) -> float:
    """'2025-03-09T06:00' (UTC) -> unix seconds."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def tariff(table: dict):
    cfg = parse_config({
        "fleet": {"hosts": ["127.66.0.1"]},
        "hashprice": {"source": "fixed", "usd_per_th_day": 0.05},
        "tariff": table,
        "policy": {"name": "margin"},
    })
    return build_tariff_source(cfg.tariff)


def local_hours(forecast, tzname: str) -> list[int]:
    tz = zoneinfo.ZoneInfo(tzname)
    return [dt.datetime.fromtimestamp(t, tz).hour for t, _ in forecast]


async def test_flat_is_backward_compatible() -> None:
    src = tariff({"kind": "flat", "usd_per_kwh": 0.07})
    q = await src.fetch(1_000_000.0)
    assert q.usd_per_kwh == 0.07 and q.source == "flat" and q.obtained_at == 1_000_000.0
    assert len(q.forecast) == 24
    assert q.forecast[0] == (1_000_000.0, 0.07)
    assert all(b[0] - a[0] == 3600 for a, b in itertools.pairwise(q.forecast))
    assert q.in_demand_window is False


async def test_adders_on_top() -> None:
    src = tariff({"kind": "flat", "usd_per_kwh": 0.045,
                  "adders_usd_per_kwh": {"transmission": 0.011, "retail": 0.004}})
    q = await src.fetch(1_000_000.0)
    # 0.045 + 0.011 + 0.004 = 0.060
    assert q.usd_per_kwh == pytest.approx(0.060)
    assert q.energy_usd_per_kwh == 0.045 and q.adders_usd_per_kwh == pytest.approx(0.015)
    assert q.detail["adders"] == {"transmission": 0.011, "retail": 0.004}
    assert all(p == pytest.approx(0.060) for _, p in q.forecast)


CHICAGO_PEAK = {"kind": "tou", "timezone": "America/Chicago", "usd_per_kwh": 0.04,
                "periods": [{"name": "peak", "days": "weekdays", "start": "07:00",
                             "end": "22:00", "usd_per_kwh": 0.09}]}


async def test_weekday_peak_follows_local_time_across_dst() -> None:
    src = tariff(CHICAGO_PEAK)
    # Friday before spring-forward: 07:00 CST = 13:00Z
    assert (await src.fetch(z("2025-03-07T12:59"))).usd_per_kwh == 0.04
    q = await src.fetch(z("2025-03-07T13:00"))
    assert q.usd_per_kwh == 0.09 and q.detail["period"] == "peak"
    # Monday after: 07:00 CDT = 12:00Z (an hour earlier in UTC)
    assert (await src.fetch(z("2025-03-10T11:59"))).usd_per_kwh == 0.04
    assert (await src.fetch(z("2025-03-10T12:00"))).usd_per_kwh == 0.09
    # 22:00 CDT = 03:00Z next day
    assert (await src.fetch(z("2025-03-11T02:59"))).usd_per_kwh == 0.09
    assert (await src.fetch(z("2025-03-11T03:00"))).usd_per_kwh == 0.04
    # the weekend in between is off-peak all day
    for hour in range(24):
        q = await src.fetch(z(f"2025-03-09T{hour:02d}:30"))
        assert q.usd_per_kwh == 0.04
        assert q.detail["period"] is None


async def test_chicago_spring_forward_forecast() -> None:
    # 01:00-03:00 wall clock is one real hour on 2025-03-09: 02:xx does not exist
    src = tariff({"kind": "tou", "timezone": "America/Chicago", "usd_per_kwh": 0.04,
                  "periods": [{"start": "01:00", "end": "03:00", "usd_per_kwh": 0.30},
                              {"start": "02:00", "end": "02:30", "usd_per_kwh": 9.0}]})
    now = z("2025-03-09T06:00")  # 00:00 CST
    q = await src.fetch(now)
    times = [t for t, _ in q.forecast]
    assert len(q.forecast) == 24  # 24 real hours, 23 local-hour boundaries + now
    assert all(b - a == 3600 for a, b in itertools.pairwise(times))
    assert local_hours(q.forecast, "America/Chicago") == [0, 1, *range(3, 24), 0]
    prices = dict(q.forecast)
    assert prices[z("2025-03-09T07:00")] == 0.30  # 01:00 CST
    assert prices[z("2025-03-09T08:00")] == 0.04  # 03:00 CDT: the period is over
    assert 9.0 not in prices.values()  # 02:00-02:30 never happens that day


async def test_chicago_fall_back_forecast() -> None:
    # 01:00-02:00 wall clock is two real hours on 2025-11-02: 01:xx happens twice
    src = tariff({"kind": "tou", "timezone": "America/Chicago", "usd_per_kwh": 0.04,
                  "periods": [{"start": "01:00", "end": "02:00", "usd_per_kwh": 0.30}]})
    now = z("2025-11-02T05:00")  # 00:00 CDT
    q = await src.fetch(now)
    assert len(q.forecast) == 24
    assert local_hours(q.forecast, "America/Chicago") == [0, 1, 1, *range(2, 23)]
    assert [p for _, p in q.forecast[:4]] == [0.04, 0.30, 0.30, 0.04]
    assert q.forecast[1][0] == z("2025-11-02T06:00")  # 01:00 CDT
    assert q.forecast[2][0] == z("2025-11-02T07:00")  # 01:00 CST
    assert q.forecast[3][0] == z("2025-11-02T08:00")  # 02:00 CST
    # price_at each instant agrees with the forecast
    for t, p in q.forecast:
        assert (await src.fetch(t)).usd_per_kwh == p


async def test_berlin_spring_and_fall() -> None:
    src = tariff({"kind": "tou", "timezone": "Europe/Berlin", "usd_per_kwh": 0.10,
                  "periods": [{"name": "evening", "start": "17:00", "end": "20:00",
                               "usd_per_kwh": 0.25},
                              {"name": "night", "start": "02:00", "end": "03:00",
                               "usd_per_kwh": 0.05}]})
    # Saturday 29 March: 17:00 CET = 16:00Z; Sunday 30 March: 17:00 CEST = 15:00Z
    assert (await src.fetch(z("2025-03-29T15:30"))).usd_per_kwh == 0.10
    assert (await src.fetch(z("2025-03-29T16:00"))).usd_per_kwh == 0.25
    assert (await src.fetch(z("2025-03-30T15:00"))).usd_per_kwh == 0.25
    assert (await src.fetch(z("2025-03-30T18:00"))).usd_per_kwh == 0.10  # 20:00 CEST
    q = await src.fetch(z("2025-03-29T23:00"))  # 00:00 CET on the spring-forward day
    assert local_hours(q.forecast, "Europe/Berlin")[:4] == [0, 1, 3, 4]
    assert 0.05 not in [p for _, p in q.forecast]  # 02:00-03:00 does not exist
    # 26 October: 02:00-03:00 happens twice (00:00Z-01:00Z CEST, 01:00Z-02:00Z CET)
    q = await src.fetch(z("2025-10-25T22:00"))  # 00:00 CEST
    assert local_hours(q.forecast, "Europe/Berlin")[:5] == [0, 1, 2, 2, 3]
    assert [p for _, p in q.forecast[:5]] == [0.10, 0.10, 0.05, 0.05, 0.10]
    assert len(q.forecast) == 24


async def test_seasons_weekends_overnight_and_first_match() -> None:
    src = tariff({"kind": "tou", "timezone": "America/Chicago", "usd_per_kwh": 0.05,
                  "periods": [
                      # Friday night into Saturday morning belongs to Friday
                      {"name": "fri-night", "days": ["fri"], "start": "22:00", "end": "06:00",
                       "usd_per_kwh": 0.02},
                      {"name": "summer-peak", "months": "6-9", "days": "weekdays",
                       "start": "14:00", "end": "20:00", "usd_per_kwh": 0.15},
                      {"name": "winter", "months": "11-2", "usd_per_kwh": 0.06},
                      {"name": "summer", "months": [6, 7, 8, 9], "usd_per_kwh": 0.07},
                  ]})

    async def at(local: str) -> tuple[float, str | None]:
        ts = dt.datetime.fromisoformat(local).replace(
            tzinfo=zoneinfo.ZoneInfo("America/Chicago")).timestamp()
        q = await src.fetch(ts)
        return q.usd_per_kwh, q.detail["period"]

    assert await at("2025-07-15T15:00") == (0.15, "summer-peak")   # Tuesday
    assert await at("2025-07-19T15:00") == (0.07, "summer")        # Saturday
    assert await at("2025-07-15T21:00") == (0.07, "summer")
    assert await at("2025-01-15T15:00") == (0.06, "winter")        # 11-2 wraps the year
    assert await at("2025-12-24T15:00") == (0.06, "winter")
    assert await at("2025-04-15T15:00") == (0.05, None)            # shoulder: base price
    assert await at("2025-07-18T23:00") == (0.02, "fri-night")     # Friday 23:00
    assert await at("2025-07-19T05:59") == (0.02, "fri-night")     # Saturday 05:59
    assert await at("2025-07-19T06:00") == (0.07, "summer")
    assert await at("2025-07-18T05:00") == (0.07, "summer")        # Friday 05:00 is Thursday's


async def test_forecast_has_the_change_points_between_hours() -> None:
    src = tariff({"kind": "tou", "timezone": "Asia/Kolkata", "usd_per_kwh": 0.05,
                  "periods": [{"start": "18:15", "end": "18:45", "usd_per_kwh": 0.2}]})
    now = z("2025-06-01T00:00")  # 05:30 IST
    q = await src.fetch(now)
    prices = dict(q.forecast)
    assert prices[z("2025-06-01T12:45")] == 0.2   # 18:15 IST
    assert prices[z("2025-06-01T13:15")] == 0.05  # 18:45 IST
    assert z("2025-06-01T00:30") in prices        # local hour boundary (06:00 IST)
    # now (05:30 IST) + 24 local hour boundaries + 2 change points
    assert len(q.forecast) == 1 + 24 + 2


@pytest.mark.parametrize(("table", "expected"), [
    ({"kind": "tou", "usd_per_kwh": 0.05}, "tariff.timezone: Field required"),
    ({"kind": "tou", "timezone": "Mars/Olympus", "usd_per_kwh": 0.05}, "tariff.timezone: "),
    ({"kind": "tou", "timezone": "UTC", "usd_per_kwh": 0.05,
      "periods": [{"start": "7", "end": "25:00", "usd_per_kwh": 0.1}]},
     "tariff.periods[0].end: "),
    ({"kind": "tou", "timezone": "UTC", "usd_per_kwh": 0.05,
      "periods": [{"months": "13-2", "usd_per_kwh": 0.1}]}, "tariff.periods[0].months: "),
    ({"kind": "tou", "timezone": "UTC", "usd_per_kwh": 0.05,
      "periods": [{"days": ["mon", "funday"], "usd_per_kwh": 0.1}]},
     "tariff.periods[0].days: "),
    ({"kind": "tou", "timezone": "UTC", "usd_per_kwh": 0.05,
      "periods": [{"start": "10:00", "end": "10:00", "usd_per_kwh": 0.1}]},
     "tariff.periods[0].end: "),
    ({"kind": "tou", "timezone": "UTC", "usd_per_kwh": 0.05, "periodz": []}, "tariff.periodz: "),
    ({"kind": "flat", "usd_per_kwh": 0.05, "adders_usd_per_kwh": {"retail": "x"}},
     "tariff.adders_usd_per_kwh.retail: "),
    ({"kind": "hourly", "usd_per_kwh": 0.05}, "tariff: "),
])
def test_config_errors_name_the_key(table: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        tariff(table)
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems
