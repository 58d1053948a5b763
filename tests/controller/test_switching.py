"""The switching-cost table (core/switching.py): one source for the policy, the guards,
the backtest's machines and its foresight bound, equal to what the emulator does (issue 16)."""

from __future__ import annotations

import pytest

from curtaild.controller import guards
from curtaild.controller.backtest.machines import build_machines, fleet_plan
from curtaild.core import switching
from curtaild.core.models import MODELS
from curtaild.core.snapshot import FleetSnapshot, MinerReading
from curtaild.core.switching import SwitchingCosts, costs_for, ramp_segment
from curtaild.emulator.families.luxos import RAMP_S as LUXOS_RAMP_S
from curtaild.emulator.families.whatsminer_v3 import RAMP_S as WHATSMINER_RAMP_S


def test_costs_by_family_with_the_guards_restart_and_fast_boot() -> None:
    assert costs_for("whatsminer", "M50") == SwitchingCosts(120.0, 480.0, 120.0)
    assert costs_for("LuxOS", "S19 XP") == SwitchingCosts(60.0, 180.0, 30.0)
    assert costs_for("antminer", "S19") == SwitchingCosts(90.0, 0.0, 0.0)
    assert costs_for("unknown-fw").boot_s == switching.DEFAULT_BOOT_S
    # [guards] limit_restart_s overrides its families; the others keep the table's
    c = costs_for("whatsminer", limit_restart_s={"whatsminer": 15.0})
    assert c.limit_restart_s == 15.0
    assert costs_for("luxos", limit_restart_s={"whatsminer": 15.0}).limit_restart_s == 30.0
    assert costs_for("whatsminer", fast_boot=True).limit_restart_s == 0.0


def test_the_guards_default_restart_table_is_this_one() -> None:
    assert guards.LIMIT_RESTART_S is switching.LIMIT_RESTART_S
    assert guards.GuardConfig().limit_restart_s == switching.LIMIT_RESTART_S


@pytest.mark.parametrize("model", sorted(MODELS))
def test_the_emulator_boots_and_ramps_as_the_table_says(model: str) -> None:
    """Every emulated model boots for the table's time; Whatsminer and LuxOS ramp as the
    emulator's families do after a wake (emulator/fleet.py sets ramp_s from them)."""
    spec = MODELS[model]
    c = costs_for(spec.firmware, spec.model)
    assert c.boot_s == spec.boot_s
    ramp = {"whatsminer": WHATSMINER_RAMP_S, "luxos": LUXOS_RAMP_S}.get(spec.firmware, 0.0)
    assert c.wake_ramp_s == ramp
    [m] = build_machines(fleet_plan(f"{model}=1"))
    assert (m.boot_s, m.wake_ramp_s, m.restart_s) == (c.boot_s, c.wake_ramp_s,
                                                     c.limit_restart_s)
    assert m.reading(0.0, 40.0).switching == c


def test_wake_hashing_lost_by_hand() -> None:
    # A linear ramp delivers load**0.75 on average 1/1.75 of full: a 480 s ramp forgoes
    # 480 x 0.75/1.75 = 205.714 s of hashing, plus the 120 s boot.
    assert SwitchingCosts(120.0, 480.0).wake_hashing_lost_s(0.75) == pytest.approx(
        120 + 480 * 0.75 / 1.75)
    assert SwitchingCosts(90.0).describe_wake() == "boot 90 s"
    assert SwitchingCosts(120.0, 480.0).describe_wake() == "boot 120 s + ramp 480 s"


def test_ramp_segment_integrates_the_linear_ramp() -> None:
    """Piecewise integrals add up to the whole ramp, and match a fine Riemann sum."""
    whole = ramp_segment(0.0, 480.0, 480.0, 0.75)
    assert whole == pytest.approx((240.0, 480.0 / 1.75))
    parts = [ramp_segment(a, b, 480.0, 0.75) for a, b in ((0, 100), (100, 333), (333, 480))]
    assert sum(p[0] for p in parts) == pytest.approx(whole[0])
    assert sum(p[1] for p in parts) == pytest.approx(whole[1])
    n = 100_000
    riemann = sum(((i + 0.5) / n * 200 / 480) ** 0.75 for i in range(n)) * 200 / n
    assert ramp_segment(0.0, 200.0, 480.0, 0.75)[1] == pytest.approx(riemann, rel=1e-6)
    assert ramp_segment(480.0, 600.0, 480.0, 0.75) == (0.0, 0.0)  # after the ramp: nothing
    assert ramp_segment(0.0, 10.0, 0.0, 0.75) == (0.0, 0.0)


def test_the_loop_gives_every_reading_its_costs_from_the_guards_config() -> None:
    from curtaild.controller.loop import with_switching_costs

    def reading(key: str, firmware: str, **kw: object) -> MinerReading:
        return MinerReading(key=key, ip="127.175.0.1", make="m", model="M50", firmware=firmware,
                            state="mining", hashrate_ths=1.0, power_w=1.0,
                            power_source="firmware", power_limit_w=None, temp_c=None,
                            **kw)  # type: ignore[arg-type]

    own = SwitchingCosts(1.0, 2.0, 3.0)
    fleet = FleetSnapshot((reading("a", "whatsminer"), reading("b", "luxos", switching=own)), 0.0)
    out = with_switching_costs(fleet, {"whatsminer": 15.0}).by_key()
    assert out["a"].switching == SwitchingCosts(120.0, 480.0, 15.0)
    assert out["b"].switching is own  # a reading that already says is kept
