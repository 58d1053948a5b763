"""power_cap with the hard power-down tier and the site's phases (issue 18).

A machine that cannot sleep (a Bitaxe) is shed by the cap only where the controller marked
its outlet as one the tier would switch off (``MinerReading.outlet``), together with every
machine on that outlet; a machine behind an outlet curtaild switched off counts 0 W (measured
at the PDU), not the 40 W idle guess; and the cap's choice of sheds keeps the phases within
``FleetSnapshot.max_phase_imbalance_w`` while it can.
"""

from __future__ import annotations

import dataclasses

from curtaild.core.snapshot import Desired, Directives, MinerReading
from curtaild.policies import layer
from curtaild.policies.layer import everything_runs
from curtaild.policies.power_cap import PowerCapConfig, PowerCapPolicy, measured_gap_w
from tests.policies.snapshots import WED_1430_CHICAGO as NOW
from tests.policies.snapshots import fleet, market, miner

DR = Directives(power_cap_w=None)


def axe(key: str, *, outlet: str | None = None, off: bool = False,
        phase: str | None = None) -> MinerReading:
    """A Bitaxe Gamma: 1.2 TH/s at 17 W, no sleep; ``off``: behind an outlet curtaild owns
    (read as asleep at 0 W measured at the PDU, as controller/site.py does)."""
    r = miner(key, power_w=17.0, hashrate_ths=1.2, sleep=False)
    r = dataclasses.replace(r, outlet=outlet, phase=phase, power_source="pdu")
    if off:
        r = dataclasses.replace(r, state="sleeping", power_w=0.0, hashrate_ths=0.0)
    return r


def event(target_w: float) -> Directives:
    return Directives(power_cap_w=target_w, power_cap_event_id="dr-7", power_cap_until=NOW + 600)


def shed(f, directives, *, pinned=(), base=None):
    pol = PowerCapPolicy(PowerCapConfig())
    return pol.apply(base or everything_runs(f), f, market(hashprice=0.09, tariff=0.03),
                     directives, NOW, pinned=pinned)


def test_a_machine_that_cannot_sleep_is_shed_only_at_an_outlet_the_tier_may_switch() -> None:
    s19 = miner("S19", power_w=3000.0, hashrate_ths=100.0)
    axes = [axe(f"A{i}") for i in range(4)]
    # 3068 W; the S19 asleep leaves 40 + 68 = 108 W: a 60 W target needs the Bitaxes too
    out = shed(fleet(s19, *axes), event(60.0))
    assert out["S19"].action == "sleep"
    assert all(out[a.key].action == "run" for a in axes)  # no outlet: nothing to shed them with
    axes = [axe(f"A{i}", outlet=f"pdu-a/{i + 1}") for i in range(4)]
    out = shed(fleet(s19, *axes), event(60.0))
    assert out["S19"].action == "sleep"
    cut = [a.key for a in axes if out[a.key].action == "sleep"]
    # 40 W idle + 17 W per Bitaxe left running <= 60 W: three outlets go, one stays
    assert len(cut) == 3, {k: d.action for k, d in out.items()}
    d = out[cut[0]]
    assert d.priority == "emergency"
    assert "outlet pdu-a/1 off (A0 cannot sleep)" in d.reason
    assert "demand-response event dr-7" in d.reason


def test_machines_sharing_an_outlet_are_shed_together_and_a_pinned_one_blocks_it() -> None:
    a, b = axe("A", outlet="pdu-a/2"), axe("B", outlet="pdu-a/2")
    out = shed(fleet(a, b), event(20.0))
    assert (out["A"].action, out["B"].action) == ("sleep", "sleep")
    assert "with B" in out["A"].reason and out["A"].reason == out["B"].reason
    # an operator override (pinned) on B: the shared outlet cannot go off, nothing is shed
    out = shed(fleet(a, b), event(20.0), pinned={"B"})
    assert (out["A"].action, out["B"].action) == ("run", "run")


def test_an_outlet_kept_off_is_kept_off_while_the_cap_needs_it() -> None:
    """Behind an owned outlet a Bitaxe reads asleep at 0 W; the base wants it running (full
    17 W): over the target, the cap keeps its outlet off rather than counting on it."""
    f = fleet(axe("A", outlet="pdu-a/1", off=True), axe("B"))
    out = shed(f, event(20.0))
    assert out["A"].action == "sleep" and out["B"].action == "run"
    assert shed(f, event(40.0))["A"].action == "run"  # room for both: restored


def test_power_measured_at_the_outlet_counts_as_measured_even_at_zero() -> None:
    off = axe("A", outlet="pdu-a/1", off=True)
    assert layer.idle_w(off) == 0.0 and layer.present_w(off) == 0.0
    assert layer.power_under_w(axe("B", outlet="pdu-a/2"), Desired("sleep", "x")) == 0.0
    # four Bitaxes behind outlets curtaild switched off, an S19 at 3000 W, the meter at 3100:
    # 100 W of facility load, not -60 W (4 x 40 W of phantom idle draw)
    s19 = miner("S19", power_w=3000.0, hashrate_ths=100.0)
    axes = [axe(f"A{i}", off=True) for i in range(4)]
    f = dataclasses.replace(fleet(s19, *axes), site_power_w=3100.0, site_power_source="meter")
    assert measured_gap_w(f) == 100.0
    # the base wants them all running (68 W): 3168 W on the meter is over a 3100 W cap
    out = shed(f, event(3100.0))
    assert out["S19"].action == "sleep"


def with_phase(r: MinerReading, phase: str) -> MinerReading:
    return dataclasses.replace(r, phase=phase)


def test_cap_sheds_keep_the_phases_balanced_while_they_can() -> None:
    # L1: A (worst, 30 J/TH) and B; L2: C, D, E. 6000 W vs 9000 W, 3000 W apart.
    a = with_phase(miner("A", hashrate_ths=100.0), "L1")
    b = with_phase(miner("B", hashrate_ths=150.0), "L1")
    c = with_phase(miner("C", hashrate_ths=120.0), "L2")
    d = with_phase(miner("D", hashrate_ths=140.0), "L2")
    e = with_phase(miner("E", hashrate_ths=145.0), "L2")
    f = fleet(a, b, c, d, e)
    cap = Directives(power_cap_w=12500.0)
    assert {k for k, x in shed(f, cap).items() if x.action == "sleep"} == {"A"}  # worst first
    balanced = dataclasses.replace(f, max_phase_imbalance_w=3500.0)
    out = shed(balanced, cap)
    # A would leave L1 3040 W vs L2 9000 W: the worst machine on L2 goes instead
    assert {k for k, x in out.items() if x.action == "sleep"} == {"C"}
    # a deep cap sheds on both phases and keeps them within the limit: C, D (L2), B (L1,
    # passing E, which would empty L2), then A, which no longer unbalances; E keeps running
    out = shed(balanced, Directives(power_cap_w=3500.0))
    assert {k for k, x in out.items() if x.action == "sleep"} == {"A", "B", "C", "D"}
    assert not any("beyond" in x.reason for x in out.values())
    # one the balance cannot allow is still met: the cap is the harder limit, and says so
    tight = dataclasses.replace(f, max_phase_imbalance_w=1000.0)
    out = shed(tight, Directives(power_cap_w=3500.0))
    asleep = {k for k, x in out.items() if x.action == "sleep"}
    assert len(asleep) == 4
    assert "beyond max_phase_imbalance_w" in out["A"].reason
    assert "beyond" not in out["C"].reason  # C alone kept the balance (6000 W vs 6040 W)


def test_a_machine_behind_an_outlet_kept_off_counts_what_it_draws_once_powered() -> None:
    """An S19 slept by its firmware shares outlet 3 with a Bitaxe; curtaild switched it off.
    Counting the S19 asleep at 0 W while the Bitaxe is wanted running would restore the outlet
    and bring the S19 back at its 40 W idle draw: over the target on the next tick, cut again
    (flapping). The cap counts that, and keeps the outlet off with both machines on it."""
    s19 = dataclasses.replace(miner("S19", power_w=3068.0, hashrate_ths=104.0),
                              state="sleeping", power_w=0.0, hashrate_ths=0.0,
                              power_source="pdu", outlet="pdu-a/3")
    axe4 = axe("AXE4", outlet="pdu-a/3", off=True)
    s21 = miner("S21", power_w=3500.0, hashrate_ths=200.0, state="sleeping")
    s21 = dataclasses.replace(s21, power_w=45.0)
    f = dataclasses.replace(fleet(s19, axe4, s21), site_power_w=145.0, site_power_source="meter")
    out = shed(f, event(170.0))  # 45 W + 100 W of facility load: room for 25 W more
    assert {k: d.action for k, d in out.items()} == {"S19": "sleep", "AXE4": "sleep",
                                                      "S21": "sleep"}
    assert "outlet pdu-a/3 kept off" in out["AXE4"].reason
    # the base keeps both Antminers asleep and wants the Bitaxe running: its outlet comes back
    # on, the S19 with it at 40 W -- 202 W in all, counted as such
    base = {"S19": Desired("sleep", "loses"), "S21": Desired("sleep", "loses"),
            "AXE4": Desired("run", "earns")}
    assert shed(f, event(210.0), base=base)["AXE4"].action == "run"
    out = shed(f, event(195.0), base=base)
    assert (out["S19"].action, out["AXE4"].action) == ("sleep", "sleep")
    assert "outlet pdu-a/3 kept off (AXE4 cannot sleep; with S19)" in out["AXE4"].reason


def test_an_outlet_already_off_is_kept_off_before_another_is_cut() -> None:
    """Two Bitaxes, one behind an outlet curtaild switched off; the target needs one of them
    off. Keeping the off one off switches nothing; trading it for the other (a restore and a
    cut) would spend a cycle on each outlet and flap. Which one is worse per watt does not
    matter here."""
    off = axe("OFF", outlet="pdu-a/1", off=True)
    on = dataclasses.replace(axe("ON", outlet="pdu-a/2"), hashrate_ths=1.0)  # the worse one
    out = shed(fleet(off, on), event(20.0))
    assert (out["OFF"].action, out["ON"].action) == ("sleep", "run")
    # both running: the worse one per watt goes
    out = shed(fleet(dataclasses.replace(axe("A", outlet="pdu-a/1")), on), event(20.0))
    assert (out["A"].action, out["ON"].action) == ("run", "sleep")


def test_the_controllers_base_hook_is_what_the_cap_counts_and_is_off_while_paused() -> None:
    """The hard power-down tier's own economics (run against off) join the base decision
    before the cap: a Bitaxe the base has no opinion on but the tier wants running counts at
    its full draw, so the cap keeps its outlet off instead of letting the tier restore it."""
    from curtaild.policies.compose import decide_stack
    from curtaild.policies.margin import MarginPolicy

    off = axe("A", outlet="pdu-a/1", off=True)
    f = dataclasses.replace(fleet(off), site_power_w=100.0, site_power_source="meter")
    mk = market(hashprice=0.09, tariff=0.03)
    wants = {"A": Desired("run", "tier: earns")}
    calls: list[dict] = []

    def hook(d: dict) -> dict:
        calls.append(d)
        return {**d, **wants}

    policy = MarginPolicy()
    assert "A" not in decide_stack(policy, f, mk, event(110.0), NOW)  # no opinion, held off
    out = decide_stack(policy, f, mk, event(110.0), NOW, base_hook=hook)
    assert out["A"].action == "sleep" and "kept off" in out["A"].reason
    assert decide_stack(policy, f, mk, event(200.0), NOW, base_hook=hook)["A"].action == "run"
    calls.clear()
    paused = dataclasses.replace(event(110.0), automation_paused=True)
    decide_stack(policy, f, mk, paused, NOW, base_hook=hook)
    assert calls == []
