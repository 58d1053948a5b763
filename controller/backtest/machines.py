"""Simulated machines for the backtest: the emulator's physics without sockets, noise or heat.

A :class:`SimMachine` follows ``emulator/physics.py`` exactly where money is made: wall power
is the power limit (nameplate when none), hashrate is ``nameplate x load**ALPHA`` with
``load = (power - idle) / (nameplate - idle)``, a sleeping or booting machine draws its idle
power and hashes nothing, and a wake takes the model's ``boot_s`` (90 s on an S19) before it
hashes, then, on firmware that ramps (Whatsminer, LuxOS), ``wake_ramp_s`` over which power
rises linearly from idle to the target and the hashrate follows the curve. A new power limit
on a hashing machine costs ``restart_s`` of hashing at idle draw (a Whatsminer restarts btminer
for ~2 min unless its firmware has fast boot, LuxOS re-tunes: ``[guards] limit_restart_s``,
the same figure the guards weigh); a limit set while the machine sleeps or boots costs nothing
more than the boot. Boot, ramp and restart come from ``core/switching.py``, the table the
margin policy weighs too, and every reading carries them (``MinerReading.switching``). It has
no measurement noise (a backtest must be reproducible to the cent) and no thermal model (no
policy layer prices temperature).

Capabilities mirror what the controller sees through pyasic (``drivers/miners.py``): stock
Antminer firmware takes no power target and reports no wattage (its power comes from the
nameplate table), Whatsminer and LuxOS take power targets, a Bitaxe cannot be put to sleep.

The fleet comes from an emulator fleet TOML (``--fleet FILE``, docs/emulator.md; faults,
addresses' ports and ambient temperatures do not matter here and are ignored), a model count
spec (``--fleet "S21=10,M50=4"``), or by default the demo's 16 machines (``curtaild emulate
--count 16``: every model twice).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from curtaild.controller.backtest.fleet import SimFleet, SimPlan, read_fleet_file
from curtaild.core.fleet import FleetError, consecutive, parse_loopback
from curtaild.core.models import ALPHA, MODELS, ModelSpec, demo_mix
from curtaild.core.snapshot import Action, Command, MinerReading
from curtaild.core.switching import SwitchingCosts, costs_for, ramp_segment

#: Firmware families pyasic cannot stop (drivers.miners.NO_SLEEP_FAMILIES, kept equal by a test).
NO_SLEEP_FIRMWARE = frozenset({"bitaxe"})
#: Firmware families that take power targets (drivers.miners.POWER_LIMIT_FAMILIES).
POWER_LIMIT_FIRMWARE = frozenset({"whatsminer", "luxos", "braiins", "vnish", "epic"})
#: Firmware that reports its wattage (stock Antminer does not: nameplate is used instead).
NO_WATTAGE_FIRMWARE = frozenset({"antminer"})
#: The default fleet: the demo's (``curtaild emulate --count 16``).
DEFAULT_COUNT = 16
#: Power limits closer than this are the same limit (the guards' tolerance floor).
SAME_LIMIT_W = 25.0


def hashrate_at_ths(spec: ModelSpec, power_w: float) -> float:
    """Hashrate at a wall power, on the emulator's curve (no noise)."""
    span = spec.power_w - spec.idle_power_w
    load = max(0.0, (power_w - spec.idle_power_w) / span) if span > 0 else 0.0
    return spec.hashrate_ths * load**ALPHA


@dataclass(slots=True)
class SimMachine:
    """One machine's physical state over simulated time, and what it has cost and earned."""

    key: str
    ip: str
    model: str  # key of core.models.MODELS
    spec: ModelSpec
    state: str = "mining"  # mining | sleeping | booting
    power_limit_w: float | None = None  # None: nameplate
    boot_done_at: float = 0.0
    restart_s: float = 0.0  # hashing lost per power-limit change while hashing
    restarting: bool = False  # booting after a limit change (the controller sees it mining)
    fast_boot: bool = False  # Whatsminer fast boot: a new limit costs no restart
    boot_s: float = 90.0  # a wake hashes nothing this long (core/switching.py)
    wake_ramp_s: float = 0.0  # then ramps from idle to the target this long
    ramp_from: float | None = None  # when the running wake's ramp began (None: not ramping)
    # accounting
    energy_kwh: float = 0.0
    revenue_usd: float = 0.0
    energy_cost_usd: float = 0.0
    mining_s: float = 0.0
    limited_s: float = 0.0
    sleeping_s: float = 0.0
    booting_s: float = 0.0
    sleeps: int = 0
    wakes: int = 0
    limit_changes: int = 0
    limit_change_at: list[float] = field(default_factory=list)  # when each one was made
    events: list[tuple[float, str, float | None]] = field(default_factory=list)

    @property
    def supports_sleep(self) -> bool:
        return self.spec.firmware not in NO_SLEEP_FIRMWARE

    @property
    def supports_power_limit(self) -> bool:
        # The emulator refuses a limit where min == max (stock Antminer, Bitaxe).
        return (self.spec.firmware in POWER_LIMIT_FIRMWARE
                and self.spec.min_power_w < self.spec.max_power_w)

    @property
    def switches(self) -> int:
        return self.sleeps + self.wakes + self.limit_changes

    def max_limit_changes_per_day(self, start: float) -> int:
        """The most power-target changes in one day (24 h windows from ``start``): what "a few
        limit changes a day" is measured on (a target given with a wake counts too)."""
        days = Counter(int((t - start) // 86_400.0) for t in self.limit_change_at)
        return max(days.values(), default=0)

    @property
    def costs(self) -> SwitchingCosts:
        """What a change costs this machine (what its readings tell the policy)."""
        return SwitchingCosts(boot_s=self.boot_s, wake_ramp_s=self.wake_ramp_s,
                              limit_restart_s=0.0 if self.fast_boot else self.restart_s)

    def settle(self, now: float) -> None:
        """A boot that has finished by ``now`` becomes mining; a ramp that has ended, done."""
        if self.state == "booting" and now >= self.boot_done_at:
            self.state = "mining"
            self.restarting = False
        if self.ramp_from is not None and now >= self.ramp_from + self.wake_ramp_s:
            self.ramp_from = None

    def mining_power_w(self) -> float:
        return self.power_limit_w if self.power_limit_w is not None else self.spec.power_w

    def _ramp_fraction(self, now: float) -> float:
        if self.ramp_from is None or self.wake_ramp_s <= 0:
            return 1.0
        return min(1.0, max(0.0, (now - self.ramp_from) / self.wake_ramp_s))

    def power_w(self, now: float | None = None) -> float:
        """Wall power now (``now`` None: at the end of any ramp)."""
        if self.state != "mining":
            return self.spec.idle_power_w
        f = 1.0 if now is None else self._ramp_fraction(now)
        idle = self.spec.idle_power_w
        return idle + (self.mining_power_w() - idle) * f

    def hashrate_ths(self, now: float | None = None) -> float:
        if self.state != "mining":
            return 0.0
        f = 1.0 if now is None else self._ramp_fraction(now)
        return hashrate_at_ths(self.spec, self.mining_power_w()) * f**ALPHA

    def reading(self, now: float, idle_estimate_w: float) -> MinerReading:
        """What the controller would observe through pyasic now.

        A booting machine hashes nothing yet, so the driver sees it asleep (as it sees a real
        one); stock Antminer power is the nameplate figure (``idle_estimate_w`` asleep).
        """
        self.settle(now)
        state = "mining" if self.state == "mining" or self.restarting else "sleeping"
        if self.spec.firmware in NO_WATTAGE_FIRMWARE:
            power, source = ((self.spec.power_w, "nameplate") if state == "mining"
                             else (idle_estimate_w, "idle_estimate"))
        else:
            power, source = self.power_w(now), "firmware"
        limits = self.supports_power_limit
        return MinerReading(
            key=self.key, ip=self.ip, make=self.spec.make, model=self.spec.model,
            firmware=self.spec.firmware, state=state,  # type: ignore[arg-type]
            hashrate_ths=self.hashrate_ths(now), power_w=power,
            power_source=source,  # type: ignore[arg-type]
            power_limit_w=self.power_limit_w if limits else None, temp_c=None,
            nameplate_hashrate_ths=self.spec.hashrate_ths, nameplate_power_w=self.spec.power_w,
            supports_sleep=self.supports_sleep, supports_power_limit=limits,
            min_power_limit_w=self.spec.min_power_w if limits else None,
            max_power_limit_w=self.spec.max_power_w if limits else None,
            observed_at=now, mac=self.key, serial=None, switching=self.costs)

    def apply(self, command: Command, now: float) -> bool:
        """Carry out a command the way the driver sends it (sleep = stop_mining; run/limit =
        resume_mining if not mining, then set_power_limit if a limit is given). True when
        something physical changed (a switch)."""
        self.settle(now)
        changed = False
        action: Action = command.action
        if action == "sleep":
            if self.supports_sleep and self.state in ("mining", "booting"):
                self.state, self.restarting, self.ramp_from = "sleeping", False, None
                self.sleeps += 1
                changed = True
        else:
            if self.state == "sleeping":
                self.state = "booting"
                self.boot_done_at = now + self.boot_s
                self.ramp_from = now + self.boot_s if self.wake_ramp_s > 0 else None
                self.wakes += 1
                changed = True
            if command.power_limit_w is not None and self.supports_power_limit:
                new = max(self.spec.min_power_w, min(self.spec.max_power_w,
                                                     float(command.power_limit_w)))
                if abs(new - self.mining_power_w()) > SAME_LIMIT_W:
                    self.limit_changes += 1
                    self.limit_change_at.append(now)
                    changed = True
                    if self.state == "mining" and self.restart_s > 0 and not self.fast_boot:
                        self.state, self.restarting = "booting", True
                        self.boot_done_at = now + self.restart_s
                        self.ramp_from = None  # the restart brings it up at the new target
                self.power_limit_w = new
        if changed:
            self.events.append((now, action, command.power_limit_w))
        return changed

    def advance(self, start: float, end: float, hashprice_usd_per_th_day: float,
                tariff_usd_per_kwh: float, pool_fee: float) -> None:
        """Integrate energy, revenue and cost over [start, end), splitting at a boot's end and
        a ramp's end (a ramp integrated exactly: core.switching.ramp_segment)."""
        t = start
        while t < end:
            self.settle(t)
            until = min(end, self.boot_done_at) if self.state == "booting" else end
            if self.ramp_from is not None:
                until = min(until, self.ramp_from + self.wake_ramp_s)
            dt = until - t  # > 0: settle() has turned a boot that ended by t into mining
            if self.state == "mining" and self.ramp_from is not None:  # ramping up
                load_s, hash_s = ramp_segment(t - self.ramp_from, until - self.ramp_from,
                                              self.wake_ramp_s, ALPHA)
                idle = self.spec.idle_power_w
                joules = idle * dt + (self.mining_power_w() - idle) * load_s
                ths_s = hashrate_at_ths(self.spec, self.mining_power_w()) * hash_s
            else:
                joules = self.power_w() * dt
                ths_s = self.hashrate_ths() * dt
            kwh = joules / 3_600_000.0
            self.energy_kwh += kwh
            self.energy_cost_usd += kwh * tariff_usd_per_kwh
            self.revenue_usd += (ths_s * hashprice_usd_per_th_day * (1.0 - pool_fee)
                                 / 86_400.0)
            if self.state == "mining":
                self.mining_s += dt
                if self.power_limit_w is not None and \
                        self.power_limit_w < self.spec.power_w - SAME_LIMIT_W:
                    self.limited_s += dt
            elif self.state == "sleeping":
                self.sleeping_s += dt
            else:
                self.booting_s += dt
            t = until


def _mac(ip: str) -> str:
    """The emulator's MAC for an address (emulator/physics.py), which the driver keys on."""
    return "02:EC:{:02X}:{:02X}:{:02X}:{:02X}".format(*(int(x) for x in ip.split(".")))


_SPEC_ITEM = re.compile(r"^\s*(?P<model>[^=]+?)\s*=\s*(?P<count>\d+)\s*$")


def plan_from_spec(text: str) -> SimFleet:
    """``"S21=10, M50=4"``: that many machines of each model (keys of emulator MODELS)."""
    ips = consecutive(parse_loopback("127.1.0.1"))
    miners: list[SimPlan] = []
    for item in text.split(","):
        m = _SPEC_ITEM.match(item)
        if m is None:
            raise FleetError(f"--fleet {text!r}: {item.strip()!r} is not MODEL=COUNT "
                             "(e.g. \"S21=10,M50=4\") and no such file exists")
        model, count = m["model"], int(m["count"])
        if model not in MODELS:
            raise FleetError(f"--fleet {text!r}: unknown model {model!r}; one of: "
                             f"{', '.join(MODELS)}")
        if count < 1:
            raise FleetError(f"--fleet {text!r}: {model}: count must be at least 1")
        miners.extend(SimPlan(ip=next(ips), model=model) for _ in range(count))
    return SimFleet(miners)


def fleet_plan(arg: str | None) -> SimFleet:
    """``--fleet``: an emulator fleet file, else a MODEL=COUNT spec; default: the demo's 16."""
    if arg is None:
        ips = consecutive(parse_loopback("127.1.0.1"))
        return SimFleet([SimPlan(ip=next(ips), model=model) for model in demo_mix(DEFAULT_COUNT)])
    if Path(arg).is_file() or arg.endswith(".toml"):
        return read_fleet_file(arg)
    return plan_from_spec(arg)


def build_machines(plan: SimFleet) -> list[SimMachine]:
    """Every machine mining at the start, under the fleet file's power limit if it sets one."""
    out = []
    for p in plan.miners:
        spec = MODELS[p.model]
        costs = costs_for(spec.firmware, spec.model)
        m = SimMachine(key=_mac(p.ip), ip=p.ip, model=p.model, spec=spec,
                       fast_boot=bool(p.fast_boot), restart_s=costs.limit_restart_s,
                       boot_s=costs.boot_s, wake_ramp_s=costs.wake_ramp_s)
        if p.power_limit_w is not None and m.supports_power_limit:
            m.power_limit_w = max(spec.min_power_w, min(spec.max_power_w, p.power_limit_w))
        out.append(m)
    return out
