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
7. Phase balance (core/phases.py): switch-ons go to the least-loaded phase first; with
   ``[inventory] max_phase_imbalance_w`` a switch-on or an economic switch-off that would
   leave the phases further apart than that, and further apart than they are, waits for a
   later tick. A change that keeps or improves the balance always goes (never stranded in an
   imbalance). Emergency (power cap, demand response, thermal) and operator switch-offs are
   never held: the power cap already chose its sheds with the balance in mind.
8. Power cap and demand response (policies/power_cap.py): :func:`sheddable_outlets` names
   the outlets every rule above would let go off now (or stay off); the controller marks
   their machines (``MinerReading.outlet``) so the cap can shed a machine that cannot sleep
   -- with every machine on its outlet -- where firmware cannot.

Machines behind an outlet curtaild owns are read as asleep (state "sleeping", 0 W, power
source "pdu": controller/site.py) so that the policy decides on them like on any sleeping
machine; a wish to run is what switches their outlet back on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from curtaild.controller.inventory import Inventory
from curtaild.controller.site_config import HardPowerConfig
from curtaild.core import economics, phases
from curtaild.core.snapshot import Command, Desired, FleetSnapshot, MarketSnapshot, MinerReading

OutletKey = tuple[str, int]  # (PDU key, outlet number)


@dataclass(frozen=True, slots=True)
class Owned:
    """An outlet curtaild switched off (journal row)."""

    off_since: float
    state: str = "off"  # "off" | "off_intent" | "on_intent"
    #: the machines on it when it was switched off, as :func:`dark_details` keeps them: a
    #: machine that has not answered since (an instance that started after the switch-off: a
    #: restart, a standby's takeover) is decided on from them (controller/site.py)
    machines: tuple[dict, ...] = ()


@dataclass(frozen=True, slots=True)
class OutletAction:
    pdu: str
    outlet: int
    on: bool
    reason: str
    miners: tuple[str, ...] = ()
    phase: str | None = None
    #: the machines' readings when it is switched off (kept with the ownership: Owned.machines)
    readings: tuple[MinerReading, ...] = ()


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
    #: load per phase (W) with this plan's switches counted: where firmware commands are
    #: balanced from (controller/site.py)
    phase_loads: dict[str, float] = field(default_factory=dict)


#: What is kept of each machine on an outlet curtaild switches off: enough to decide on it
#: while it is dark (its economics, whether it can sleep) and to know it by its key.
DARK_FIELDS = ("key", "ip", "make", "model", "firmware", "nameplate_power_w",
               "nameplate_hashrate_ths", "supports_sleep", "supports_power_limit", "mac",
               "serial", "phase")


def dark_details(r: MinerReading) -> dict:
    """The part of ``r`` kept with the ownership of its outlet (:data:`DARK_FIELDS`)."""
    return {name: getattr(r, name) for name in DARK_FIELDS}


def dark_reading(details: dict, now: float) -> MinerReading | None:
    """A machine behind an outlet curtaild switched off that this instance has not seen
    answer, from what was kept when the outlet went off: asleep at 0 W (its outlet is off),
    so the policy decides on it like on any sleeping machine. None if the details are
    unusable."""
    try:
        kept = {name: details[name] for name in DARK_FIELDS if name in details}
        return MinerReading(**{
            "make": "", "model": "", "firmware": "", "mac": None, "serial": None,
            **kept, "state": "sleeping", "hashrate_ths": 0.0, "power_w": 0.0,
            "power_source": "pdu", "power_limit_w": None, "temp_c": None,
            "observed_at": now, "error": None})
    except (KeyError, TypeError, ValueError):
        return None


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
        why = "cannot sleep (firmware has no sleep)"
        if d.priority == "emergency" and d.reason.startswith("power cap"):
            why += f", shed for the {d.reason.partition(':')[0]}"
        return why
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


def _placed(fleet: FleetSnapshot, inv: Inventory) -> tuple[
        dict[OutletKey, list[MinerReading]], dict[OutletKey, int], dict[OutletKey, str | None]]:
    """Machines seen on each outlet, how many the site map places there, and its phase."""
    by_outlet: dict[OutletKey, list[MinerReading]] = {}
    phase_of: dict[OutletKey, str | None] = {}
    placed: dict[OutletKey, int] = {}
    for p in inv.placements:
        if p.outlet_key is not None:
            placed[p.outlet_key] = placed.get(p.outlet_key, 0) + 1
            phase_of.setdefault(p.outlet_key, p.phase)
    for r in fleet.miners:
        placement = inv.of(r)
        if placement is not None and placement.outlet_key is not None:
            by_outlet.setdefault(placement.outlet_key, []).append(r)
    return by_outlet, placed, phase_of


def _excluded(r: MinerReading, excluded: frozenset[str]) -> bool:
    """``[guards] exclude`` as the guards read it: key, IP, MAC or serial, any case
    (``excluded`` holds the names casefolded)."""
    return any(i is not None and i.casefold() in excluded
               for i in (r.key, r.ip, r.mac, r.serial))


def _sleep_tried(r: MinerReading, cfg: HardPowerConfig, dr_active: bool) -> bool:
    """Rule 2 for a power-cap shed: not hashing, cannot sleep, flagged for ignoring a sleep, or
    an emergency demand-response shed where the operator allowed skipping the firmware."""
    return (r.state != "mining" or not r.supports_sleep
            or (r.command_state == "lying" and r.commanded_action == "sleep")
            or (cfg.emergency_skips_sleep and dr_active))


def sheddable_outlets(fleet: FleetSnapshot, inv: Inventory,
                      observed: Mapping[OutletKey, bool | None],
                      owned: Mapping[OutletKey, Owned], cycles: Mapping[OutletKey, int],
                      cfg: HardPowerConfig, *, dr_active: bool = False,
                      excluded: frozenset[str] = frozenset()) -> set[OutletKey]:
    """Outlets a power-cap (or demand-response) shed may switch off now, or keep off.

    The same rules as :func:`plan_outlets`, asked before the policy decides: an outlet
    curtaild owns and has not seen on (kept off); or one seen on this tick, whose machines are
    all seen, opted in, reachable and not excluded, each past its firmware sleep (rule 2),
    with switch-offs left today. The cap then sheds every machine on it together, so the
    shared-outlet rule holds by construction.
    """
    if not cfg.enabled:
        return set()
    by_outlet, placed, _ = _placed(fleet, inv)
    out: set[OutletKey] = set()
    for key, machines in by_outlet.items():
        seen = observed.get(key)
        if key in owned:
            if seen is not True:
                out.add(key)  # ours and off: a shed keeps it off
            continue
        if seen is not True or len(machines) < placed.get(key, 0):
            continue
        if cycles.get(key, 0) >= cfg.max_cycles_per_day:
            continue
        if all(not _excluded(r, excluded) and r.state != "unreachable" and opted_in(r, inv, cfg)
               and _sleep_tried(r, cfg, dr_active) for r in machines):
            out.add(key)
    return out


def plan_outlets(fleet: FleetSnapshot, desired: Mapping[str, Desired], inv: Inventory,
                 observed: Mapping[OutletKey, bool | None], owned: Mapping[OutletKey, Owned],
                 cycles: Mapping[OutletKey, int], last_on_at: Mapping[str, float],
                 cfg: HardPowerConfig, now: float, *, dr_active: bool = False,
                 excluded: frozenset[str] = frozenset(),
                 max_phase_imbalance_w: float | None = None) -> OutletPlan:
    """The tier's decisions for one tick; see the module docstring for the rules."""
    plan = OutletPlan()
    by_outlet, placed, phase_of = _placed(fleet, inv)
    loads = _phase_loads(fleet, inv)
    # ---- outlets curtaild owns: keep off, or restore (staggered, after the switch-offs)
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
    # ---- outlets to switch off
    if cfg.enabled:
        _cuts(plan, by_outlet, placed, phase_of, desired, inv, observed, owned, cycles, cfg,
              loads, dr_active=dr_active, excluded=excluded, limit_w=max_phase_imbalance_w)
    _stagger(plan, restores, inv, last_on_at, cfg, now, loads, max_phase_imbalance_w)
    plan.phase_loads = loads
    return plan


def _cuts(plan: OutletPlan, by_outlet: dict[OutletKey, list[MinerReading]],
          placed: dict[OutletKey, int], phase_of: dict[OutletKey, str | None],
          desired: Mapping[str, Desired], inv: Inventory,
          observed: Mapping[OutletKey, bool | None], owned: Mapping[OutletKey, Owned],
          cycles: Mapping[OutletKey, int], cfg: HardPowerConfig, loads: dict[str, float], *,
          dr_active: bool, excluded: frozenset[str], limit_w: float | None) -> None:
    # heaviest phase first: an economic switch-off there narrows the spread
    for key, machines in sorted(by_outlet.items(),
                                key=lambda kv: (-loads.get(phase_of.get(kv[0]) or "", 0.0),
                                                kv[0])):
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
            if _excluded(r, excluded):
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
        ph = phase_of.get(key)
        drop = -sum(max(0.0, r.power_w) for r in machines)
        if blocked is None and all((d := desired.get(r.key)) is not None
                                   and d.priority == "normal" for r in machines):
            blocked = phases.balance_hold(loads, ph, drop, limit_w)
        if blocked is not None:
            for r in machines:
                if _needs_cut(r, desired.get(r.key), cfg, dr_active):
                    plan.held[r.key] = f"outlet {key[1]} of {key[0]} not switched off: {blocked}"
            continue
        phases.admit(loads, ph, drop)
        plan.intent[key] = "off"
        plan.actions.append(OutletAction(key[0], key[1], False, why[0],
                                         tuple(r.key for r in machines), ph, tuple(machines)))
        for r in machines:
            plan.suppressed.add(r.key)
            own = _needs_cut(r, desired.get(r.key), cfg, dr_active) or why[0]
            plan.held[r.key] = f"outlet {key[1]} of {key[0]} switched off: {own}"


def _phase_loads(fleet: FleetSnapshot, inv: Inventory) -> dict[str, float]:
    """What each phase the site map uses carries now (the machines' present draw), W."""
    loads = {p.phase: 0.0 for p in inv.placements if p.phase}
    for r in fleet.miners:
        p = inv.of(r)
        ph = r.phase or (p.phase if p is not None else None)
        if ph and r.state != "unreachable":
            loads[ph] = loads.get(ph, 0.0) + max(0.0, r.power_w)
    return loads


def _full_w(machines: list[MinerReading]) -> float:
    return sum(r.nameplate_power_w or r.max_power_limit_w or 0.0 for r in machines)


def _stagger(plan: OutletPlan, restores: list[tuple[OutletKey, list[MinerReading]]],
             inv: Inventory, last_on_at: Mapping[str, float], cfg: HardPowerConfig,
             now: float, loads: dict[str, float], limit_w: float | None) -> None:
    """Switch-ons this tick: least-loaded phase first, limited per PDU and phase."""
    phase = {key: (p.phase if ms and (p := inv.of(ms[0])) is not None else None)
             for key, ms in restores}
    per_pdu: dict[str, int] = {}
    per_phase: dict[str, int] = {}
    order = sorted(restores, key=lambda kv: (loads.get(phase[kv[0]] or "", 0.0), kv[0]))
    for key, machines in order:
        ph = phase[key]
        reason = None
        if per_pdu.get(key[0], 0) >= cfg.max_on_per_pdu:
            reason = f"staggered: {cfg.max_on_per_pdu} outlet(s) of {key[0]} per tick"
        elif ph and per_phase.get(ph, 0) >= cfg.max_on_per_phase:
            reason = f"staggered: {cfg.max_on_per_phase} outlet(s) on {ph} per tick"
        elif now - last_on_at.get(key[0], 0.0) < cfg.on_interval_s:
            reason = (f"staggered: {cfg.on_interval_s:g} s between switch-ons on {key[0]}")
        else:
            reason = phases.balance_hold(loads, ph, _full_w(machines), limit_w)
        if reason is not None:
            plan.intent[key] = "off"
            for r in machines:
                plan.held[r.key] = f"outlet {key[1]} of {key[0]} off by curtaild: {reason}"
            continue
        per_pdu[key[0]] = per_pdu.get(key[0], 0) + 1
        if ph:
            per_phase[ph] = per_phase.get(ph, 0) + 1
        phases.admit(loads, ph, _full_w(machines))
        plan.intent[key] = "on"
        plan.actions.append(OutletAction(key[0], key[1], True, "restore: the policy wants "
                                         "its machines running; firmware wake follows",
                                         tuple(r.key for r in machines), ph))
        for r in machines:
            plan.held[r.key] = f"outlet {key[1]} of {key[0]} switched on: booting"


def balance_firmware(commands: list[Command], fleet: FleetSnapshot,
                     loads: Mapping[str, float], limit_w: float | None
                     ) -> tuple[list[Command], dict[str, str]]:
    """Firmware sleeps, limits and wakes of normal priority that would leave the phases
    further apart than ``limit_w`` (and further than they are) wait for a later tick
    (core/phases.py); ``loads``: each phase's load with this tick's outlet switches counted
    (``OutletPlan.phase_loads``; empty: the machines' present draw). Emergency sheds and
    operator commands always go. Returns the commands kept, in their order, and why the others
    wait. A held command is proposed again next tick (level-triggered); the ramp budget it was
    admitted with is not refunded, so balance can only slow a restore, never speed one."""
    if limit_w is None:
        return commands, {}
    by_key = fleet.by_key()
    work = dict(loads) if loads else phases.phase_loads(
        (r for r in fleet.miners if r.state != "unreachable"), lambda r: r.power_w)
    kept: set[int] = set()
    held: dict[str, str] = {}
    # sheds before wakes: a shed on a heavy phase makes room for a wake on a light one
    for i, c in sorted(enumerate(commands),
                       key=lambda ic: (ic[1].priority == "normal", ic[1].delta_power_w, ic[0])):
        r = by_key.get(c.key)
        phase = r.phase if r is not None else None
        why = phases.balance_hold(work, phase, c.delta_power_w, limit_w) \
            if c.priority == "normal" else None
        if why is not None:
            held[c.key] = f"{c.action} waits: {why}"
            continue
        phases.admit(work, phase, c.delta_power_w)
        kept.add(i)
    return [c for i, c in enumerate(commands) if i in kept], held
