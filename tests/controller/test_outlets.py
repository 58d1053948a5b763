"""The hard power-down tier's rules (controller/outlets.py): pure planning, no I/O."""

from __future__ import annotations

from curtaild.controller.inventory import Inventory, Placement
from curtaild.controller.outlets import Owned, outlet_wishes, plan_outlets
from curtaild.controller.site_config import HardPowerConfig
from curtaild.core.snapshot import Desired, FleetSnapshot, MarketSnapshot, MinerReading

CFG = HardPowerConfig(enabled=True, racks=["R1"], min_off_s=600, max_cycles_per_day=2,
                      max_on_per_pdu=1, max_on_per_phase=1, on_interval_s=10)
NOW = 1_000_000.0


def reading(key: str, *, state: str = "mining", sleep: bool = True, power_w: float = 3000.0,
            command_state=None, commanded_action=None) -> MinerReading:
    return MinerReading(key=key, ip=key, make="x", model="M", firmware="f", state=state,
                        hashrate_ths=100.0 if state == "mining" else 0.0, power_w=power_w,
                        power_source="firmware", power_limit_w=None, temp_c=None,
                        nameplate_hashrate_ths=100.0, nameplate_power_w=3000.0,
                        supports_sleep=sleep, command_state=command_state,
                        commanded_action=commanded_action)


def inv(*rows: tuple[str, str, int, str]) -> Inventory:
    return Inventory([Placement(k, rack=rack, pdu="p", outlet=o, phase=ph)
                      for k, rack, o, ph in rows])


def fleet(*rs: MinerReading) -> FleetSnapshot:
    return FleetSnapshot(tuple(rs), NOW)


SLEEP = Desired("sleep", "loses money")
RUN = Desired("run", "earns")


def plan(f, desired, i, observed, owned=None, cycles=None, last_on=None, cfg=CFG, **kw):
    return plan_outlets(f, desired, i, observed, owned or {}, cycles or {}, last_on or {},
                        cfg, NOW, **kw)


def test_a_machine_that_cannot_sleep_is_cut_one_that_can_is_left_to_its_firmware() -> None:
    f = fleet(reading("a", sleep=False), reading("b"))
    i = inv(("a", "R1", 1, "L1"), ("b", "R1", 2, "L1"))
    p = plan(f, {"a": SLEEP, "b": SLEEP}, i, {("p", 1): True, ("p", 2): True})
    assert [(a.outlet, a.on) for a in p.actions] == [(1, False)]
    assert p.suppressed == {"a"}
    assert "b" not in p.held  # its firmware sleep is the guards' business, not the tier's


def test_a_flagged_machine_that_ignored_its_sleep_is_cut() -> None:
    f = fleet(reading("b", command_state="lying", commanded_action="sleep"))
    p = plan(f, {"b": SLEEP}, inv(("b", "R1", 2, "L1")), {("p", 2): True})
    assert [(a.outlet, a.on) for a in p.actions] == [(2, False)]
    assert "ignored its firmware sleep" in p.actions[0].reason


def test_shared_outlet_is_cut_only_when_every_machine_on_it_should_be_off() -> None:
    i = inv(("a", "R1", 1, "L1"), ("c", "R1", 1, "L1"))
    f = fleet(reading("a", sleep=False), reading("c", sleep=False))
    assert plan(f, {"a": SLEEP, "c": RUN}, i, {("p", 1): True}).actions == []
    held = plan(f, {"a": SLEEP, "c": RUN}, i, {("p", 1): True}).held["a"]
    assert "shared with c, which should run" in held
    assert len(plan(f, {"a": SLEEP, "c": SLEEP}, i, {("p", 1): True}).actions) == 1
    # a machine placed on the outlet but not seen blocks it (something unseen is plugged in)
    assert plan(fleet(reading("a", sleep=False)), {"a": SLEEP}, i, {("p", 1): True}).actions \
        == []
    # a hashing machine that can still sleep blocks its outlet-mate's cut
    f2 = fleet(reading("a", sleep=False), reading("c"))
    assert plan(f2, {"a": SLEEP, "c": SLEEP}, i, {("p", 1): True}).actions == []
    f3 = fleet(reading("a", sleep=False), reading("c", state="sleeping", power_w=40))
    assert len(plan(f3, {"a": SLEEP, "c": SLEEP}, i, {("p", 1): True}).actions) == 1


def test_opt_in_exclusion_unknown_state_and_the_cycle_cap() -> None:
    f = fleet(reading("a", sleep=False))
    d = {"a": SLEEP}
    assert plan(f, d, inv(("a", "R2", 1, "L1")), {("p", 1): True}).actions == []  # not opted
    assert plan(f, d, inv(("a", "R1", 1, "L1")), {("p", 1): True},
                excluded=frozenset({"a"})).actions == []
    assert plan(f, d, inv(("a", "R1", 1, "L1")), {("p", 1): None}).actions == []  # unknown
    assert plan(f, d, inv(("a", "R1", 1, "L1")), {}).actions == []  # PDU did not answer
    capped = plan(f, d, inv(("a", "R1", 1, "L1")), {("p", 1): True}, cycles={("p", 1): 2})
    assert capped.actions == [] and "max_cycles_per_day" in capped.held["a"]
    off = HardPowerConfig(enabled=False, racks=["R1"])
    assert plan(f, d, inv(("a", "R1", 1, "L1")), {("p", 1): True}, cfg=off).actions == []


def test_an_outlet_found_off_is_the_operators_and_never_switched_on() -> None:
    f = fleet(reading("a", state="unreachable", sleep=False, power_w=0))
    p = plan(f, {"a": RUN}, inv(("a", "R1", 1, "L1")), {("p", 1): False})
    assert p.actions == [] and p.suppressed == set()


def test_owned_outlets_stay_off_for_min_off_s_then_restore_staggered() -> None:
    i = inv(("a", "R1", 1, "L1"), ("b", "R1", 2, "L1"), ("c", "R1", 3, "L2"))
    f = fleet(*(reading(k, state="sleeping", sleep=False, power_w=0) for k in "abc"))
    owned = {("p", n): Owned(NOW - 100) for n in (1, 2, 3)}
    observed = {("p", n): False for n in (1, 2, 3)}
    wants = {k: RUN for k in "abc"}
    early = plan(f, wants, i, observed, owned)
    assert early.actions == [] and early.suppressed == {"a", "b", "c"}
    assert "minimum off time" in early.held["a"]
    owned = {k: Owned(NOW - 700) for k in owned}
    p = plan(f, wants, i, observed, owned)
    assert [(a.outlet, a.on) for a in p.actions] == [(1, True)]  # one per PDU per tick
    assert "staggered" in p.held["b"]
    assert plan(f, wants, i, observed, owned, last_on={"p": NOW - 5}).actions == []
    # an owned outlet seen on: someone switched it on; ownership dropped, nothing suppressed
    p = plan(f, wants, i, {**observed, ("p", 2): True}, owned)
    assert p.released == [("p", 2)] and "b" not in p.suppressed
    # still wanted off: kept off, firmware commands suppressed
    p = plan(f, {k: SLEEP for k in "abc"}, i, observed, owned)
    assert p.actions == [] and p.suppressed == {"a", "b", "c"}


def test_restores_go_to_the_lightest_phase_first_and_wait_for_balance() -> None:
    cfg = HardPowerConfig(enabled=True, racks=["R1"], min_off_s=0, max_on_per_pdu=5,
                          max_on_per_phase=5, on_interval_s=0)
    i = Inventory([Placement("a", rack="R1", pdu="p", outlet=1, phase="L1"),
                   Placement("b", rack="R1", pdu="q", outlet=1, phase="L2"),
                   Placement("x", rack="R9", phase="L1")])
    f = fleet(reading("a", state="sleeping", sleep=False, power_w=0),
              reading("b", state="sleeping", sleep=False, power_w=0),
              reading("x", power_w=6000))
    owned = {("p", 1): Owned(NOW - 10), ("q", 1): Owned(NOW - 10)}
    p = plan(f, {"a": RUN, "b": RUN}, i, {("p", 1): False, ("q", 1): False}, owned, cfg=cfg,
             max_phase_imbalance_w=4000)
    # L1 already carries 6 kW: L2's outlet first; L1's would leave L1 9 kW vs L3 0 kW
    assert [(a.pdu, a.on) for a in p.actions] == [("q", True)]
    assert "phase balance" in p.held["a"]


def test_emergency_shed_may_skip_firmware_sleep_only_when_allowed() -> None:
    f = fleet(reading("b"))
    i = inv(("b", "R1", 2, "L1"))
    dr = Desired("sleep", "demand response", priority="emergency")
    assert plan(f, {"b": dr}, i, {("p", 2): True}, dr_active=True).actions == []
    cfg = HardPowerConfig(enabled=True, racks=["R1"], emergency_skips_sleep=True)
    assert len(plan(f, {"b": dr}, i, {("p", 2): True}, dr_active=True, cfg=cfg).actions) == 1


def test_the_tiers_economics_for_machines_without_sleep() -> None:
    i = inv(("a", "R1", 1, "L1"))
    loses = MarketSnapshot(0.01, "x", 0, 0.5, "x", 0)
    earns = MarketSnapshot(2.0, "x", 0, 0.05, "x", 0)
    on, off = reading("a", sleep=False), reading("a", state="sleeping", sleep=False, power_w=0)
    assert outlet_wishes(fleet(on), {}, loses, i, CFG, 0.1)["a"].action == "sleep"
    assert outlet_wishes(fleet(on), {}, earns, i, CFG, 0.1)["a"].action == "run"
    assert outlet_wishes(fleet(off), {}, earns, i, CFG, 0.1)["a"].action == "run"
    forced = {"a": Desired("run", "operator", priority="forced")}
    assert outlet_wishes(fleet(on), forced, loses, i, CFG, 0.1)["a"].priority == "forced"
    assert outlet_wishes(fleet(on), {}, None, i, CFG, 0.1) == {}
