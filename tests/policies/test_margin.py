"""The margin policy on hand-made readings, against figures computed by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest

from curtaild.core import economics as ec
from curtaild.core.snapshot import FleetSnapshot, MarketSnapshot, MinerReading
from curtaild.policies.margin import MarginConfig, MarginPolicy

NOW = 1_000.0


def market(hashprice: float = 0.05, tariff: float = 0.06) -> MarketSnapshot:
    return MarketSnapshot(hashprice_usd_per_th_day=hashprice, hashprice_source="test",
                          hashprice_age_s=0.0, tariff_usd_per_kwh=tariff, tariff_source="test",
                          tariff_age_s=0.0, pool_fee=0.02)


def s19j(key: str = "S19J", **kw: object) -> MinerReading:
    """A stock S19j Pro: 104 TH/s, 3068 W, no power limit."""
    base = {
        "key": key, "ip": "127.0.0.1", "make": "AntMiner", "model": "S19j Pro",
        "firmware": "antminer", "state": "mining", "hashrate_ths": 104.0, "power_w": 3068.0,
        "power_source": "nameplate", "power_limit_w": None, "temp_c": 70.0,
        "nameplate_hashrate_ths": 104.0, "nameplate_power_w": 3068.0, "observed_at": NOW,
    }
    return MinerReading(**{**base, **kw})  # type: ignore[arg-type]


def xp(key: str = "XP", **kw: object) -> MinerReading:
    """An S19 XP on LuxOS: 141 TH/s, 3010 W, power targets 1200..3600 W."""
    spec = {"model": "S19 XP", "firmware": "luxos", "hashrate_ths": 141.0, "power_w": 3010.0,
            "power_source": "firmware", "nameplate_hashrate_ths": 141.0,
            "nameplate_power_w": 3010.0, "supports_power_limit": True,
            "min_power_limit_w": 1200.0, "max_power_limit_w": 3600.0}
    return s19j(key, **{**spec, **kw})


def decide(r: MinerReading, mk: MarketSnapshot | None = None, **cfg: object):
    """The policy's ranking at the price of the moment (``switching_costs`` off unless a test
    asks: what a change costs is weighed in tests/policies/test_margin_switching.py)."""
    cfg.setdefault("switching_costs", False)
    policy = MarginPolicy(MarginConfig(**cfg))  # type: ignore[arg-type]
    return policy.decide(FleetSnapshot(miners=(r,), taken_at=NOW), mk or market(), NOW).get(r.key)


def test_profitable_machine_runs_with_hand_computed_margin() -> None:
    # revenue 104 x 0.05 x 0.98 = 5.096, energy 3.068 x 24 x 0.06 = 4.41792 -> +0.67808
    d = decide(s19j())
    assert d.action == "run"
    assert d.run_margin_usd_per_day == pytest.approx(0.67808, abs=1e-9)
    assert d.margin_usd_per_day == pytest.approx(0.67808, abs=1e-9)
    assert d.power_limit_w is None
    assert "+0.68 USD/day" in d.reason
    assert "0.0500 USD/TH/day" in d.reason and "0.060 USD/kWh" in d.reason


def test_losing_machine_sleeps_at_idle_cost() -> None:
    # energy at 0.08: 5.89056 -> run margin -0.79456; asleep: -0.040 x 24 x 0.08 = -0.0768
    d = decide(s19j(), market(tariff=0.08))
    assert d.action == "sleep"
    assert d.run_margin_usd_per_day == pytest.approx(-0.79456, abs=1e-9)
    assert d.margin_usd_per_day == pytest.approx(-0.0768, abs=1e-9)
    assert "-0.79 USD/day" in d.reason and "0.080 USD/kWh" in d.reason


def test_slightly_negative_margin_still_runs_when_better_than_idle() -> None:
    # Break-even tariff 0.0692090; just above it, run loses less than the idle draw costs.
    d = decide(s19j(), market(tariff=0.0693))
    assert d.run_margin_usd_per_day < 0
    assert d.run_margin_usd_per_day > -0.040 * 24 * 0.0693
    assert d.action == "run"


def test_asleep_machine_judged_at_nameplate() -> None:
    asleep = s19j(state="sleeping", hashrate_ths=0.0, power_w=40.0, power_source="idle_estimate")
    d = decide(asleep)
    assert d.action == "run"
    assert d.run_margin_usd_per_day == pytest.approx(0.67808, abs=1e-9)
    assert "nameplate" in d.reason


def test_measured_figures_used_when_mining() -> None:
    # a degraded board: 90 TH/s at 3068 W -> 90 x 0.049 - 4.41792 = 0.00 - 0.00792
    d = decide(s19j(hashrate_ths=90.0))
    assert d.run_margin_usd_per_day == pytest.approx(90 * 0.049 - 4.41792, abs=1e-9)


def test_sleeping_machine_with_firmware_idle_uses_it() -> None:
    asleep = s19j(state="sleeping", hashrate_ths=0.0, power_w=100.0, power_source="firmware")
    d = decide(asleep, market(tariff=0.08))
    assert d.action == "sleep"
    assert d.margin_usd_per_day == pytest.approx(-0.1 * 24 * 0.08, abs=1e-9)


def test_machine_that_cannot_sleep_runs_and_says_why() -> None:
    d = decide(s19j(supports_sleep=False), market(tariff=0.08))
    assert d.action == "run"
    assert "cannot sleep" in d.reason
    assert d.run_margin_usd_per_day == pytest.approx(-0.79456, abs=1e-9)


def test_unreachable_and_unknown_machines_get_no_opinion() -> None:
    assert decide(s19j(state="unreachable", hashrate_ths=0.0, power_w=0.0)) is None
    unknown = s19j(state="sleeping", hashrate_ths=0.0, power_w=40.0,
                   nameplate_hashrate_ths=None, nameplate_power_w=None)
    assert decide(unknown) is None


def test_decide_keys_by_reading_key() -> None:
    fleet = FleetSnapshot(miners=(s19j("A"), s19j("B", state="unreachable"), xp("C")),
                          taken_at=NOW)
    out = MarginPolicy(MarginConfig()).decide(fleet, market(), NOW)
    assert set(out) == {"A", "C"}


def test_limited_machine_scaled_back_to_nameplate() -> None:
    # Nameplate 100 TH/s at 3040 W, idle 40; this one is 5 % weak: limited to 2040 W it hashes
    # 95 x (2000/3000)^0.75, i.e. 95 TH/s at full power (not the nameplate's 100).
    h_limited = 95 * (2000 / 3000) ** 0.75
    r = s19j(hashrate_ths=h_limited, power_w=2040.0, power_source="firmware",
             power_limit_w=2040.0, nameplate_hashrate_ths=100.0, nameplate_power_w=3040.0,
             supports_power_limit=True, min_power_limit_w=1200.0, max_power_limit_w=3400.0)
    d = decide(r, use_power_limits=False)
    # full power: 95 x 0.049 - 3.04 x 1.44 = 4.655 - 4.3776 = 0.2774
    assert d.run_margin_usd_per_day == pytest.approx(0.2774, abs=1e-9)
    assert d.action == "run"
    assert "measured at 2040 W, scaled" in d.reason


def test_limit_chosen_when_it_beats_run_and_sleep() -> None:
    # 0.045 USD/TH/day, 0.09 USD/kWh: full power 141 x 0.0441 - 3.010 x 2.16 = -0.2835;
    # asleep -0.0864; the optimum is below the firmware minimum, so 1200 W:
    # 141 x (1160/2970)^0.75 = 69.66 TH/s -> 69.66 x 0.0441 - 1.2 x 2.16 = +0.480
    d = decide(xp(), market(0.045, 0.09))
    assert d.action == "limit"
    assert d.power_limit_w == 1200.0
    assert d.run_margin_usd_per_day == pytest.approx(-0.2835, abs=1e-9)
    assert d.margin_usd_per_day == pytest.approx(0.48009, abs=1e-4)
    assert d.reason.startswith("limit 1200 W: margin +0.48 USD/day")


def test_limit_must_beat_run_by_the_gain() -> None:
    # 0.045, 0.07: the optimum 2307 W earns +1.2021 vs +1.1613 at full power: gain 0.041.
    assert decide(xp(), market(0.045, 0.07)).action == "run"
    d = decide(xp(), market(0.045, 0.07), min_limit_gain_usd_per_day=0.0)
    assert d.action == "limit"
    assert d.power_limit_w == pytest.approx(2307, abs=1)
    assert d.margin_usd_per_day - d.run_margin_usd_per_day == pytest.approx(0.0408, abs=1e-3)


def test_already_limited_machine_stays_limited_within_the_gain() -> None:
    # Same market, the machine already at 2307 W: full power beats the limit by less than the
    # gain in neither direction -> no flapping back to run.
    h = ec.hashrate_at_power_ths(power_w=2307, ref_power_w=3010, ref_hashrate_ths=141,
                                 idle_power_w=40, exponent=0.75)
    limited = xp(hashrate_ths=h, power_w=2307.0, power_limit_w=2307.0)
    d = decide(limited, market(0.045, 0.07))
    assert d.action == "limit"
    assert d.run_margin_usd_per_day == pytest.approx(1.1613, abs=1e-6)


def test_closed_form_optimum_beats_every_whole_watt() -> None:
    mk = market(0.045, 0.07)
    d = decide(xp(), mk, min_limit_gain_usd_per_day=0.0, limit_search_steps=2)
    assert 1200 < d.power_limit_w < 3010  # found by the closed form, not the 2-point grid

    def margin(p: float) -> float:
        h = ec.hashrate_at_power_ths(power_w=p, ref_power_w=3010, ref_hashrate_ths=141,
                                     idle_power_w=40, exponent=0.75)
        return ec.margin_usd_per_day(hashrate_ths=h, power_w=p, hashprice_usd_per_th_day=0.045,
                                     tariff_usd_per_kwh=0.07, pool_fee=0.02)

    assert d.margin_usd_per_day == pytest.approx(margin(d.power_limit_w))
    assert all(margin(p) <= d.margin_usd_per_day + 1e-9 for p in range(1200, 3011))


def test_limit_range_capped_at_nameplate_and_firmware_max() -> None:
    # Cheap energy: more power is better, but never above nameplate -> run, not a limit.
    assert decide(xp(), market(0.09, 0.02), min_limit_gain_usd_per_day=0.0).action == "run"


def test_power_limits_disabled_or_unsupported() -> None:
    assert decide(xp(), market(0.045, 0.09), use_power_limits=False).action == "sleep"
    assert decide(replace(xp(), supports_power_limit=False), market(0.045, 0.09)).action == "sleep"


def test_limit_loses_to_sleep_when_even_the_minimum_loses() -> None:
    # An M30S (88 TH/s, 3344 W, 38 J/TH) at 0.045/0.07: at 1500 W it still loses ~0.42/day,
    # more than its idle draw (0.0672): sleep.
    m30s = xp("M30S", model="M30S", firmware="whatsminer", hashrate_ths=88.0, power_w=3344.0,
              nameplate_hashrate_ths=88.0, nameplate_power_w=3344.0, min_power_limit_w=1500.0)
    d = decide(m30s, market(0.045, 0.07))
    assert d.action == "sleep"
    assert d.margin_usd_per_day == pytest.approx(-0.0672, abs=1e-9)


def test_machine_that_cannot_sleep_may_still_be_limited() -> None:
    d = decide(replace(xp(), supports_sleep=False), market(0.045, 0.09))
    assert d.action == "limit" and d.power_limit_w == 1200.0


def test_pool_fee_comes_from_the_config() -> None:
    d = decide(s19j(), pool_fee=0.0)
    assert d.run_margin_usd_per_day == pytest.approx(104 * 0.05 - 4.41792, abs=1e-9)
