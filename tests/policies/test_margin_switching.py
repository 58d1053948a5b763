"""The margin policy weighs what a change costs (issue 16): a sleep must gain more over the
decision horizon than the wake that will end it, a wake pays its boot and ramp, a new limit its
restart; with a tariff forecast it will not wake into a spike it can see, nor sleep through a
blip shorter than what the wake after it would cost. Figures by hand in each docstring."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from pydantic import ValidationError

from curtaild.core import economics as ec
from curtaild.core.snapshot import FleetSnapshot, MarketSnapshot, MinerReading
from curtaild.core.switching import SwitchingCosts
from curtaild.policies.lookahead import price_path
from curtaild.policies.margin import MarginConfig, MarginPolicy

NOW = 1_800_000_000.0
DAY = 86_400.0


def market(tariff: float, hashprice: float = 0.05,
           forecast: tuple[tuple[float, float], ...] = ()) -> MarketSnapshot:
    return MarketSnapshot(hashprice_usd_per_th_day=hashprice, hashprice_source="test",
                          hashprice_age_s=0.0, tariff_usd_per_kwh=tariff, tariff_source="test",
                          tariff_age_s=0.0, pool_fee=0.02,
                          tariff_forecast=((NOW, tariff), *forecast))


def s19j(**kw: object) -> MinerReading:
    """A stock S19j Pro: 104 TH/s at 3068 W, boots in 90 s, no power limit."""
    base = {"key": "J", "ip": "127.175.0.1", "make": "AntMiner", "model": "S19j Pro",
            "firmware": "antminer", "state": "mining", "hashrate_ths": 104.0,
            "power_w": 3068.0, "power_source": "nameplate", "power_limit_w": None,
            "temp_c": 70.0, "nameplate_hashrate_ths": 104.0, "nameplate_power_w": 3068.0,
            "observed_at": NOW}
    return MinerReading(**{**base, **kw})  # type: ignore[arg-type]


def asleep_s19j() -> MinerReading:
    return s19j(state="sleeping", hashrate_ths=0.0, power_w=40.0, power_source="firmware")


def m30s(**kw: object) -> MinerReading:
    """A Whatsminer M30S: 88 TH/s at 3344 W, targets 1500..3600 W, restart 120 s."""
    base = {"key": "W", "ip": "127.175.0.2", "make": "WhatsMiner", "model": "M30S",
            "firmware": "whatsminer", "state": "mining", "hashrate_ths": 88.0,
            "power_w": 3344.0, "power_source": "firmware", "power_limit_w": 3344.0,
            "temp_c": 60.0, "nameplate_hashrate_ths": 88.0, "nameplate_power_w": 3344.0,
            "supports_power_limit": True, "min_power_limit_w": 1500.0,
            "max_power_limit_w": 3600.0, "observed_at": NOW}
    return MinerReading(**{**base, **kw})  # type: ignore[arg-type]


def decide(r: MinerReading, mk: MarketSnapshot, **cfg: object):
    policy = MarginPolicy(MarginConfig(pool_fee=0.02, **cfg))  # type: ignore[arg-type]
    return policy.decide(FleetSnapshot((r,), NOW), mk, NOW)[r.key]


# S19j Pro at hash price 0.05, fee 2 %: revenue 104 x 0.049 = 5.096 USD/day; the wake that ends
# a sleep forgoes 90 s of it: 5.096 x 90 / 86400 = 0.0053083 USD. Sleeping instead of running
# gains (3.068 - 0.040) x 24 x c - 5.096 USD/day = 72.672 c - 5.096.
LATER_WAKE = 5.096 * 90 / DAY


def test_a_sleep_must_gain_more_over_the_horizon_than_its_later_wake() -> None:
    """c = 0.071: running loses 0.1319 USD/day, asleep 0.0682: sleeping is better by 0.0637 USD/
    day, 0.0027 USD over the hour, less than the 0.0053 USD wake: kept running (the price of
    the moment alone would sleep it). c = 0.08: 0.7178 USD/day, 0.0299 USD: slept."""
    kept = decide(s19j(), market(0.071))
    assert kept.action == "run"
    assert kept.run_margin_usd_per_day == pytest.approx(5.096 - 3.068 * 24 * 0.071)
    assert kept.reason.startswith(
        "run: kept (sleep would gain 0.0027 USD over the next 1.0 h, not more than its later "
        "wake cost 0.0053 USD (boot 90 s)); margin -0.13 USD/day at full power")
    assert decide(s19j(), market(0.071), switching_costs=False).action == "sleep"
    slept = decide(s19j(), market(0.08))
    assert slept.action == "sleep"
    assert (72.672 * 0.08 - 5.096) / 24 == pytest.approx(0.029907, abs=1e-6)
    assert slept.reason.startswith(
        "sleep: gains 0.0299 USD over the next 1.0 h > later wake cost 0.0053 USD (boot 90 s); "
        "margin -0.79 USD/day at full power")


def test_a_longer_horizon_lets_a_smaller_gain_pay_for_the_wake() -> None:
    """c = 0.0715: 72.672 x 0.0715 - 5.096 = 0.10005 USD/day: 0.00417 USD in an hour (kept),
    0.00834 USD in two (> 0.00531: slept)."""
    assert decide(s19j(), market(0.0715)).action == "run"
    two_h = decide(s19j(), market(0.0715), decision_horizon_s=7200.0)
    assert two_h.action == "sleep"
    assert "gains 0.0083 USD over the next 2.0 h > later wake cost 0.0053 USD" in two_h.reason


def test_a_wake_pays_its_boot_at_the_price_now() -> None:
    """Asleep (firmware idle 40 W) at c = 0.06: running earns 5.096 - 4.41792 = +0.67808
    USD/day, asleep -0.0576: waking gains 0.73568/24 = 0.0307 USD over the hour; the boot
    forgoes 90 s of that difference: 0.73568 x 90/86400 = 0.0008 USD."""
    d = decide(asleep_s19j(), market(0.06))
    assert d.action == "run"
    assert d.reason.startswith("run: gains 0.0307 USD over the next 1.0 h > wake cost 0.0008 USD "
                               "(boot 90 s); margin +0.68 USD/day")


def test_a_whatsminer_wake_names_its_boot_and_ramp() -> None:
    """M50 figures from its reading: boot 120 s + ramp 480 s = 325.7 s of hashing forgone."""
    m50 = m30s(key="M", model="M50", hashrate_ths=0.0, power_w=35.0, state="sleeping",
               nameplate_hashrate_ths=114.0, nameplate_power_w=3306.0)
    d = decide(m50, market(0.04), use_power_limits=False)
    assert d.action == "run" and "(boot 120 s + ramp 480 s)" in d.reason


def test_no_wake_into_a_spike_the_forecast_shows() -> None:
    """Asleep, c = 0.06 now but 0.30 from 5 minutes on (forecast). Waking: -0.0008 (boot) +
    0.67808 x 300/86400 = +0.0024 for the 5 minutes, then a sleep again (-0.0053, its later
    wake): -0.0037 against staying asleep (which loses 0.0002 more in those 5 min): kept
    asleep. The spike two hours out (past the 1 h horizon), or no forecast: woken."""
    spike = ((NOW + 300, 0.30),)
    d = decide(asleep_s19j(), market(0.06, forecast=spike))
    assert d.action == "sleep"
    assert d.reason.startswith("sleep: kept (run at full power would gain ")
    assert "over the next 1.0 h of forecast, not more than its wake cost 0.0008 USD" in d.reason
    assert decide(asleep_s19j(), market(0.06, forecast=((NOW + 7200, 0.30),))).action == "run"
    assert decide(asleep_s19j(), market(0.06)).action == "run"


def test_no_sleep_through_a_blip_shorter_than_its_wake_is_worth() -> None:
    """Running, c = 0.10 now (losing 2.267 USD/day) and 0.05 again in 60 s: running through
    loses 2.267 x 60/86400 = 0.0016 USD, less than the 0.0053 USD wake a sleep would need:
    kept running. The same price for 30 minutes loses 0.047 USD: slept."""
    blip = decide(s19j(), market(0.10, forecast=((NOW + 60, 0.05),)))
    assert blip.action == "run"
    assert "kept (sleep would gain" in blip.reason and "of forecast" in blip.reason
    long = decide(s19j(), market(0.10, forecast=((NOW + 1800, 0.05),)))
    assert long.action == "sleep"
    assert decide(s19j(), market(0.10)).action == "sleep"  # no forecast: the price now holds


def _curve_margin(p: float, c: float, hashprice: float = 0.075) -> float:
    h = ec.hashrate_at_power_ths(power_w=p, ref_power_w=3344, ref_hashrate_ths=88,
                                 idle_power_w=40, exponent=0.75)
    return ec.margin_usd_per_day(hashrate_ths=h, power_w=p, hashprice_usd_per_th_day=hashprice,
                                 tariff_usd_per_kwh=c, pool_fee=0.02)


def limited_m30s(limit_w: float = 1600.0) -> MinerReading:
    """Mining at a limit, hashing as the curve says (88 x ((P - 35)/3309)**0.75)."""
    h = 88.0 * ((limit_w - 35) / 3309) ** 0.75
    return m30s(power_limit_w=limit_w, power_w=limit_w, hashrate_ths=round(h, 2))


def test_a_new_limit_must_pay_for_its_restart_and_the_band() -> None:
    """M30S at hash price 0.075 limited to 1600 W. At c = 0.05 full power is best: back there
    gains (m_full - m_1600)/24 over the hour and costs 120 s of (m_full - idle margin) plus the
    band (min_limit_gain 0.05 USD/day for the hour): by hand below -- restored. At c = 0.066
    the best target, 2479 W, gains 0.0031 USD, less than 0.0039: kept at 1600 W, which the
    price of the moment alone would not keep."""
    c = 0.05
    m_full = 88 * 0.075 * 0.98 - 3.344 * 24 * c
    gain = (m_full - _curve_margin(1600.0, c)) / 24
    cost = (m_full + 0.040 * 24 * c) * 120 / DAY + 0.05 / 24
    assert (round(gain, 4), round(cost, 4)) == (0.0288, 0.0056)
    d = decide(limited_m30s(), market(c, hashprice=0.075))
    assert d.action == "run" and d.power_limit_w is None
    assert ("run: gains 0.0288 USD over the next 1.0 h > restart cost 0.0056 USD "
            "(restart 120 s); margin +2.46 USD/day at full power") in d.reason
    kept = decide(limited_m30s(), market(0.066, hashprice=0.075))
    assert (kept.action, kept.power_limit_w) == ("limit", 1600.0)
    assert kept.reason.startswith(
        "limit 1600 W: kept (limit 2479 W would gain 0.0031 USD over the next 1.0 h, not more "
        "than its restart cost 0.0039 USD (restart 120 s))")
    myopic = decide(limited_m30s(), market(0.066, hashprice=0.075), switching_costs=False)
    assert myopic.power_limit_w == 2479.0


def test_fast_boot_makes_a_new_limit_cheaper() -> None:
    """The same 2479 W move with a reading that says its restart is free (fast boot) pays
    only the band, 0.05/24 = 0.0021 USD < 0.0031: sent."""
    fast = decide(replace(limited_m30s(), switching=SwitchingCosts(120.0, 480.0, 0.0)),
                  market(0.066, hashprice=0.075))
    assert (fast.action, fast.power_limit_w) == ("limit", 2479.0)
    assert "gains 0.0031 USD over the next 1.0 h > restart cost 0.0021 USD (restart 0 s)" \
        in fast.reason


def test_noisy_polls_at_the_target_never_ask_for_a_change() -> None:
    """An M30S at the target the prices give (1967 W at 0.075 / 0.07): 200 polls with 1 %
    hashrate and 0.5 % power noise all hold it (no restart for noise)."""
    rng = random.Random(16)
    for _ in range(200):
        h = 88.0 * ((1967 - 35) / 3309) ** 0.75 * (1 + rng.gauss(0, 0.01))
        r = m30s(power_limit_w=1967.0, hashrate_ths=round(h, 3),
                 power_w=round(1967 * (1 + rng.gauss(0, 0.005)), 1))
        d = decide(r, market(0.07, hashprice=0.075))
        assert (d.action, d.power_limit_w) == ("limit", 1967.0)
        assert "gains" not in d.reason


def test_a_machine_booting_after_our_wake_is_not_charged_the_wake_again() -> None:
    """Read asleep while its wake is pending: it is heading to full power, so staying there is
    free (no 'kept asleep' on a price that barely pays)."""
    booting = replace(asleep_s19j(), command_state="pending", commanded_action="run")
    d = decide(booting, market(0.069))
    assert d.action == "run" and "kept" not in d.reason and "gains" not in d.reason


def test_price_path_uses_only_rows_ahead_within_the_horizon() -> None:
    mk = market(0.05, forecast=((NOW - 900, 0.9), (NOW + 600, 0.07), (NOW + 4000, 0.2)))
    path = price_path(mk, NOW, 3600.0)
    assert [(s.duration_s, s.tariff_usd_per_kwh) for s in path.segments] == [
        (600.0, 0.05), (3000.0, 0.07)]
    assert path.from_forecast and path.mean_tariff_usd_per_kwh() == pytest.approx(
        (600 * 0.05 + 3000 * 0.07) / 3600)
    flat = price_path(market(0.05, forecast=((NOW + 600, 0.05),)), NOW, 3600.0)
    assert not flat.from_forecast  # a persistence forecast is no forecast


@pytest.mark.parametrize("value, message", [(0.0, "greater than 0"),
                                            (8 * DAY, "prices move within a day")])
def test_decision_horizon_bounds(value: float, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MarginConfig(decision_horizon_s=value)
