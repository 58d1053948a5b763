"""The site's power equipment in the loop: observe PDUs and the meter, put measured power on
the readings, plan the hard power-down tier, switch outlets (journaled).

Power source chain (``MinerReading.power_source``): a machine alone on a metered outlet gets
the outlet's measured power ("pdu"), ahead of anything its firmware says; machines sharing a
metered outlet share its power in proportion to their own estimates ("pdu"); otherwise the
chain of drivers/miners.py (firmware, override, model table, nameplate). Site power
(``FleetSnapshot.site_power_w``): the meter when fresh ("meter"), else the sum of the PDUs
when every configured PDU read fresh ("pdu"), else none -- the policies then count their own
per-machine estimates ("estimate"). The source is exported with the value.

Staleness: only a PDU read of this tick that succeeded is used (a PDU that did not answer has
outlets in unknown states: nothing is switched on an unknown state, no ownership changes, and
its power is not used); a read older than ``stale_after_s`` (a slow tick) is not used either.
The meter's last good reading is used for ``[meter] stale_after_s``. A PDU or meter fault
never fails the tick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace

from curtaild.controller.inventory import Inventory, parse_group
from curtaild.controller.journal import JournalError
from curtaild.controller.outlet_journal import OutletJournal
from curtaild.controller.outlets import (
    OutletAction,
    OutletKey,
    OutletPlan,
    balance_firmware,
    dark_details,
    dark_reading,
    outlet_wishes,
    plan_outlets,
    sheddable_outlets,
)
from curtaild.controller.site_config import load_inventory
from curtaild.core.snapshot import Command, Desired, FleetSnapshot, MarketSnapshot, MinerReading
from curtaild.drivers.meter import MeterReading, SunSpecMeter
from curtaild.drivers.pdu import PduError, PduReading
from curtaild.drivers.pdu.build import build_pdus

log = logging.getLogger("curtaild.site")


@dataclass(frozen=True, slots=True)
class SiteView:
    """What one tick saw of the site and did to it (exported with the tick)."""

    pdus: dict[str, PduReading] = field(default_factory=dict)
    fresh: frozenset[str] = frozenset()  # PDU keys whose reading is recent enough to use
    meter: MeterReading | None = None
    meter_fresh: bool = False
    site_power_w: float | None = None
    site_power_source: str = "estimate"  # meter | pdu | estimate
    estimated_w: float = 0.0  # sum of the machines' own figures (the gap metric)
    plan: OutletPlan | None = None
    outcomes: dict[OutletKey, str] = field(default_factory=dict)
    owned: frozenset[OutletKey] = frozenset()
    placements: dict[str, dict[str, str]] = field(default_factory=dict)  # key -> labels
    errors: dict[str, int] = field(default_factory=dict)  # failed reads since start
    switch_failures: int = 0

    def observed(self) -> dict[OutletKey, bool | None]:
        out: dict[OutletKey, bool | None] = {}
        for key in self.fresh:
            for n, o in self.pdus[key].outlets.items():
                out[(key, n)] = o.on
        return out


class Site:
    """One daemon's PDUs, meter, inventory and outlet journal."""

    def __init__(self, config, journal) -> None:
        self.config = config
        self.inventory, _ = load_inventory(config.inventory, config.pdu)
        self.pdus = build_pdus(config.pdu)  # ValueError naming an unreadable secret
        self.stale_after = {p.key: p.stale_after_s for p in config.pdu}
        m = config.meter
        self.meter = SunSpecMeter(m.address, m.port, m.unit_id, m.timeout_s) if m else None
        self.outlets = OutletJournal(journal)
        self.last_good: dict[str, PduReading] = {}
        self.last_meter: MeterReading | None = None
        self.last_view = SiteView()
        self.errors: dict[str, int] = {}  # PDU key or "meter" -> failed reads since start
        self.switch_failures = 0
        self.last_view_observed: dict[OutletKey, bool | None] = {}

    @property
    def active(self) -> bool:
        return bool(self.pdus or self.meter or self.inventory)

    # ---------------------------------------------------------------- observe
    async def observe(self) -> tuple[dict[str, PduReading], MeterReading | None]:
        """Every PDU and the meter at once; each bounded by its own deadline."""
        keys = list(self.pdus)

        async def one(key: str) -> PduReading:
            try:
                return await self.pdus[key].read()
            except Exception as exc:  # a driver bug must not take the tick
                return PduReading(key, "", "", taken_at=time.time(),
                                  error=f"{type(exc).__name__}: {exc}")

        pdu_reads = asyncio.gather(*(one(k) for k in keys))
        meter: MeterReading | None = None
        if self.meter is not None:
            results, meter = await asyncio.gather(pdu_reads, self.meter.read())
        else:
            results = await pdu_reads
        readings = dict(zip(keys, results, strict=True))
        for key, r in readings.items():
            if r.error is None and r.outlets:
                self.last_good[key] = r
            else:
                self.errors[key] = self.errors.get(key, 0) + 1
                log.warning("PDU %s: %s", key, r.error)
        if meter is not None:
            if meter.error is None:
                self.last_meter = meter
            else:
                self.errors["meter"] = self.errors.get("meter", 0) + 1
                log.warning("meter: %s", meter.error)
        return readings, meter

    def view(self, readings: dict[str, PduReading], meter: MeterReading | None,
             now: float) -> SiteView:
        """Which readings are fresh enough to use, and the site power with its source."""
        # Outlet states only from this tick's good reads: an older "on" read before our own
        # switch-off would look like someone switching the outlet back on.
        fresh = frozenset(k for k, r in readings.items() if r.error is None and r.outlets
                          and now - r.taken_at <= self.stale_after.get(k, 120.0))
        pdus = dict(readings)
        meter_fresh = (self.last_meter is not None and self.config.meter is not None
                       and now - self.last_meter.taken_at <= self.config.meter.stale_after_s)
        site_w, source = None, "estimate"
        if meter_fresh and self.last_meter is not None:
            site_w, source = self.last_meter.power_w, "meter"
        elif self.pdus and fresh == frozenset(self.pdus):
            totals = [pdus[k].power_w for k in self.pdus]
            if all(t is not None for t in totals):
                site_w, source = float(sum(totals)), "pdu"  # type: ignore[arg-type]
        view = SiteView(pdus=pdus, fresh=fresh, meter=self.last_meter if meter_fresh else meter,
                        meter_fresh=meter_fresh, site_power_w=site_w, site_power_source=source,
                        owned=frozenset(self.outlets.owned()))
        self.last_view_observed = view.observed()
        return view

    # ------------------------------------------------------------------ apply
    def apply(self, fleet: FleetSnapshot, view: SiteView) -> FleetSnapshot:
        """Measured outlet power on the readings; machines behind an outlet curtaild owns read
        as asleep at 0 W; site power on the snapshot. Writes nothing (``curtaild plan``)."""
        owned = self.outlets.owned()
        observed = view.observed()
        fleet = self._with_dark(fleet, owned, observed)
        by_outlet: dict[OutletKey, list[MinerReading]] = {}
        for r in fleet.miners:
            p = self.inventory.of(r)
            if p is not None and p.outlet_key is not None:
                by_outlet.setdefault(p.outlet_key, []).append(r)
        replaced: dict[str, MinerReading] = {}
        for r in fleet.miners:  # the phase feeding it, for phase-balanced sheds and restores
            p = self.inventory.of(r)
            if p is not None and p.phase and r.phase != p.phase:
                replaced[r.key] = replace(r, phase=p.phase)
        for key, machines in by_outlet.items():
            if key in owned and observed.get(key) is not True:
                for r in machines:  # off by curtaild: asleep, drawing nothing
                    replaced[r.key] = replace(replaced.get(r.key, r), state="sleeping",
                                              power_w=0.0, power_source="pdu",
                                              hashrate_ths=0.0, error=None)
                continue
            pdu = view.pdus.get(key[0])
            if pdu is None or key[0] not in view.fresh:
                continue
            o = pdu.outlets.get(key[1])
            if o is None or o.power_w is None or o.on is not True:
                continue
            live = [r for r in machines if r.state != "unreachable"]
            if not live:
                continue
            weights = [max(r.power_w, 1.0) for r in live]
            total = sum(weights)
            for r, w in zip(live, weights, strict=True):
                replaced[r.key] = replace(replaced.get(r.key, r),
                                          power_w=o.power_w * w / total, power_source="pdu")
        miners = tuple(replaced.get(r.key, r) for r in fleet.miners)
        out = replace(fleet, miners=miners) if replaced else fleet
        if view.site_power_w is not None:
            out = replace(out, site_power_w=view.site_power_w,
                          site_power_source=view.site_power_source)
        limit = self.config.inventory.max_phase_imbalance_w
        if out.max_phase_imbalance_w != limit:
            out = replace(out, max_phase_imbalance_w=limit)
        return out

    def _with_dark(self, fleet: FleetSnapshot, owned, observed) -> FleetSnapshot:  # type: ignore[no-untyped-def]
        """Machines behind an outlet curtaild owns (and has not seen on) that this instance
        never saw answer -- it started after the switch-off: a restart, a standby's takeover
        -- added from what the ownership kept of them (outlets.dark_reading), in place of
        the driver's reading of an address that never answered (no model, keyed by its
        address) or of none: without them nothing would ever want the outlet back on."""
        by_ip = {r.ip: r for r in fleet.miners}
        extra: dict[str, MinerReading] = {}
        now = time.time()
        for key, own in owned.items():
            if observed.get(key) is True:
                continue
            for details in own.machines:
                seen = by_ip.get(details.get("ip"))  # type: ignore[arg-type]
                if seen is not None and (seen.state != "unreachable"
                                         or seen.nameplate_power_w is not None):
                    continue  # this instance knows it: the reading is replaced below
                dark = dark_reading(details, now)
                if dark is None:
                    continue
                placed = self.inventory.of(dark)
                if placed is not None and placed.outlet_key == key:
                    extra[dark.ip] = dark
        if not extra:
            return fleet
        miners = [extra.pop(r.ip, r) for r in fleet.miners]
        return replace(fleet, miners=tuple(miners) + tuple(extra.values()))

    def mark_outlets(self, fleet: FleetSnapshot, view: SiteView, now: float, *,
                     dr_active: bool, excluded: frozenset[str]) -> FleetSnapshot:
        """``MinerReading.outlet`` on every machine whose outlet the tier would switch off (or
        keep off) for a power-cap shed now (controller/outlets.py ``sheddable_outlets``): how
        the cap learns it can shed a machine that cannot sleep. Called after exclusions and
        command states are known, before the policy decides."""
        keys = sheddable_outlets(fleet, self.inventory, view.observed(), self.outlets.owned(),
                                 self.outlets.cycles(now), self.config.hard_power,
                                 dr_active=dr_active, excluded=excluded)
        miners = []
        changed = False
        for r in fleet.miners:
            p = self.inventory.of(r)
            key = p.outlet_key if p is not None else None
            mark = f"{key[0]}/{key[1]}" if key is not None and key in keys else None
            changed |= mark != r.outlet
            miners.append(replace(r, outlet=mark) if mark != r.outlet else r)
        return replace(fleet, miners=tuple(miners)) if changed else fleet

    def balance_commands(self, commands: list[Command], fleet: FleetSnapshot,
                         plan: OutletPlan | None) -> tuple[list[Command], dict[str, str]]:
        """Firmware commands within ``[inventory] max_phase_imbalance_w``, counted after this
        tick's outlet switches (controller/outlets.py ``balance_firmware``)."""
        return balance_firmware(commands, fleet, plan.phase_loads if plan is not None else {},
                                self.config.inventory.max_phase_imbalance_w)

    # ------------------------------------------------------------------- plan
    def expand_groups(self, names: list[str], fleet: FleetSnapshot) -> list[str]:
        """``rack:R``/``container:C`` entries of ``[guards] exclude`` as the miner keys."""
        out = []
        for name in names:
            if parse_group(name) is None:
                out.append(name)
            else:
                out += [r.key for r in self.inventory.members(name, fleet.miners)]
        return out

    def wishes(self, fleet: FleetSnapshot, market: MarketSnapshot | None,
               desired: dict[str, Desired]) -> dict[str, Desired]:
        """The tier's economics for opted-in machines that cannot sleep (running against
        *off*: controller/outlets.py ``outlet_wishes``), added to the base policy's decision
        before the layers (policies/compose.py ``base_hook``), so the power cap counts and
        sheds what the tier would otherwise switch on or off behind its back."""
        return outlet_wishes(fleet, desired, market, self.inventory, self.config.hard_power,
                             self.config.guards.hysteresis_usd_per_day)

    def plan(self, fleet: FleetSnapshot, desired: dict[str, Desired], view: SiteView,
             now: float, *, dr_active: bool, excluded: frozenset[str],
             fast: bool = False) -> OutletPlan:
        """The tier's plan for ``desired`` (the stack's decision, the tier's economics in it:
        :meth:`wishes`). A fast tick (decided on the last observation) switches nothing and
        releases nothing: its outlet states predate the last switches; it only keeps
        firmware commands away from machines behind an outlet curtaild owns."""
        observed = view.observed()
        owned = self.outlets.owned()
        plan = plan_outlets(fleet, desired, self.inventory, observed, owned,
                            self.outlets.cycles(now), self.outlets.last_on_at(),
                            self.config.hard_power, now, dr_active=dr_active,
                            excluded=excluded,
                            max_phase_imbalance_w=self.config.inventory.max_phase_imbalance_w)
        if fast:
            plan.actions, plan.released = [], []
        return plan

    # -------------------------------------------------------------------- act
    async def act(self, plan: OutletPlan, *, dry_run: bool) -> dict[OutletKey, str]:
        """Release outlets others switched on, then switch: intent journaled first, one outlet
        at a time per PDU (a PDU's relays are switched in order, not in a burst)."""
        outcomes: dict[OutletKey, str] = {}
        if not dry_run:
            try:  # intents from a crash or a lost reply, against what the PDUs say now
                self.outlets.settle(self.last_view_observed)
                for key in plan.released:
                    self.outlets.release(key, "seen on: switched on by someone else, or the "
                                         "switch-on or -off this outlet's intent named is done")
            except JournalError as exc:
                log.error("outlet ownership not settled: %s", exc)
        by_pdu: dict[str, list[OutletAction]] = {}
        for a in plan.actions:
            by_pdu.setdefault(a.pdu, []).append(a)

        async def pdu_actions(actions: list[OutletAction]) -> None:
            for a in actions:
                key = (a.pdu, a.outlet)
                what = "on" if a.on else "off"
                if dry_run:
                    outcomes[key] = "dry-run"
                    log.info("dry-run: outlet %d of %s %s (%s)", a.outlet, a.pdu, what,
                             a.reason)
                    continue
                try:
                    if a.on:
                        self.outlets.intend_on(a.pdu, a.outlet)
                    else:
                        self.outlets.intend_off(
                            a.pdu, a.outlet, a.miners, a.reason,
                            machines=tuple(dark_details(r) for r in a.readings))
                except JournalError as exc:
                    outcomes[key] = f"failed: not sent, intent not journaled: {exc}"
                    continue
                try:
                    await self.pdus[a.pdu].switch(a.outlet, a.on)
                    ok, detail = True, None
                except PduError as exc:
                    ok, detail = False, str(exc)
                    self.switch_failures += 1
                try:
                    (self.outlets.on_done if a.on else self.outlets.off_done)(
                        a.pdu, a.outlet, ok, detail)
                except JournalError as exc:
                    log.error("outlet %d of %s: outcome not journaled: %s", a.outlet, a.pdu,
                              exc)
                outcomes[key] = "ok" if ok else f"failed: {detail}"
                log.log(logging.INFO if ok else logging.WARNING,
                        "outlet %d of %s %s (%s): %s; machines %s", a.outlet, a.pdu, what,
                        a.reason, outcomes[key], ", ".join(a.miners) or "none")

        await asyncio.gather(*(pdu_actions(v) for v in by_pdu.values()))
        return outcomes

    def finish(self, view: SiteView, fleet: FleetSnapshot,
               plan: OutletPlan | None) -> SiteView:
        """The view as exported: labels, the machines' own total, ownership after acting."""
        from curtaild.policies.layer import present_w

        return replace(view, plan=plan if view.plan is None else view.plan,
                       placements=self.labels(fleet),
                       estimated_w=sum(present_w(r) for r in fleet.miners),
                       errors=dict(self.errors), switch_failures=self.switch_failures,
                       owned=frozenset(self.outlets.owned()))

    def expand_overrides(self, directives, fleet: FleetSnapshot):
        """Overrides naming ``rack:R``/``container:C`` as one override per machine in it
        (a machine's own override wins over its rack's)."""
        if not any(parse_group(o.key) for o in directives.overrides):
            return directives
        own = {o.key for o in directives.overrides if parse_group(o.key) is None}
        out = [o for o in directives.overrides if parse_group(o.key) is None]
        for o in directives.overrides:
            if parse_group(o.key) is not None:
                out += [replace(o, key=r.key) for r in self.inventory.members(o.key,
                                                                             fleet.miners)
                        if r.key not in own]
        return replace(directives, overrides=tuple(out))

    def labels(self, fleet: FleetSnapshot) -> dict[str, dict[str, str]]:
        out = {}
        for r in fleet.miners:
            p = self.inventory.of(r)
            if p is not None:
                out[r.key] = p.labels()
        return out


__all__ = ["Inventory", "Site", "SiteView"]
