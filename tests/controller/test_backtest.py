"""The backtest: CSV parsing, a hand-checked accounting case, the baselines, the guards in the
loop, and the CLI end to end (a real `curtaild backtest` process writing a real PNG)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from curtaild.controller.backtest.machines import (
    NO_SLEEP_FIRMWARE,
    POWER_LIMIT_FIRMWARE,
    build_machines,
    fleet_plan,
    hashrate_at_ths,
)
from curtaild.controller.backtest.prices import PriceError, parse_prices_text
from curtaild.controller.backtest.sim import SimSettings, _option_rates, simulate
from curtaild.controller.guards import GuardConfig
from curtaild.core.models import MODELS
from curtaild.emulator.fleet import FleetError
from curtaild.policies.margin import MarginConfig, MarginPolicy

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "backtest" / "ercot_houston_week.csv"
T0 = 1_750_000_000  # unix s, a whole hour


def csv(*rows: tuple[float, float, float]) -> str:
    return "timestamp,hashprice_usd_per_th_day,tariff_usd_per_kwh\n" + "".join(
        f"{int(t)},{h},{c}\n" for t, h, c in rows)


def run(rows: str, fleet: str, *, step_s: float = 3600.0, price_lag_s: float = 0.0,
        **guards: float):
    """Decisions on each row's own price (lag 0) unless told: these cases check accounting and
    the guards; the information model is tests/controller/test_backtest_foresight.py's."""
    cfg = GuardConfig(**{"min_dwell_s": 0.0, "hysteresis_usd_per_day": 0.10,
                         "ramp_w_per_min": 1e9, **guards})
    policy = MarginPolicy(MarginConfig(pool_fee=0.02))
    machines = build_machines(fleet_plan(fleet))
    return simulate(policy, machines, parse_prices_text(rows, "t.csv"),
                    SimSettings(guards=cfg, pool_fee=0.02, step_s=step_s,
                                price_lag_s=price_lag_s))


# ------------------------------------------------------------------- accounting
def test_hand_checked_two_machines_three_hours() -> None:
    """S21 (200 TH/s, 3500 W) and S19 (95 TH/s, 3250 W, idle 40 W, boot 90 s), pool fee 2 %,
    tariff 0.08 USD/kWh, hash price 0.05, 0.05, then 0.10 USD/TH/day, one hour each.

    S19 at 0.05: run margin 95*0.05*0.98 - 3.25*24*0.08 = 4.655 - 6.24 = -1.585 USD/day
    (< -0.10 band) -> slept at once (sleep costs 0.04*24*0.08 = 0.0768/day). At 0.10:
    9.31 - 6.24 = +3.07 -> woken at 2 h; boots 90 s at 40 W, then mines 3510 s.
    S21 at 0.05: 9.8 - 6.72 = +3.08 -> runs throughout.
    """
    r = run(csv((T0, 0.05, 0.08), (T0 + 3600, 0.05, 0.08), (T0 + 7200, 0.10, 0.08)),
            "S21=1,S19=1")
    s21, s19 = r.machines
    # S19: 2 h asleep + 90 s booting at 40 W, 3510 s at 3250 W.
    s19_kwh = 0.040 * 2 + 0.040 * 90 / 3600 + 3.250 * 3510 / 3600  # 3.24975
    assert s19.energy_kwh == pytest.approx(3.24975)
    assert s19_kwh == pytest.approx(3.24975)
    assert s19.energy_cost_usd == pytest.approx(3.24975 * 0.08)  # 0.25998
    assert s19.revenue_usd == pytest.approx(95 * 0.10 * 0.98 * 3510 / 86400)  # 0.37821875
    assert (s19.sleeps, s19.wakes, s19.limit_changes, s19.switches) == (1, 1, 0, 2)
    assert [e[:2] for e in s19.events] == [(T0, "sleep"), (T0 + 7200, "run")]
    # S21: 3 h at 3.5 kW = 10.5 kWh, 0.84 USD; revenue 196 TH/s-after-fee x (0.05+0.05+0.10)/24.
    assert s21.energy_kwh == pytest.approx(10.5)
    assert s21.energy_cost_usd == pytest.approx(0.84)
    assert s21.revenue_usd == pytest.approx(196 * 0.20 / 24)  # 1.6333...
    assert s21.switches == 0
    # Policy totals.
    assert r.policy.energy_kwh == pytest.approx(13.74975)
    assert r.policy.revenue_usd == pytest.approx(0.37821875 + 1.6333333333)
    assert r.policy.energy_cost_usd == pytest.approx(0.25998 + 0.84)
    assert r.policy.margin_usd == pytest.approx(2.0115520833 - 1.09998)  # 0.91157
    assert r.policy.switches == 2
    # Always-on: S19 3 h at 3.25 kW (9.75 kWh, 0.78 USD, 93.1 x 0.20 / 24 = 0.775833 USD).
    assert r.always_on.energy_kwh == pytest.approx(20.25)
    assert r.always_on.energy_cost_usd == pytest.approx(1.62)
    assert r.always_on.revenue_usd == pytest.approx(93.1 * 0.20 / 24 + 196 * 0.20 / 24)
    assert r.always_on.margin_usd == pytest.approx(2.4091666667 - 1.62)  # 0.789167
    assert r.always_on.switches == 0
    # Optimum: S19 asleep 2 h (0.08 kWh, 0.0064 USD), runs the third hour (3.25 kWh, 0.26 USD,
    # 9.31/24 = 0.387917 USD) with no boot time; S21 runs.
    assert r.optimum.energy_kwh == pytest.approx(0.08 + 3.25 + 10.5)
    assert r.optimum.energy_cost_usd == pytest.approx(0.0064 + 0.26 + 0.84)
    assert r.optimum.revenue_usd == pytest.approx(9.31 / 24 + 196 * 0.20 / 24)
    assert r.optimum.margin_usd == pytest.approx(2.02125 - 1.1064)  # 0.91485
    # Per-row series add up to the totals; always-on power is the nameplate sum.
    assert sum(r.rows.policy_margin_usd) == pytest.approx(r.policy.margin_usd)
    assert sum(r.rows.optimum_margin_usd) == pytest.approx(r.optimum.margin_usd)
    assert r.rows.always_on_power_w == pytest.approx([6750.0] * 3)
    assert r.rows.policy_power_w[1] == pytest.approx(3540.0)
    assert r.end == T0 + 3 * 3600


def test_tick_rate_does_not_change_the_money_of_a_steady_case() -> None:
    rows = csv((T0, 0.05, 0.08), (T0 + 3600, 0.05, 0.08), (T0 + 7200, 0.10, 0.08))
    coarse = run(rows, "S21=1,S19=1", step_s=3600)
    fine = run(rows, "S21=1,S19=1", step_s=60)
    assert fine.ticks == 180 and coarse.ticks == 3
    assert fine.policy.margin_usd == pytest.approx(coarse.policy.margin_usd)
    assert fine.policy.switches == coarse.policy.switches == 2


def test_optimum_is_the_best_power_target_of_the_curve() -> None:
    """M50 (114 TH/s at 3306 W, targets 1500-3600 W): at a tariff where some limit beats both
    running and sleeping, the optimum equals a brute-force search over every watt up to
    nameplate, and beats always-on."""
    spec = MODELS["M50"]
    hp, tariff = 0.05, 0.075

    def margin(p: float) -> float:
        return hashrate_at_ths(spec, p) * hp * 0.98 - p / 1000 * 24 * tariff

    brute = max(margin(float(p)) for p in range(1500, 3307))
    assert brute > margin(spec.power_w) and brute > -0.035 * 24 * tariff
    r = run(csv((T0, hp, tariff), (T0 + 3600, hp, tariff)), "M50=1")
    assert r.optimum.margin_usd == pytest.approx(2 * brute / 24, rel=1e-6)
    assert r.always_on.margin_usd == pytest.approx(2 * margin(spec.power_w) / 24)
    assert r.optimum.margin_usd > r.always_on.margin_usd
    # The policy power-limits it too, through the real margin policy and guards.
    m = r.machines[0]
    # ... paying the Whatsminer's 120 s restart for the new limit (issue 16: switching costs)
    assert m.limit_changes == 1 and m.limited_s == pytest.approx(7200 - 120)
    assert r.policy.margin_usd <= r.optimum.margin_usd + 1e-9


def test_optimum_respects_capabilities() -> None:
    """A Bitaxe cannot sleep and a stock Antminer takes no power target: the optimum never
    pretends they can."""
    row = parse_prices_text(csv((T0, 0.01, 1.0), (T0 + 3600, 0.01, 1.0))).rows[0]
    bitaxe = _option_rates(MODELS["BitAxe Gamma"], row, 0.02, can_sleep=False, can_limit=False)
    assert [o[0] for o in bitaxe] == [17.0]
    s19 = _option_rates(MODELS["S19"], row, 0.02, can_sleep=True, can_limit=False)
    assert [o[0] for o in s19] == [3250.0, 40.0]
    r = run(csv((T0, 0.01, 1.0), (T0 + 3600, 0.01, 1.0)), "BitAxe Gamma=1")
    assert r.optimum.energy_kwh == pytest.approx(2 * 0.017)  # 17 W for two hours
    assert r.policy.switches == 0


def test_capabilities_match_the_driver() -> None:
    from curtaild.drivers.miners import NO_SLEEP_FAMILIES, POWER_LIMIT_FAMILIES

    assert set(NO_SLEEP_FIRMWARE) == NO_SLEEP_FAMILIES
    assert set(POWER_LIMIT_FIRMWARE) == POWER_LIMIT_FAMILIES


# ------------------------------------------------------------------------ guards
def _alternating(hours: int) -> str:
    """S19 profitable (0.10) and unprofitable (0.05) hash price, alternating every hour."""
    return csv(*((T0 + h * 3600, 0.10 if h % 2 else 0.05, 0.08) for h in range(hours)))


def test_min_dwell_limits_switches() -> None:
    free = run(_alternating(12), "S19=1", step_s=600)
    held = run(_alternating(12), "S19=1", step_s=600, min_dwell_s=3 * 3600)
    assert free.policy.switches == 12  # sleep, wake, sleep, ... every hour
    assert 0 < held.policy.switches < free.policy.switches
    # Every state lasts at least the dwell, after a sleep and after a wake alike (the journal
    # remembers a woken machine's last change even after it forgets its ownership).
    events = held.machines[0].events
    assert [((e[0] - T0) / 3600, e[1]) for e in events] == [
        (0.0, "sleep"), (3.0, "run"), (6.0, "sleep"), (9.0, "run")]
    assert all(b[0] - a[0] >= 3 * 3600 for a, b in itertools.pairwise(events))


def test_ramp_staggers_sheds() -> None:
    """Four S19s to shed (3210 W each) at 3300 W/min: one per one-minute tick."""
    r = run(csv((T0, 0.05, 0.08), (T0 + 3600, 0.05, 0.08)), "S19=4", step_s=60,
            ramp_w_per_min=3300)
    sleeps = sorted(e[0] for m in r.machines for e in m.events)
    assert sleeps == [T0, T0 + 60, T0 + 120, T0 + 180]
    fast = run(csv((T0, 0.05, 0.08), (T0 + 3600, 0.05, 0.08)), "S19=4", step_s=60)
    assert sorted(e[0] for m in fast.machines for e in m.events) == [T0] * 4
    assert fast.policy.margin_usd > r.policy.margin_usd  # staggering costs the late sheds


def test_hysteresis_holds_a_marginal_machine() -> None:
    # S19 at 0.0675 USD/TH/day, 0.0845 USD/kWh: run margin 6.28425 - 6.591 = -0.307: with a
    # band of 0.5 it is kept running; with 0.1 it sleeps.
    rows = csv((T0, 0.0675, 0.0845), (T0 + 3600, 0.0675, 0.0845))
    assert run(rows, "S19=1", hysteresis_usd_per_day=0.5).policy.switches == 0
    assert run(rows, "S19=1", hysteresis_usd_per_day=0.1).policy.switches == 1


# --------------------------------------------------------------------- CSV input
@pytest.mark.parametrize(("text", "message"), [
    ("", "t.csv: empty"),
    ("timestamp,hashprice_usd_per_th_day\n1,0.05\n2,0.05\n",
     "t.csv:1: header: missing column(s) tariff_usd_per_kwh"),
    ("timestamp,hashprice_usd_per_th_day,tariff_usd_per_kwh,price\n1,0.05,0.1,3\n",
     "t.csv:1: header: unknown column(s) price"),
    ("# a comment\ntimestamp,hashprice_usd_per_th_day,tariff_usd_per_kwh\n"
     "1750000000,0.05,0.07\n1750003600,abc,0.07\n",
     "t.csv:4: hashprice_usd_per_th_day: 'abc' is not a number"),
    (csv((T0, 0.05, 0.07)) + "yesterday,0.05,0.07\n",
     "t.csv:3: timestamp: 'yesterday' is neither ISO 8601"),
    (csv((T0, 0.05, 0.07), (T0, 0.05, 0.07)), "t.csv:3: timestamp: '1750000000' is not after"),
    (csv((T0, 0.05, 0.07)) + "1750003600,0.05\n", "t.csv:3: expected 3 columns"),
    (csv((T0, -0.05, 0.07), (T0 + 1, 0.05, 0.07)),
     "t.csv:2: hashprice_usd_per_th_day: -0.05 is below 0"),
    (csv((T0, 0.05, 0.07)), "t.csv: 1 data row(s): at least two are needed"),
    (csv((T0, 0.05, "nan"), (T0 + 1, 0.05, 0.07)),
     "t.csv:2: tariff_usd_per_kwh: 'nan' is not a finite number"),
])
def test_csv_errors_name_file_line_and_column(text: str, message: str) -> None:
    with pytest.raises(PriceError) as exc:
        parse_prices_text(text, "t.csv")
    assert str(exc.value).startswith(message), str(exc.value)


def test_csv_accepts_iso_unix_negative_prices_and_a_cap() -> None:
    s = parse_prices_text(
        "tariff_usd_per_kwh,timestamp,hashprice_usd_per_th_day,power_cap_w\n"
        "0.03,2025-08-04T00:00:00-05:00,0.05,\n"
        "-0.004,2025-08-04T06:00:00Z,0.05,20000\n"
        f"0.05,{1754290800 + 3600},0.051,\n")
    assert [r.at for r in s.rows] == [1754283600.0, 1754287200.0, 1754294400.0]
    assert s.rows[1].tariff_usd_per_kwh == -0.004 and s.rows[1].power_cap_w == 20000.0
    assert s.rows[0].power_cap_w is None
    assert s.end == 1754294400.0 + 5400.0  # the median spacing (3600, 7200)


def test_sample_series_parses_as_a_week_of_hours() -> None:
    s = parse_prices_text(SAMPLE.read_text(), str(SAMPLE))
    assert len(s.rows) == 168 and s.end - s.start == 7 * 86400
    assert all(0.04 < r.hashprice_usd_per_th_day < 0.07 for r in s.rows)


def test_fleet_spec_and_errors(tmp_path: Path) -> None:
    plan = fleet_plan("S21=2, M50=1")
    assert [m.model for m in plan.miners] == ["S21", "S21", "M50"]
    assert len(fleet_plan(None).miners) == 16
    with pytest.raises(FleetError, match="unknown model 'S9'"):
        fleet_plan("S9=3")
    with pytest.raises(FleetError, match="is not MODEL=COUNT"):
        fleet_plan("lots of miners")
    f = tmp_path / "fleet.toml"
    f.write_text('[[miner]]\nmodel = "M50"\ncount = 2\npower_limit_w = 3000\n')
    machines = build_machines(fleet_plan(str(f)))
    assert [m.power_limit_w for m in machines] == [3000.0, 3000.0]
    f.write_text('[[miner]]\nmodel = "M50"\ncolour = "red"\n')
    with pytest.raises(FleetError, match=r"miner\[0\]: unknown key\(s\) colour"):
        fleet_plan(str(f))


# ------------------------------------------------------------------------- CLI
def _curtaild(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "curtaild.controller.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                               "MPLCONFIGDIR": str(cwd / "mpl")})


def test_cli_end_to_end_table_and_png(tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    p = _curtaild("--config", str(ROOT / "config.toml"), "backtest", "--prices", str(SAMPLE),
                  "--plot", str(out), "--step-s", "600", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    lines = p.stdout.splitlines()
    assert any(line.startswith("policy ") for line in lines)
    assert any(line.startswith("always-on ") for line in lines)
    assert any(line.startswith("optimum* ") for line in lines)
    assert f"plot: {out}" in p.stdout


def test_cli_json_matches_the_core(tmp_path: Path) -> None:
    prices = tmp_path / "p.csv"
    prices.write_text(csv((T0, 0.05, 0.08), (T0 + 3600, 0.05, 0.08), (T0 + 7200, 0.10, 0.08)))
    cfg = tmp_path / "c.toml"
    cfg.write_text('[fleet]\nhosts = []\n[hashprice]\nsource = "fixed"\nusd_per_th_day = 0.05\n'
                   '[tariff]\nkind = "flat"\nusd_per_kwh = 0.08\n'
                   '[policy]\nname = "margin"\npool_fee = 0.02\n'
                   '[guards]\nmin_dwell_s = 0\nramp_w_per_min = 1000000\n')
    p = _curtaild("--config", str(cfg), "backtest", "--prices", str(prices), "--fleet",
                  "S21=1,S19=1", "--step-s", "3600", "--price-lag-s", "0", "--json", "--no-plot",
                  cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["strategies"]["policy"]["margin_usd"] == pytest.approx(0.91157, abs=1e-4)
    assert s["strategies"]["always_on"]["energy_kwh"] == pytest.approx(20.25)
    assert s["strategies"]["policy"]["switches"] == 2
    assert s["plot"] is None and not list(tmp_path.glob("*.png"))


def test_cli_bad_input_exit_2_with_the_place(tmp_path: Path) -> None:
    prices = tmp_path / "p.csv"
    prices.write_text(csv((T0, 0.05, 0.08)) + f"{T0 + 3600},0.05,cheap\n")
    p = _curtaild("--config", str(ROOT / "config.toml"), "backtest", "--prices", str(prices),
                  cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip() == f"{prices}:3: tariff_usd_per_kwh: 'cheap' is not a number"
    assert not (tmp_path / "backtest.png").exists()
    p = _curtaild("--config", str(ROOT / "config.toml"), "backtest", "--prices",
                  str(tmp_path / "missing.csv"), cwd=tmp_path)
    assert p.returncode == 2 and "missing.csv: cannot read" in p.stderr
