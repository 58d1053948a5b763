"""The hard power-down tier for power-cap sheds, and phase balance of every shed and restore
(controller/outlets.py, core/phases.py; issue 18). Pure planning, no I/O."""

from __future__ import annotations

import dataclasses

import pytest

from curtaild.controller.inventory import Inventory, Placement
from curtaild.controller.outlets import Owned, balance_firmware, plan_outlets, sheddable_outlets
from curtaild.controller.site_config import HardPowerConfig, InventoryConfig, check_site
from curtaild.core import phases
from curtaild.core.snapshot import Command, Desired, FleetSnapshot, MinerReading

CFG = HardPowerConfig(enabled=True, racks=["R1"], min_off_s=0, max_cycles_per_day=2,
                      max_on_per_pdu=5, max_on_per_phase=5, on_interval_s=0)
NOW = 1_000_000.0
SLEEP = Desired("sleep", "loses money")
CAP = Desired("sleep", "power cap 170 W (demand-response event dr-1): site ~253 W",
              priority="emergency")
RUN = Desired("run", "earns")


def reading(key: str, *, state: str = "mining", sleep: bool = True, power_w: float = 3000.0,
            phase: str | None = None, **kw) -> MinerReading:
    return MinerReading(key=key, ip=key, make="x", model="M", firmware="f", state=state,
                        hashrate_ths=100.0 if state == "mining" else 0.0, power_w=power_w,
                        power_source="firmware", power_limit_w=None, temp_c=None,
                        nameplate_hashrate_ths=100.0, nameplate_power_w=3000.0,
                        supports_sleep=sleep, phase=phase, **kw)


def fleet(*rs: MinerReading) -> FleetSnapshot:
    return FleetSnapshot(tuple(rs), NOW)


def inv(*rows: tuple[str, str, int, str]) -> Inventory:
    return Inventory([Placement(k, rack=rack, pdu="p", outlet=o, phase=ph)
                      for k, rack, o, ph in rows])


def sheddable(f, i, observed, owned=None, cycles=None, cfg=CFG, **kw):
    return sheddable_outlets(f, i, observed, owned or {}, cycles or {}, cfg, **kw)


# --------------------------------------------------------------- outlets for the power cap
def test_outlets_a_cap_may_shed_follow_every_rule_of_the_tier() -> None:
    axe = reading("a", sleep=False, power_w=17.0)
    i = inv(("a", "R1", 1, "L1"))
    on = {("p", 1): True}
    assert sheddable(fleet(axe), i, on) == {("p", 1)}
    assert sheddable(fleet(axe), inv(("a", "R2", 1, "L1")), on) == set()  # not opted in
    assert sheddable(fleet(axe), i, on, cfg=HardPowerConfig(enabled=False, racks=["R1"])) \
        == set()
    assert sheddable(fleet(axe), i, {("p", 1): None}) == set()  # state unknown
    assert sheddable(fleet(axe), i, {("p", 1): False}) == set()  # the operator's: off
    assert sheddable(fleet(axe), i, on, cycles={("p", 1): 2}) == set()  # cycle cap
    assert sheddable(fleet(axe), i, on, excluded=frozenset({"a"})) == set()
    # excluded by its MAC, as [guards] exclude names it (any case), though keyed otherwise
    mac = dataclasses.replace(axe, mac="AA:BB:CC:00:00:01")
    assert sheddable(fleet(mac), i, on, excluded=frozenset({"aa:bb:cc:00:00:01"})) == set()
    assert plan_outlets(fleet(mac), {"a": CAP}, i, on, {}, {}, {}, CFG, NOW,
                        excluded=frozenset({"aa:bb:cc:00:00:01"})).actions == []
    gone = dataclasses.replace(axe, state="unreachable")
    assert sheddable(fleet(gone), i, on) == set()
    # ours and off (or unknown): a shed keeps it off; ours and seen on: released, not ours
    assert sheddable(fleet(axe), i, {("p", 1): False}, owned={("p", 1): Owned(NOW)}) \
        == {("p", 1)}
    assert sheddable(fleet(axe), i, on, owned={("p", 1): Owned(NOW)}) == set()


def test_a_shared_outlet_is_sheddable_only_once_every_machine_on_it_is_past_firmware() -> None:
    i = inv(("a", "R1", 1, "L1"), ("s", "R1", 1, "L1"))
    on = {("p", 1): True}
    axe = reading("a", sleep=False, power_w=17.0)
    hashing = reading("s")
    assert sheddable(fleet(axe), i, on) == set()  # s is placed there and not seen
    assert sheddable(fleet(axe, hashing), i, on) == set()  # firmware sleep first
    asleep = reading("s", state="sleeping", power_w=40.0)
    assert sheddable(fleet(axe, asleep), i, on) == {("p", 1)}
    liar = reading("s", command_state="lying", commanded_action="sleep")
    assert sheddable(fleet(axe, liar), i, on) == {("p", 1)}
    skip = CFG.model_copy(update={"emergency_skips_sleep": True})
    assert sheddable(fleet(axe, hashing), i, on, cfg=skip) == set()  # no event in force
    assert sheddable(fleet(axe, hashing), i, on, cfg=skip, dr_active=True) == {("p", 1)}


def test_a_cap_shed_of_a_machine_that_cannot_sleep_switches_its_outlet() -> None:
    i = inv(("a", "R1", 1, "L1"), ("s", "R1", 1, "L1"))
    f = fleet(reading("a", sleep=False, power_w=17.0), reading("s", state="sleeping",
                                                                power_w=40.0))
    p = plan_outlets(f, {"a": CAP, "s": CAP}, i, {("p", 1): True}, {}, {}, {}, CFG, NOW)
    assert [(a.outlet, a.on, a.miners) for a in p.actions] == [(1, False, ("a", "s"))]
    assert p.suppressed == {"a", "s"}
    assert p.actions[0].reason == ("cannot sleep (firmware has no sleep), shed for the power "
                                   "cap 170 W (demand-response event dr-1)")


# ------------------------------------------------------------------------- phase balance
def test_the_balance_rule() -> None:
    loads = {"L1": 6000.0, "L2": 9000.0}
    assert phases.balance_hold(loads, "L2", -3000.0, 1000.0) is None  # improves
    assert phases.balance_hold(loads, "L1", +1000.0, 1000.0) is None  # improves
    held = phases.balance_hold(loads, "L1", -3000.0, 1000.0)
    assert held is not None and "L2 would carry 9000 W and L1 3000 W, 6000 W apart" in held
    assert phases.balance_hold({"L1": 0.0, "L2": 0.0}, "L1", 900.0, 1000.0) is None  # within
    assert phases.balance_hold({"L1": 0.0, "L2": 0.0}, "L1", 1100.0, 1000.0) is not None
    assert phases.balance_hold(loads, "L1", -3000.0, None) is None  # not configured
    assert phases.balance_hold(loads, None, -3000.0, 1000.0) is None  # not placed
    assert phases.balance_hold({"L1": 5.0}, "L1", 1e6, 1.0) is None  # one phase: no balance
    assert phases.spread_w(loads) == 3000.0


def test_economic_switch_offs_keep_the_phases_balanced_emergency_ones_always_go() -> None:
    i = inv(("a", "R1", 1, "L1"), ("b", "R1", 2, "L2"), ("c", "R1", 3, "L2"))
    f = fleet(reading("a", sleep=False), reading("b", sleep=False), reading("c", sleep=False))
    on = {("p", n): True for n in (1, 2, 3)}
    # L1 3000 W, L2 6000 W: cutting a (L1) would leave 0 vs 6000; b and c narrow the spread
    p = plan_outlets(f, {"a": SLEEP, "b": SLEEP}, i, on, {}, {}, {}, CFG, NOW,
                     max_phase_imbalance_w=2000.0)
    assert [a.outlet for a in p.actions] == [2]
    assert "phase balance" in p.held["a"] and "not switched off" in p.held["a"]
    assert p.phase_loads == {"L1": 3000.0, "L2": 3000.0}
    # the same cuts for a power cap: never held (the cap chose them with the balance in mind)
    p = plan_outlets(f, {"a": CAP, "b": CAP}, i, on, {}, {}, {}, CFG, NOW,
                     max_phase_imbalance_w=2000.0)
    assert sorted(a.outlet for a in p.actions) == [1, 2]
    # without a limit: both economic cuts go
    p = plan_outlets(f, {"a": SLEEP, "b": SLEEP}, i, on, {}, {}, {}, CFG, NOW)
    assert sorted(a.outlet for a in p.actions) == [1, 2]


def test_a_restore_that_would_unbalance_the_phases_waits_even_alone() -> None:
    """The first switch-on of a tick is not exempt: it waits while it would widen the spread
    past the limit, and goes once another phase has taken load (never stranded: a restore
    that narrows the spread always goes)."""
    i = Inventory([Placement("a", rack="R1", pdu="p", outlet=1, phase="L1"),
                   Placement("x", rack="R9", phase="L1"), Placement("y", rack="R9", phase="L2")])
    off = reading("a", state="sleeping", sleep=False, power_w=0.0)
    owned = {("p", 1): Owned(NOW - 10)}
    busy = fleet(off, reading("x", power_w=3000.0), reading("y", state="sleeping",
                                                             power_w=40.0))
    p = plan_outlets(busy, {"a": RUN}, i, {("p", 1): False}, owned, {}, {}, CFG, NOW,
                     max_phase_imbalance_w=4000.0)
    assert p.actions == [] and "phase balance" in p.held["a"]
    both = fleet(off, reading("x", power_w=3000.0), reading("y", power_w=3000.0))
    p = plan_outlets(both, {"a": RUN}, i, {("p", 1): False}, owned, {}, {}, CFG, NOW,
                     max_phase_imbalance_w=4000.0)
    assert [(a.outlet, a.on) for a in p.actions] == [(1, True)]


def command(key: str, action: str, delta_w: float, priority: str = "normal") -> Command:
    return Command(key=key, ip=key, action=action, power_limit_w=None,  # type: ignore[arg-type]
                   reason="t", delta_power_w=delta_w, priority=priority)  # type: ignore[arg-type]


def test_firmware_sleeps_and_wakes_keep_the_phases_balanced() -> None:
    f = fleet(reading("a", phase="L1"), reading("b", phase="L1"),
              reading("c", state="sleeping", power_w=40.0, phase="L2"),
              reading("d", state="sleeping", power_w=40.0, phase="L2"))
    # L1 6000 W, L2 80 W, at most 1000 W apart
    cmds = [command("d", "run", 2960.0), command("a", "sleep", -2960.0),
            command("c", "run", 2960.0)]
    kept, held = balance_firmware(cmds, f, {}, 1000.0)
    # sheds first: a (L1 3040 vs 80); wakes: d narrows (3040 vs 3040); c would then widen
    assert [c.key for c in kept] == ["d", "a"]  # in the guards' order
    assert held.keys() == {"c"} and held["c"].startswith("run waits: phase balance")
    # emergency sheds never wait, even one that empties L1 below L2 (a, then b: 80 W vs
    # 80 W); the wake after them would now widen the spread: it waits
    kept, held = balance_firmware([command("c", "run", 2960.0),
                                   command("a", "sleep", -2960.0, "emergency"),
                                   command("b", "sleep", -2960.0, "emergency")], f, {}, 1000.0)
    assert [c.key for c in kept] == ["a", "b"] and held.keys() == {"c"}
    # an emergency shed that widens the spread goes too
    kept, _ = balance_firmware([command("c", "sleep", -2960.0, "emergency")],
                               fleet(reading("c", phase="L2"), reading("a", phase="L1")), {},
                               1000.0)
    assert [c.key for c in kept] == ["c"]
    assert balance_firmware(cmds, f, {}, None) == (cmds, {})  # not configured


def test_the_limit_lives_in_inventory_and_needs_phases() -> None:
    with pytest.raises(ValueError, match=r"max_phase_imbalance_w: set it in \[inventory\]"):
        HardPowerConfig(enabled=True, racks=["R1"], max_phase_imbalance_w=1000)
    no_phase = InventoryConfig(miner=[{"id": "127.184.0.1", "rack": "R1"}],
                               max_phase_imbalance_w=1000)
    with pytest.raises(ValueError, match="no inventory row gives a phase"):
        check_site([], no_phase, HardPowerConfig())
    ok = InventoryConfig(miner=[{"id": "127.184.0.1", "phase": "L1"}], max_phase_imbalance_w=1)
    assert check_site([], ok, HardPowerConfig()).placements[0].phase == "L1"
