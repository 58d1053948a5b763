"""The backtest's information model and its tight bound (issue 16, items 2 and 3).

Decisions on published prices only (``--price-lag-s``, default one row), settlement on the
real price; switching costs in the machines (boot on a wake, a restart on a new limit); the
``foresight`` baseline by dynamic programming, checked against brute force over every schedule
run on a simulated machine.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from curtaild.controller.backtest.foresight import ASLEEP, machine_schedule, power_options
from curtaild.controller.backtest.machines import build_machines, fleet_plan
from curtaild.controller.backtest.prices import parse_prices_text
from curtaild.controller.backtest.report import captured_share
from curtaild.controller.backtest.sim import SimSettings, simulate
from curtaild.controller.guards import GuardConfig
from curtaild.core.snapshot import Command
from curtaild.policies.margin import MarginConfig, MarginPolicy

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_750_000_000


def csv(*rows: tuple[float, float, float]) -> str:
    return "timestamp,hashprice_usd_per_th_day,tariff_usd_per_kwh\n" + "".join(
        f"{int(t)},{h},{c}\n" for t, h, c in rows)


def hourly(*hashprices: float, tariff: float = 0.08) -> str:
    return csv(*((T0 + 3600 * i, h, tariff) for i, h in enumerate(hashprices)))


def run(rows: str, fleet: str, *, price_lag_s: float | None = None):
    cfg = GuardConfig(min_dwell_s=0.0, hysteresis_usd_per_day=0.10, ramp_w_per_min=1e9)
    policy = MarginPolicy(MarginConfig(pool_fee=0.02))
    return simulate(policy, build_machines(fleet_plan(fleet)), parse_prices_text(rows, "t.csv"),
                    SimSettings(guards=cfg, pool_fee=0.02, step_s=3600.0,
                                price_lag_s=price_lag_s))


# ------------------------------------------------------------------- hand-checked
def test_hand_checked_lag_of_one_row_with_a_wake() -> None:
    """S19 (95 TH/s, 3250 W, idle 40 W, boot 90 s), pool fee 2 %, tariff 0.08 USD/kWh, hash
    price 0.10, 0.05, 0.10, 0.10 USD/TH/day, one hour each; the default lag (one row).

    Per hour mining: at 0.10 95*0.10*0.98/24 - 3.25*0.08 = 0.387917 - 0.26 = +0.127917;
    at 0.05 0.193958 - 0.26 = -0.066042; asleep -0.04*0.08 = -0.0032.
    The policy sees each hour's price an hour late: h0 (first row, nothing published yet: the
    first row) run +0.127917; h1 sees 0.10, runs at the real 0.05: -0.066042; h2 sees 0.05,
    sleeps through the real 0.10: -0.0032; h3 sees 0.10, wakes: 90 s booting at 40 W
    (-0.00008) then 3510 s mining (+0.124719). Total +0.183314: below always-on (+0.317709).
    Foresight sleeps h1 and wakes for h2 paying the boot: 0.127917 - 0.0032 + (-0.00008 +
    0.124719) + 0.127917 = +0.377273; the per-row optimum, boot-free: +0.380551.
    """
    r = run(hourly(0.10, 0.05, 0.10, 0.10), "S19=1")
    assert r.price_lag_s == 3600.0
    m = r.machines[0]
    assert (m.sleeps, m.wakes) == (1, 1)
    assert m.events[0][0] == T0 + 7200 and m.events[1][0] == T0 + 10800
    assert r.policy.margin_usd == pytest.approx(0.183314, abs=2e-6)
    assert r.always_on.margin_usd == pytest.approx(0.317709, abs=2e-6)
    assert r.foresight.margin_usd == pytest.approx(0.377273, abs=2e-6)
    assert r.optimum.margin_usd == pytest.approx(0.380551, abs=2e-6)
    assert (r.foresight.switches, r.optimum.switches) == (2, None)
    share = captured_share(r, r.foresight)
    assert share == pytest.approx((0.183314 - 0.317709) / (0.377273 - 0.317709), abs=1e-4)
    # Without the lag the same policy sleeps h1 and wakes at h2: foresight's schedule.
    clairvoyant = run(hourly(0.10, 0.05, 0.10, 0.10), "S19=1", price_lag_s=0.0)
    assert clairvoyant.policy.margin_usd == pytest.approx(0.377273, abs=2e-6)


def test_hand_checked_restart_on_a_new_limit() -> None:
    """M50 (114 TH/s, 3306 W, idle 35 W; Whatsminer restart 120 s), hash price 0.05, tariff
    0.08, fee 2 %: limited to 2000 W at 0 while hashing, it draws 35 W and hashes nothing for
    120 s, then 2000 W for 3480 s at 114*((2000-35)/3271)**0.75 TH/s. A limit set while it
    sleeps costs only the boot; with fast boot nothing."""
    [m] = build_machines(fleet_plan("M50=1"))
    m.restart_s = 120.0
    assert m.apply(Command(key=m.key, ip=m.ip, action="limit", power_limit_w=2000.0,
                           reason="t", delta_power_w=-1306.0), T0)
    assert m.reading(T0 + 60, 40.0).state == "mining"  # the controller sees it hashing on
    m.advance(T0, T0 + 3600, 0.05, 0.08, 0.02)
    ths = 114.0 * ((2000 - 35) / 3271) ** 0.75
    kwh = 0.035 * 120 / 3600 + 2.0 * 3480 / 3600
    assert m.energy_kwh == pytest.approx(kwh)
    assert m.revenue_usd == pytest.approx(ths * 0.05 * 0.98 * 3480 / 86400)
    assert m.energy_cost_usd == pytest.approx(kwh * 0.08)
    assert (m.booting_s, m.limited_s, m.limit_changes) == (120.0, 3480.0, 1)
    [fast] = build_machines(fleet_plan("M50=1"))
    fast.restart_s, fast.fast_boot = 120.0, True
    fast.apply(Command(key=fast.key, ip=fast.ip, action="limit", power_limit_w=2000.0,
                       reason="t", delta_power_w=-1306.0), T0)
    fast.advance(T0, T0 + 3600, 0.05, 0.08, 0.02)
    assert fast.booting_s == 0.0 and fast.limited_s == 3600.0


# ------------------------------------------------------------------ brute force
def _replay(fleet: str, rows: str, states: tuple[float, ...], restart_s: float) -> float:
    """Run a schedule (a state per row) on a fresh SimMachine; its margin."""
    [m] = build_machines(fleet_plan(fleet))
    m.restart_s = restart_s
    series = parse_prices_text(rows, "t.csv")
    for i, (row, p) in enumerate(zip(series.rows, states, strict=True)):
        if p == ASLEEP:
            m.apply(Command(key=m.key, ip=m.ip, action="sleep", power_limit_w=None, reason="t",
                            delta_power_w=0.0), row.at)
        else:
            m.apply(Command(key=m.key, ip=m.ip, action="run",
                            power_limit_w=p if m.supports_power_limit else None, reason="t",
                            delta_power_w=0.0), row.at)
        m.advance(row.at, series.row_end(i), row.hashprice_usd_per_th_day,
                  row.tariff_usd_per_kwh, 0.02)
    return m.revenue_usd - m.energy_cost_usd


@pytest.mark.parametrize("fleet,tariffs,restart_s", [
    ("M50=1", (0.03, 0.075, 0.5, 0.075), 120.0),  # tunable: sleep, 12 targets, restarts
    ("M50=1", (0.06, 0.07, 0.08, 0.09), 1800.0),  # restarts dear: few changes pay
    ("S19=1", (0.03, 0.2, 0.03, 0.2, 0.2, 0.03), 0.0),  # stock: run or sleep
])
def test_foresight_equals_brute_force_over_every_schedule(
        fleet: str, tariffs: tuple[float, ...], restart_s: float) -> None:
    rows = csv(*((T0 + 1800 * i, 0.05, c) for i, c in enumerate(tariffs)))
    [m] = build_machines(fleet_plan(fleet))
    m.restart_s = restart_s
    series = parse_prices_text(rows, "t.csv")
    opts = power_options(m)
    assert len(opts) == (13 if fleet.startswith("M50") else 2)  # asleep + 12 targets
    best = max(_replay(fleet, rows, s, restart_s)
               for s in itertools.product(opts, repeat=len(tariffs)))
    sched = machine_schedule(m, series, 0.02)
    dp = sum(sched.revenue_usd) - sum(sched.energy_cost_usd)
    assert dp == pytest.approx(best, abs=1e-9)
    # and the DP's own accounting is the machine's, schedule for schedule
    assert dp == pytest.approx(_replay(fleet, rows, tuple(sched.states), restart_s), abs=1e-9)


@pytest.mark.parametrize("dip_s,sleeps", [(1800, True), (100, False)])
def test_foresight_sleeps_a_dip_only_when_it_pays_for_the_boot(dip_s: int, sleeps: bool) -> None:
    """S19, tariff 0.05, hash price 0.05 (+0.755 USD/day running) with a dip to 0.035
    (-0.642 USD/day; asleep -0.048). Sleeping through the dip saves 0.594 USD/day of it; the
    wake after it forgoes 90 s of +0.803 USD/day (running vs asleep) = 0.000836 USD. A 30-min
    dip saves 0.0124 USD: slept. A 100 s dip saves 0.000687 USD: run through."""
    rows = csv((T0, 0.05, 0.05), (T0 + 1800, 0.035, 0.05), (T0 + 1800 + dip_s, 0.05, 0.05))
    [m] = build_machines(fleet_plan("S19=1"))
    sched = machine_schedule(m, parse_prices_text(rows, "t.csv"), 0.02)
    assert (sched.states[1] == ASLEEP) is sleeps
    assert sched.switches == (2 if sleeps else 0)


# -------------------------------------------------------------------------- CLI
def _curtaild(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "curtaild.controller.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_cli_json_every_baseline_lag_and_bad_lag(tmp_path: Path) -> None:
    prices = tmp_path / "p.csv"
    prices.write_text(hourly(0.10, 0.05, 0.10, 0.10))
    cfg = tmp_path / "c.toml"
    cfg.write_text('[fleet]\nhosts = []\n[hashprice]\nsource = "fixed"\nusd_per_th_day = 0.05\n'
                   '[tariff]\nkind = "flat"\nusd_per_kwh = 0.08\n'
                   '[policy]\nname = "margin"\npool_fee = 0.02\n'
                   '[guards]\nmin_dwell_s = 0\nramp_w_per_min = 1000000\n')
    base = ("--config", str(cfg), "backtest", "--prices", str(prices), "--fleet", "S19=1",
            "--step-s", "3600", "--no-plot")
    p = _curtaild(*base, "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert set(s["strategies"]) == {"policy", "always_on", "optimum", "foresight"}
    assert s["price_lag_s"] == 3600.0
    assert s["strategies"]["optimum"]["switches"] is None
    assert s["strategies"]["foresight"]["switches"] == 2
    assert s["strategies"]["foresight"]["margin_usd"] == pytest.approx(0.377273, abs=1e-4)
    assert s["captured_share_of_foresight_gain"] == pytest.approx(-2.2563, abs=1e-3)
    text = _curtaild(*base, cwd=tmp_path).stdout
    assert "foresight" in text and " n/a " in text and "3600 s after each row" in text
    bad = _curtaild(*base, "--price-lag-s", "-5", cwd=tmp_path)
    assert bad.returncode == 2 and "--price-lag-s: must be 0 or more seconds" in bad.stderr


def test_real_month_sample_parses_as_october_2024_in_quarter_hours() -> None:
    """data/backtest/ercot_hbsouth_2024-10_month.csv: recorded ERCOT HB_SOUTH prices
    (data/backtest/README.md), 2,976 quarter-hours from 2024-10-01 00:00 CDT."""
    path = ROOT / "data" / "backtest" / "ercot_hbsouth_2024-10_month.csv"
    s = parse_prices_text(path.read_text(), str(path))
    assert len(s.rows) == 2976 and s.end - s.start == 31 * 86400
    assert s.start == 1727758800.0  # 2024-10-01T05:00:00Z
    assert {round(b.at - a.at) for a, b in itertools.pairwise(s.rows)} == {900}
    tariffs = [r.tariff_usd_per_kwh for r in s.rows]
    assert min(tariffs) == pytest.approx(0.0078, abs=5e-5)
    assert max(tariffs) == pytest.approx(0.429, abs=5e-4)
    hashprices = [r.hashprice_usd_per_th_day for r in s.rows]
    assert (min(hashprices), max(hashprices)) == (0.043281, 0.052704)
