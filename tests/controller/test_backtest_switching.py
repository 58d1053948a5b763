"""The backtest pays what the policy weighs (issue 16): a wake's boot *and ramp*, a new limit's
restart, on published (lagged) prices; a forecast column is seen ahead of its rows, never the
real price; the report says how often each machine changed its limit in a day."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from curtaild.controller.backtest.foresight import machine_schedule
from curtaild.controller.backtest.machines import build_machines, fleet_plan
from curtaild.controller.backtest.prices import PriceError, parse_prices_text
from curtaild.controller.backtest.sim import SimSettings, _market, simulate
from curtaild.controller.guards import GuardConfig
from curtaild.core.snapshot import Command
from curtaild.policies.margin import MarginConfig, MarginPolicy

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_750_000_000
FEE = 0.02


def hourly(*tariffs: float, hashprice: float = 0.05) -> str:
    return "timestamp,hashprice_usd_per_th_day,tariff_usd_per_kwh\n" + "".join(
        f"{T0 + 3600 * i},{hashprice},{c}\n" for i, c in enumerate(tariffs))


def m50_ths(power_w: float) -> float:
    """The emulator's curve for an M50: 114 TH/s at 3306 W, idle 35 W, exponent 0.75."""
    return 114.0 * ((power_w - 35.0) / 3271.0) ** 0.75


def test_wake_pays_the_boot_and_the_ramp_by_hand() -> None:
    """An M50 woken at T0: 120 s booting at 35 W, then 480 s of ramp (power linear from 35 W
    to 3306 W: 35 x 480 + 3271 x 240 J; hashrate 114 x (t/480)**0.75: 114 x 480/1.75 TH.s),
    then 3000 s at 3306 W / 114 TH/s. Hash price 0.05, tariff 0.04, fee 2 %."""
    [m] = build_machines(fleet_plan("M50=1"))
    m.apply(Command(key=m.key, ip=m.ip, action="sleep", power_limit_w=None, reason="t",
                    delta_power_w=0.0), T0 - 60)
    m.apply(Command(key=m.key, ip=m.ip, action="run", power_limit_w=None, reason="t",
                    delta_power_w=0.0), T0)
    for a, b in ((T0, T0 + 50), (T0 + 50, T0 + 360), (T0 + 360, T0 + 400),
                 (T0 + 400, T0 + 3600)):  # integrated in any pieces
        if a == T0 + 360:  # half-way up the ramp: what the driver reads
            r = m.reading(a, 40.0)
            assert r.state == "mining" and r.power_w == pytest.approx(35 + 3271 * 0.5)
            assert r.hashrate_ths == pytest.approx(114 * 0.5 ** 0.75)
        m.advance(a, b, 0.05, 0.04, FEE)
    kwh = (35 * 120 + 35 * 480 + 3271 * 240 + 3306 * 3000) / 3.6e6
    ths_s = 114 * 480 / 1.75 + 114 * 3000
    assert m.energy_kwh == pytest.approx(kwh)
    assert m.revenue_usd == pytest.approx(ths_s * 0.05 * 0.98 / 86400)
    assert m.energy_cost_usd == pytest.approx(kwh * 0.04)
    assert (m.booting_s, m.mining_s) == (120.0, 3480.0)


def test_foresight_pays_the_same_ramp() -> None:
    """Asleep at the start, one cheap hour: foresight's only plan that earns is the wake, and
    its money is the hand figure above at that tariff."""
    [m] = build_machines(fleet_plan("M50=1"))
    m.state = "sleeping"
    s = machine_schedule(m, parse_prices_text(hourly(0.04, 0.04), "t.csv"), FEE)
    assert s.states[0] == 3306.0
    kwh = (35 * 120 + 35 * 480 + 3271 * 240 + 3306 * 3000) / 3.6e6
    rev = (114 * 480 / 1.75 + 114 * 3000) * 0.05 * 0.98 / 86400
    assert s.revenue_usd[0] - s.energy_cost_usd[0] == pytest.approx(rev - kwh * 0.04)


def test_hand_checked_lag_restart_sleep_and_wake_with_its_ramp() -> None:
    """An M50 (Whatsminer: restart 120 s per new limit, boot 120 s, ramp 480 s), hash price
    0.05, fee 2 %, tariffs by hour 0.03, 0.06, 0.06, 0.15, 0.03, 0.03, each seen an hour late.

    h0, h1 see 0.03: full power (3306 W, 114 TH/s). h2 sees 0.06: the policy's best limit is
    the closed form on its curve (idle 40 W): x = (24 x 0.06/1000 x 3266 / (0.75 x 114 x 0.049))
    ** -4 = 0.62968, 40 + 3266 x = 2097 W; it gains ~0.40 USD/day, 0.0167 USD over the hour,
    more than the 120 s restart (~0.0018 USD): sent; the machine draws 35 W for 120 s, then
    2097 W. h3 sees 0.06: kept. h4 sees 0.15: asleep (it loses ~3.6 USD/day limited) -- while
    the real price is back at 0.03 (the lag). h5 sees 0.03: woken at nameplate (the power
    curtaild wants back), 120 s boot + 480 s ramp, then full power."""
    cfg = GuardConfig(min_dwell_s=0.0, hysteresis_usd_per_day=0.10, ramp_w_per_min=1e9)
    series = parse_prices_text(hourly(0.03, 0.06, 0.06, 0.15, 0.03, 0.03), "t.csv")
    r = simulate(MarginPolicy(MarginConfig(pool_fee=FEE)), build_machines(fleet_plan("M50=1")),
                 series, SimSettings(guards=cfg, pool_fee=FEE, step_s=3600.0))
    m = r.machines[0]
    assert [(t - T0, a, p) for t, a, p in m.events] == [
        (7200, "limit", 2097.0), (14400, "sleep", None), (18000, "run", 3306.0)]
    assert (m.limit_changes, m.sleeps, m.wakes) == (2, 1, 1)
    per_ths_s = 0.05 * 0.98 / 86400
    hours = [  # (kWh, TH.s, tariff)
        (3.306, 114 * 3600, 0.03),
        (3.306, 114 * 3600, 0.06),
        ((35 * 120 + 2097 * 3480) / 3.6e6, m50_ths(2097) * 3480, 0.06),
        (2.097, m50_ths(2097) * 3600, 0.15),
        (0.035, 0.0, 0.03),
        ((35 * 600 + 3271 * 240 + 3306 * 3000) / 3.6e6, 114 * (480 / 1.75 + 3000), 0.03),
    ]
    assert m.energy_kwh == pytest.approx(sum(k for k, _, _ in hours))
    assert m.revenue_usd == pytest.approx(sum(h for _, h, _ in hours) * per_ths_s)
    assert m.energy_cost_usd == pytest.approx(sum(k * c for k, _, c in hours))
    assert r.policy.margin_usd == pytest.approx(0.176826, abs=1e-6)
    assert r.always_on.margin_usd == pytest.approx(
        sum(114 * 3600 * per_ths_s - 3.306 * c for *_, c in hours), abs=1e-9)
    assert r.foresight.margin_usd >= r.policy.margin_usd
    assert m.max_limit_changes_per_day(r.start) == 2


def test_the_forecast_is_seen_ahead_of_its_rows_never_the_real_price() -> None:
    text = ("timestamp,hashprice_usd_per_th_day,tariff_usd_per_kwh,forecast_tariff_usd_per_kwh\n"
            + "".join(f"{T0 + 900 * i},0.05,{0.03 + i / 100},{0.5 + i / 100}\n"
                      for i in range(8)))
    s = parse_prices_text(text, "t.csv")
    assert s.rows[2].forecast_tariff_usd_per_kwh == pytest.approx(0.52)
    # at the start of row 2, row 1 published (lag one row), forecast 1 h ahead
    mk = _market(s, 1, FEE, None, T0 + 1800, 3600.0)
    assert mk.tariff_usd_per_kwh == pytest.approx(0.04)
    assert mk.tariff_forecast == ((T0 + 900, pytest.approx(0.04)),
                                  *((T0 + 900 * i, pytest.approx(0.5 + i / 100))
                                    for i in range(3, 7)))
    assert _market(s, 1, FEE, None, T0 + 1800).tariff_forecast == (
        (T0 + 900, pytest.approx(0.04)),)  # no --forecast-ahead-s: no forecast


def test_forecast_column_errors_name_the_cell() -> None:
    bad = ("timestamp,hashprice_usd_per_th_day,tariff_usd_per_kwh,forecast_tariff_usd_per_kwh\n"
           f"{T0},0.05,0.03,\n{T0 + 900},0.05,0.03,abc\n")
    with pytest.raises(PriceError, match=r"t.csv:3: forecast_tariff_usd_per_kwh: 'abc' is not"):
        parse_prices_text(bad, "t.csv")


def _curtaild(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "curtaild.controller.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_cli_forecast_flag_and_limit_changes_per_day(tmp_path: Path) -> None:
    prices = tmp_path / "p.csv"
    prices.write_text(hourly(0.03, 0.06, 0.06, 0.15, 0.03, 0.03))
    cfg = tmp_path / "c.toml"
    cfg.write_text('[fleet]\nhosts = []\n[hashprice]\nsource = "fixed"\nusd_per_th_day = 0.05\n'
                   '[tariff]\nkind = "flat"\nusd_per_kwh = 0.08\n'
                   '[policy]\nname = "margin"\npool_fee = 0.02\n'
                   '[guards]\nmin_dwell_s = 0\nramp_w_per_min = 1000000\n')
    base = ("--config", str(cfg), "backtest", "--prices", str(prices), "--fleet", "M50=1",
            "--step-s", "3600", "--no-plot")
    p = _curtaild(*base, "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["forecast_ahead_s"] == 0.0
    assert s["machines"][0]["max_limit_changes_per_day"] == 2
    assert s["max_limit_changes_per_machine_day"] == 2
    text = _curtaild(*base, cwd=tmp_path).stdout
    assert "no forecast" in text and "limit chg/day max" in text
    bad = _curtaild(*base, "--forecast-ahead-s", "-1", cwd=tmp_path)
    assert bad.returncode == 2 and "--forecast-ahead-s: must be 0 or more seconds" in bad.stderr


def test_a_day_of_prices_at_breakeven_buys_at_most_the_cap_plus_a_return() -> None:
    """An M50 under prices that swing for a day (2 h at 0.03: full power, 3 h at 0.07: its
    lowest limit, seen an hour late): every swing is worth a new limit on its own, so with no
    cap the machine re-limits at each swing; with max_limit_changes_per_day = 4 it makes at most 5
    changes in the day (4 limits and the return to full power), and never stays limited into
    the cheap day that follows (rule 6c never holds a machine curtailed)."""
    tariffs = [0.03, 0.03, 0.07, 0.07, 0.07] * 5 + [0.03] * 12  # 37 h
    series = parse_prices_text(hourly(*tariffs), "t.csv")
    policy = MarginPolicy(MarginConfig(pool_fee=FEE, decision_horizon_s=7200.0))

    def changes(cap: int) -> tuple[int, str | None]:
        cfg = GuardConfig(min_dwell_s=60.0, ramp_w_per_min=1e9, limit_dwell_s=900.0,
                          max_limit_changes_per_day=cap)
        r = simulate(policy, build_machines(fleet_plan("M50=1")), series,
                     SimSettings(guards=cfg, pool_fee=FEE, step_s=300.0))
        m = r.machines[0]
        day_one = [t for t in m.limit_change_at if t < T0 + 86400]
        last = m.reading(series.end, 40.0)
        return len(day_one), f"{last.state} {last.power_limit_w}"

    free, _ = changes(0)
    capped, end = changes(4)
    assert free >= 8, free
    assert capped <= 5, capped
    assert end == "mining 3306.0"
