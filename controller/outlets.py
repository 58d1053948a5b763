"""The hard power-down tier: which PDU outlets to switch off or back on (pure: no I/O, no clock).

For a machine that cannot sleep (AxeOS has no sleep), or that ignored its firmware sleep past
its grace and was flagged (firmware that stores a sleep and keeps hashing exists), the last
resort is its outlet. Cutting mains power is a physical act with costs (PSU wear, a cold boot,
inrush when it comes back), so the rules are strict, and each is a test:

1. Opt-in: ``[hard_power] enabled`` and the machine's rack, container or model listed. A
   machine without an inventory placement on a configured PDU outlet is never switched.
2. Firmware first: a hashing machine is cut only when it cannot sleep or is flagged for
   ignoring a sleep (``command_state`` "lying" on a sleep). With ``emergency_skips_sleep``, an
   emergency demand-response shed may cut at once (seconds matter; documented in docs/pdu.md).
3. Shared outlets: switched off only when *every* machine on it should be off -- each wants
   sleep, each is opted in, none is unreachable or unknown (an inventory row with no reading
   blocks the outlet: something unseen is plugged in).
4. Ownership, like a sleep (controller/outlet_journal.py): the intent is journaled before the
   switch; an outlet curtaild switched off is curtaild's until it is seen on; an outlet found
   off that curtaild did not switch is the operator's, and is never switched on; one curtaild
   owned that is found on was switched on by someone else: ownership is dropped.
5. Minimum off time (``min_off_s``) and a cap on switch-offs per outlet per 24 h
   (``max_cycles_per_day``).
6. Restore: outlets first, firmware wake after -- while an outlet curtaild owns is off, every
   firmware command to its machines is suppressed; the outlet is switched on, the machines
   boot (a stock Antminer into the sleep its firmware stored), and the usual guards wake them
   on the next ticks. Switch-ons are staggered against inrush: at most ``max_on_per_pdu`` per
   PDU and ``max_on_per_phase`` per phase per tick, ``on_interval_s`` apart on one PDU.
7. Phase balance: switch-ons go to the least-loaded phase first, and with
   ``max_phase_imbalance_w`` one that would leave the phases further apart than that waits for
   a later tick when another switch-on was already admitted in this one (the first of a tick
   always goes: a restore is never stranded by balance).
   Sheds are never held back for balance: they lower the load.

Machines behind an outlet curtaild owns are read as asleep (state "sleeping", 0 W, power
source "pdu": controller/site.py) so that the policy decides on them like on any sleeping
machine; a wish to run is what switches their outlet back on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from curtaild.controller.inventory import Inventory
from curtaild.controller.site_config import HardPowerConfig
from curtaild.core import economics
from curtaild.core.snapshot import Desired, FleetSnapshot, MarketSnapshot, MinerReading

OutletKey = tuple[str, int]  # (PDU key, outlet number)


@dataclass(frozen=True, slots=True)
class Owned:
    """An outlet curtaild switched off (journal row)."""

    off_since: float
    state: str = "off"  # "off" | "off_intent" | "on_intent"


@dataclass(frozen=True, slots=True)
class OutletAction:
    pdu: str
    outlet: int
    on: bool
    reason: str
    miners: tuple[str, ...] = ()
    phase: str | None = None


@dataclass(slots=True)
class OutletPlan:
    actions: list[OutletAction] = field(default_factory=list)
    #: miner key -> why the tier holds it (shown by plan/status)
    held: dict[str, str] = field(default_factory=dict)
    #: miner keys whose firmware commands are not sent this tick (their outlet is off)
    suppressed: set[str] = field(default_factory=set)
    #: owned outlets seen on: someone else switched them on, ownership is dropped
    released: list[OutletKey] = field(default_factory=list)
    #: outlet -> what curtaild intends ("on" | "off") for the disagreement metric
    intent: dict[OutletKey, str] = field(default_factory=dict)


def opted_in(r: MinerReading, inv: Inventory, cfg: HardPowerConfig) -> bool:
    if not cfg.enabled:
        return False
    p = inv.of(r)
    if p is None or p.outlet_key is None:
        return False
    models = {m.casefold() for m in cfg.models}
    return (p.rack in cfg.racks or p.container in cfg.containers
            or (bool(r.model) and r.model.casefold() in models))


def _needs_cut(r: MinerReading, d: Desired | None, cfg: HardPowerConfig,
               dr_active: bool) -> str | None:
    """Why this machine needs its outlet off (None: it does not)."""
    if d is None or d.action != "sleep":
        return None
    if r.state == "mining" and not r.supports_sleep:
        return "cannot sleep (firmware has no sleep)"
    if r.command_state == "lying" and r.commanded_action == "sleep":
        return "ignored its firmware sleep past its grace (flagged)"
    if cfg.emergency_skips_sleep and d.priority == "emergency" and dr_active \
            and r.state == "mining":
        return "emergency demand-response shed (hard_power.emergency_skips_sleep)"
    return None


def outlet_wishes(fleet: FleetSnapshot, desired: Mapping[str, Desired],
                  market: MarketSnapshot | None, inv: Inventory, cfg: HardPowerConfig,
                  hysteresis_usd_per_day: float) -> dict[str, Desired]:
    """``desired`` with the tier's own economics for opted-in machines that cannot sleep.

    A policy weighs running against *sleeping*; a machine without sleep is told to run (or
    gets no opinion when its draw is below the idle figure, a Bitaxe's 17 W). With an outlet,
    its choice is running against *off* (0 W, no revenue): off when its full-power margin is
    below -``hysteresis``, on again when above +``hysteresis``, as it is in between. An
    operator override or an emergency (thermal, demand response) wish is kept as it is.
    """
    if market is None or not cfg.enabled:
        return dict(desired)
    out = dict(desired)
    for r in fleet.miners:
        if r.supports_sleep or r.state == "unreachable" or not opted_in(r, inv, cfg):
            continue
        d = desired.get(r.key)
        if d is not None and d.priority != "normal":
            continue
        power = r.nameplate_power_w or (r.power_w if r.state == "mining" else 0.0)
        hashrate = r.nameplate_hashrate_ths or r.hashrate_ths
        if not power or not hashrate:
            continue
        margin = economics.margin_usd_per_day(
            hashrate_ths=hashrate, power_w=power,
            hashprice_usd_per_th_day=market.hashprice_usd_per_th_day,
            tariff_usd_per_kwh=market.tariff_usd_per_kwh, pool_fee=market.pool_fee)
        off = r.state == "sleeping"  # read as asleep: its outlet is off (controller/site.py)
        if margin < -hysteresis_usd_per_day or (off and margin <= hysteresis_usd_per_day):
            action, what = "sleep", "outlet off"
        else:
            action, what = "run", "run"
        out[r.key] = Desired(
            action=action,  # type: ignore[arg-type]
            reason=(f"{what} (cannot sleep: outlet off is its only curtailment): margin "
                    f"{margin:+.2f} USD/day at full power ({hashrate:.1f} TH/s, {power:.0f} W) "
                    f"vs 0 with its outlet off, at {market.hashprice_usd_per_th_day:.4f} "
                    f"USD/TH/day, {market.tariff_usd_per_kwh:.3f} USD/kWh"),
            margin_usd_per_day=margin if action == "run" else 0.0,
            run_margin_usd_per_day=margin, sleep_margin_usd_per_day=0.0)
    return out


def plan_outlets(fleet: FleetSnapshot, desired: Mapping[str, Desired], inv: Inventory,
                 observed: Mapping[OutletKey, bool | None], owned: Mapping[OutletKey, Owned],
                 cycles: Mapping[OutletKey, int], last_on_at: Mapping[str, float],
                 cfg: HardPowerConfig, now: float, *, dr_active: bool = False,
                 excluded: frozenset[str] = frozenset()) -> OutletPlan:
    """The tier's decisions for one tick; see the module docstring for the rules."""
    plan = OutletPlan()
    by_outlet: dict[OutletKey, list[MinerReading]] = {}
    phase_of: dict[OutletKey, str | None] = {}
    placed: dict[OutletKey, int] = {}
    for p in inv.placements:
        if p.outlet_key is not None:
            placed[p.outlet_key] = placed.get(p.outlet_key, 0) + 1
            phase_of.setdefault(p.outlet_key, p.phase)
    for r in fleet.miners:
        p = inv.of(r)
        if p is not None and p.outlet_key is not None:
            by_outlet.setdefault(p.outlet_key, []).append(r)
    # ---- outlets curtaild owns: keep off, or restore (staggered)
    restores: list[tuple[OutletKey, list[MinerReading]]] = []
    for key, own in owned.items():
        machines = by_outlet.get(key, [])
        seen = observed.get(key)
        if seen is True:  # switched on by someone else, or our off never took effect, or
            plan.released.append(key)  # our on did: either way not ours any more
            continue
        for r in machines:
            plan.suppressed.add(r.key)
        wants_power = [r for r in machines if (d := desired.get(r.key)) is not None
                       and d.action != "sleep"]
        if not wants_power:
            plan.intent[key] = "off"
            for r in machines:
                plan.held[r.key] = f"outlet {key[1]} of {key[0]} off by curtaild"
            continue
        if now - own.off_since < cfg.min_off_s:
            plan.intent[key] = "off"
            left = cfg.min_off_s - (now - own.off_since)
            for r in machines:
                plan.held[r.key] = (f"outlet {key[1]} of {key[0]} off by curtaild: minimum off "
                                    f"time, {left:.0f} s left")
            continue
        restores.append((key, machines))
    _stagger(plan, restores, fleet, inv, last_on_at, cfg, now)
    # ---- outlets to switch off
    if not cfg.enabled:
        return plan
    for key, machines in by_outlet.items():
        if key in owned or observed.get(key) is not True:
            continue  # ours already, or off/unknown: an outlet found off is the operator's
        why = [w for r in machines if (w := _needs_cut(r, desired.get(r.key), cfg, dr_active))]
        if not why:
            continue
        blocked = None
        if len(machines) < placed.get(key, 0):
            blocked = "a machine placed on it is not in the fleet (unseen): not switched"
        for r in machines:
            d = desired.get(r.key)
            if blocked:
                break
            if r.key in excluded:
                blocked = f"{r.key} is excluded (guards.exclude)"
            elif not opted_in(r, inv, cfg):
                blocked = f"{r.key} is not opted in ([hard_power] racks/containers/models)"
            elif r.state == "unreachable":
                blocked = f"{r.key} is unreachable (its state is unknown)"
            elif d is None or d.action != "sleep":
                blocked = f"shared with {r.key}, which should run"
            elif r.state == "mining" and _needs_cut(r, d, cfg, dr_active) is None:
                blocked = f"{r.key} is hashing and can still be slept by its firmware"
        if blocked is None and cycles.get(key, 0) >= cfg.max_cycles_per_day:
            blocked = (f"switched off {cycles.get(key, 0)} times in 24 h "
                       f"(hard_power.max_cycles_per_day {cfg.max_cycles_per_day})")
        if blocked is not None:
            for r in machines:
                if _needs_cut(r, desired.get(r.key), cfg, dr_active):
                    plan.held[r.key] = f"outlet {key[1]} of {key[0]} not switched off: {blocked}"
            continue
        plan.intent[key] = "off"
        plan.actions.append(OutletAction(key[0], key[1], False, why[0],
                                         tuple(r.key for r in machines), phase_of.get(key)))
        for r in machines:
            plan.suppressed.add(r.key)
            plan.held[r.key] = f"outlet {key[1]} of {key[0]} switched off: {why[0]}"
    return plan


def _phase_loads(fleet: FleetSnapshot, inv: Inventory) -> dict[str, float]:
    loads = {"L1": 0.0, "L2": 0.0, "L3": 0.0}
    for r in fleet.miners:
        p = inv.of(r)
        if p is not None and p.phase in loads:
            loads[p.phase] += max(0.0, r.power_w)
    return loads


def _full_w(machines: list[MinerReading]) -> float:
    return sum(r.nameplate_power_w or r.max_power_limit_w or 0.0 for r in machines)


def _stagger(plan: OutletPlan, restores: list[tuple[OutletKey, list[MinerReading]]],
             fleet: FleetSnapshot, inv: Inventory, last_on_at: Mapping[str, float],
             cfg: HardPowerConfig, now: float) -> None:
    """Switch-ons this tick: least-loaded phase first, limited per PDU and phase."""
    loads = _phase_loads(fleet, inv)
    phase = {key: (inv.of(ms[0]).phase if ms and inv.of(ms[0]) else None)
             for key, ms in restores}
    per_pdu: dict[str, int] = {}
    per_phase: dict[str, int] = {}
    order = sorted(restores, key=lambda kv: (loads.get(phase[kv[0]] or "", 0.0), kv[0]))
    admitted = 0
    for key, machines in order:
        ph = phase[key]
        reason = None
        if per_pdu.get(key[0], 0) >= cfg.max_on_per_pdu:
            reason = f"staggered: {cfg.max_on_per_pdu} outlet(s) of {key[0]} per tick"
        elif ph and per_phase.get(ph, 0) >= cfg.max_on_per_phase:
            reason = f"staggered: {cfg.max_on_per_phase} outlet(s) on {ph} per tick"
        elif now - last_on_at.get(key[0], 0.0) < cfg.on_interval_s:
            reason = (f"staggered: {cfg.on_interval_s:g} s between switch-ons on {key[0]}")
        elif cfg.max_phase_imbalance_w is not None and ph in loads:
            after = dict(loads)
            after[ph] += _full_w(machines)
            spread = max(after.values()) - min(after.values())
            if spread > cfg.max_phase_imbalance_w and admitted:
                reason = (f"phase balance: {ph} would be {spread:.0f} W from the lightest "
                          f"phase (hard_power.max_phase_imbalance_w "
                          f"{cfg.max_phase_imbalance_w:g})")
        if reason is not None:
            plan.intent[key] = "off"
            for r in machines:
                plan.held[r.key] = f"outlet {key[1]} of {key[0]} off by curtaild: {reason}"
            continue
        admitted += 1
        per_pdu[key[0]] = per_pdu.get(key[0], 0) + 1
        if ph:
            per_phase[ph] = per_phase.get(ph, 0) + 1
            loads[ph] = loads.get(ph, 0.0) + _full_w(machines)
        plan.intent[key] = "on"
        plan.actions.append(OutletAction(key[0], key[1], True, "restore: the policy wants "
                                         "its machines running; firmware wake follows",
                                         tuple(r.key for r in machines), ph))
        for r in machines:
            plan.held[r.key] = f"outlet {key[1]} of {key[0]} switched on: booting"
