"""The power_cap policy: keep site power under a cap, shedding the worst margin per watt first.

The cap in force at ``now`` is the lowest of:

- ``cap_w`` -- a fixed site limit (feeder, transformer, contract);
- ``schedule`` -- windows of local wall-clock time with their own ``cap_w`` (same window
  shape as the tariff's: ``start``/``end`` "HH:MM", ``days``, ``months``, ``timezone``);
- a demand-response event (``Directives.power_cap_w`` until ``power_cap_until``), which needs
  no configuration: the layer is in every stack and obeys events even with nothing else set.

Site power is *estimated under the decision below this layer* (running: measured draw or full
power; limited: the target; asleep: idle draw), plus ``headroom_w`` kept free. While the total
is over the cap, machines are shed in order of worst margin per watt (``margin / power`` at
the present market; without market inputs, worst J/TH first). A machine whose firmware takes
power targets is limited -- only as far as needed, down to its lowest target -- when that
loses less hashrate per watt shed than sleeping it (on the efficiency curve hashrate ~ (P -
idle)^efficiency_exponent, a lower target is more efficient, so it keeps more revenue per
watt); otherwise it is slept. Machines decided by a higher layer (operator overrides, thermal)
are counted but never shed by the cap.

The cap is met on *confirmed* power (issue 14): a machine whose last command is not yet seen in
effect (``MinerReading.command_state`` "pending" or "failed": a stock Antminer may store a sleep
and keep hashing) or that is flagged for ignoring commands ("lying") is counted at what it was
last observed drawing -- a pending wake at its full draw -- and is never picked to shed: its
command is already out (re-sent at most once per grace) or it does not obey. The cap sheds
another machine instead. A machine silent right after our own command ("transitioning") counts
as any unreachable one (its draw is unknown: ``headroom_w``).

A machine that cannot sleep (a Bitaxe) is shed at its PDU outlet where the controller marked
it (``MinerReading.outlet``: the hard power-down tier would switch that outlet off now, every
safety rule met; controller/outlets.py), together with every machine on the outlet, each then
counted at 0 W. Outlets already off are kept off before any other is cut (no switch, no cycle
spent). Behind an outlet curtaild switched off a machine counts 0 W only while the outlet stays
off: when a machine on it is wanted running, the others count what they draw once powered.
With ``FleetSnapshot.max_phase_imbalance_w`` (site map phases), a shed that would leave the
phases further apart than that is passed over for the next worst, and taken only if the cap
still needs it (core/phases.py).

Every shed has priority "emergency" (it acts at once, ahead of the ramp and the command cap,
with no dwell or hysteresis, and through stale market inputs): a cap is a physical or
contractual limit -- a feeder, a transformer, a demand-response obligation -- not an economic
choice, and a price feed going stale must not let the site grow past it. Restores under the
cap stay ramped.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field, field_validator

from curtaild.core import economics, phases
from curtaild.core.snapshot import Desired, Directives, FleetSnapshot, MarketSnapshot, MinerReading
from curtaild.core.timewindow import TimeWindow, check_timezone, window_matches
from curtaild.policies import layer
from curtaild.policies.base import PolicyConfig


class CapWindow(TimeWindow):
    """A scheduled cap: ``{ start = "14:00", end = "20:00", days = "weekdays", cap_w = ... }``."""

    cap_w: float = Field(gt=0.0)
    timezone: str | None = Field(None, description="default: the policy's timezone")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return None if v is None else check_timezone(v)


class PowerCapConfig(PolicyConfig):
    """``[policy.power_cap]`` keys (or ``[policy]`` with ``name = "power_cap"``)."""

    cap_w: float | None = Field(None, gt=0.0)
    """Fixed site cap, W; unset: only scheduled caps and demand-response events apply."""

    schedule: list[CapWindow] = Field(default_factory=list)
    """Scheduled caps, each a time window with its own cap_w (the lowest in force wins)."""

    timezone: str = "UTC"
    """IANA time zone of the schedule's wall-clock times (a window may set its own)."""

    headroom_w: float = Field(0.0, ge=0.0)
    """Kept free below the cap, W: covers estimate error and machines curtaild cannot see."""

    use_power_limits: bool = True
    """Shed with power targets (as far as needed) where firmware allows and it keeps more
    revenue per watt than sleeping."""

    efficiency_exponent: float = Field(0.75, gt=0.0, le=1.0)
    """Hashrate ~ (power - idle)^exponent under a power limit (as in the margin policy)."""

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return check_timezone(v)


@dataclass(frozen=True, slots=True)
class Cap:
    """The cap in force: its value and where it comes from."""

    cap_w: float
    source: str
    demand_response: bool


@dataclass(frozen=True, slots=True)
class _Shed:
    action: str
    power_limit_w: float | None
    saved_w: float


#: Command states whose machine is counted at its observed draw and never shed by the cap.
UNCONFIRMED = frozenset({"pending", "failed", "lying"})


def counted_w(r: MinerReading, d: Desired | None) -> float:
    """What ``r`` counts toward the cap under decision ``d``: the estimate under ``d``, but
    never less than its observed draw while its last command is unconfirmed (a shed counts
    once it is seen), and its observed draw alone when it is flagged (it is not commanded)."""
    if r.command_state == "lying":
        return layer.present_w(r)
    if r.command_state in UNCONFIRMED:
        return max(layer.present_w(r), layer.power_under_w(r, d))
    return layer.power_under_w(r, d)


def _wants_power(d: Desired | None) -> bool:
    """Whether decision ``d`` needs its machine powered (None: held as it is: an outlet that
    is off stays off)."""
    return d is not None and d.action != "sleep"


def measured_gap_w(fleet: FleetSnapshot) -> float:
    """Measured site power (meter, else PDU totals: ``fleet.site_power_w``) minus the sum of
    the machines' present draws; 0 without a measurement (then estimates alone are judged)."""
    if fleet.site_power_w is None:
        return 0.0
    return fleet.site_power_w - sum(layer.present_w(r) for r in fleet.miners)


class PowerCapPolicy:
    """Keep estimated site power under the cap in force."""

    name: ClassVar[str] = "power_cap"
    Config: ClassVar[type[PowerCapConfig]] = PowerCapConfig

    def __init__(self, config: PowerCapConfig | None = None):
        self.config = config if config is not None else PowerCapConfig()

    # ---------------------------------------------------------------- public
    def decide(self, fleet: FleetSnapshot, market: MarketSnapshot | None,
               now: float) -> dict[str, Desired]:
        """On its own: everything runs, under the cap (a market's power_cap_w is a DR cap)."""
        dr = Directives(power_cap_w=market.power_cap_w if market else None)
        return self.apply(layer.everything_runs(fleet), fleet, market, dr, now)

    def cap_in_force(self, now: float, directives: Directives) -> Cap | None:
        """The lowest cap in force at ``now``; a demand-response event wins a tie."""
        c = self.config
        caps: list[Cap] = []
        if c.cap_w is not None:
            caps.append(Cap(c.cap_w, "cap_w", False))
        for i, w in enumerate(c.schedule):
            local = dt.datetime.fromtimestamp(now, zoneinfo.ZoneInfo(w.timezone or c.timezone))
            if window_matches(w, local):
                label = w.name or f"schedule[{i}]"
                caps.append(Cap(w.cap_w, f"scheduled cap {label!r} {w.start}-{w.end}", False))
        until = directives.power_cap_until
        if directives.power_cap_w is not None and (until is None or now < until):
            event = directives.power_cap_event_id or "no id"
            caps.append(Cap(directives.power_cap_w, f"demand-response event {event}", True))
        return min(caps, key=lambda k: (k.cap_w, not k.demand_response), default=None)

    def apply(self, decisions: Mapping[str, Desired], fleet: FleetSnapshot,
              market: MarketSnapshot | None, directives: Directives, now: float,
              pinned: Collection[str] = ()) -> dict[str, Desired]:
        """``decisions`` with sheds added until the estimated site power fits the cap.

        ``pinned`` keys (decided by a higher layer) count toward site power but are never shed.
        """
        out = dict(decisions)
        cap = self.cap_in_force(now, directives)
        if cap is None:
            return out
        budget = cap.cap_w - self.config.headroom_w
        groups: dict[str, list[MinerReading]] = {}
        for r in fleet.miners:
            if r.outlet is not None:
                groups.setdefault(r.outlet, []).append(r)

        def counted(r: MinerReading) -> float:
            """counted_w, with the hard power-down tier: behind an outlet curtaild switched
            off, a machine draws nothing only while the outlet stays off, and it comes back on
            when any machine on it is wanted running (controller/outlets.py)."""
            d = out.get(r.key)
            if (r.outlet is not None and layer.outlet_off(r) and (d is None or d.action == "sleep")
                    and any(_wants_power(out.get(m.key)) for m in groups[r.outlet])):
                return layer.IDLE_W if r.supports_sleep else layer.full_power_w(r)
            return counted_w(r, d)

        # judged on the meter when there is one (issue 18): what the machines' own figures
        # miss (facility overhead, estimate error) is added to every estimate below
        total = sum(counted(r) for r in fleet.miners) + measured_gap_w(fleet)
        excess = total - budget
        if excess <= 0:
            return out
        priority = "emergency"  # see the module docstring: a cap is not a price decision
        for r in fleet.miners:
            # A shed already sent stays wanted while the site is over its cap (re-sent at most
            # once per grace, flagged if it never takes), but saves nothing until it is seen.
            if (r.command_state in UNCONFIRMED and r.commanded_action in ("sleep", "limit")
                    and r.key not in pinned):
                what = (f"limit to {r.commanded_power_limit_w:.0f} W"
                        if r.commanded_action == "limit" and r.commanded_power_limit_w
                        else "sleep")
                out[r.key] = layer.curtailing(
                    f"power cap {cap.cap_w:.0f} W ({cap.source}): {what} already sent, "
                    f"{r.command_state} (not yet seen in effect): counted at its observed "
                    f"{layer.present_w(r):.0f} W", out.get(r.key),
                    action="limit" if what != "sleep" else "sleep",
                    power_limit_w=r.commanded_power_limit_w if what != "sleep" else None,
                    priority=priority)
        scored = [(self._order(r, out.get(r.key), market), r) for r in fleet.miners
                  if r.key not in pinned and r.state != "unreachable"
                  and r.command_state not in UNCONFIRMED]
        limit_w = fleet.max_phase_imbalance_w
        loads = phases.phase_loads(fleet.miners, counted)
        shed_keys: set[str] = set()

        def attempt(order: tuple[float, float], r: MinerReading, balance: bool) -> bool:
            """Shed ``r`` (or its outlet) if that helps; False when held for phase balance."""
            nonlocal excess
            if r.key in shed_keys:
                return True
            d = out.get(r.key)
            members = [r]
            shed = None if layer.outlet_off(r) and r.outlet is not None else \
                self._shed(r, layer.power_under_w(r, d), excess)
            if shed is None and r.outlet is not None \
                    and (not r.supports_sleep or layer.outlet_off(r)):
                # its outlet is its curtailment (hard power-down tier): switched off, or kept
                # off, with every machine on it, each then drawing nothing
                members = groups[r.outlet]
                if any(m.key in pinned or m.command_state in UNCONFIRMED for m in members):
                    return True
                saved = sum(counted(m) for m in members)
                if saved <= 0:
                    return True
                shed = _Shed("outlet", None, saved)
            if shed is None:
                return True
            held = phases.balance_hold(loads, r.phase, -shed.saved_w, limit_w) \
                if balance else None
            if held is not None:
                return False
            if shed.action == "outlet":
                others = ", ".join(m.key for m in members if m is not r)
                what = (f"outlet {r.outlet} {'kept ' if layer.outlet_off(r) else ''}off "
                        f"({r.key} {'cannot sleep' if not r.supports_sleep else 'behind it'}"
                        + (f"; with {others})" if others else ")"))
            elif shed.action == "limit":
                what = f"limit to {shed.power_limit_w:.0f} W"
            else:
                what = "sleep"
            unbalanced = ""
            if not balance and limit_w is not None:
                unbalanced = ("; beyond max_phase_imbalance_w: no shed within the phase "
                              "balance is left, and the cap is the harder limit")
            reason = (f"power cap {cap.cap_w:.0f} W ({cap.source}): site ~{total:.0f} W under "
                      f"the base decision ({fleet.site_power_source}), budget {budget:.0f} W; "
                      f"{what} sheds "
                      f"{shed.saved_w:.0f} W ({self._order_text(order, market)}){unbalanced}")
            for m in members:
                action = "sleep" if shed.action == "outlet" else shed.action
                out[m.key] = layer.curtailing(reason, out.get(m.key), action=action,
                                              power_limit_w=shed.power_limit_w,
                                              priority=priority)
                shed_keys.add(m.key)
            phases.admit(loads, r.phase, -shed.saved_w)
            excess -= shed.saved_w
            return True

        # outlets already off first: keeping one off switches nothing and spends none of its
        # cycles, where trading it for another (a restore here, a cut there) would spend two
        # and flap the site. Then worst first; a shed that would unbalance the phases is
        # passed over for the next worst, retried once the others are shed, and taken anyway
        # if the cap still needs it.
        waiting = sorted(scored, key=lambda x: (not (x[1].outlet is not None
                                                     and layer.outlet_off(x[1])), x[0]))
        for balance in (True, True, False):
            left = []
            for order, r in waiting:
                if excess <= 0:
                    break
                if not attempt(order, r, balance):
                    left.append((order, r))
            waiting = left
            if excess <= 0 or not waiting:
                break
        return out

    # --------------------------------------------------------------- ordering
    def _hashrate_at(self, r: MinerReading, power_w: float) -> float:
        """Hashrate at a draw: measured when that is the present unlimited point, else the
        curve from the full-power point."""
        if (r.state == "mining" and not layer.is_limited(r) and r.hashrate_ths > 0
                and abs(power_w - r.power_w) < 1.0):
            return r.hashrate_ths
        full_w, full_h = layer.full_power_w(r), layer.full_hashrate_ths(r)
        if full_w <= 0 or full_h <= 0:
            return 0.0
        idle = layer.IDLE_W
        if power_w >= full_w:
            return full_h * power_w / full_w
        if power_w <= idle:
            return 0.0
        return economics.hashrate_at_power_ths(
            power_w=power_w, ref_power_w=full_w, ref_hashrate_ths=full_h, idle_power_w=idle,
            exponent=self.config.efficiency_exponent)

    def _order(self, r: MinerReading, d: Desired | None,
               market: MarketSnapshot | None) -> tuple[float, float]:
        """Sort key, worst first: margin per watt (USD/day/W), or minus J/TH with no market."""
        p = layer.power_under_w(r, d)
        h = self._hashrate_at(r, p)
        if p <= 0:
            return (math.inf, 0.0)
        if market is None:
            return (-(p / h) if h > 0 else -math.inf, 0.0)
        m = economics.margin_usd_per_day(
            hashrate_ths=h, power_w=p, hashprice_usd_per_th_day=market.hashprice_usd_per_th_day,
            tariff_usd_per_kwh=market.tariff_usd_per_kwh, pool_fee=market.pool_fee)
        return (m / p, -(p / h) if h > 0 else -math.inf)

    @staticmethod
    def _order_text(order: tuple[float, float], market: MarketSnapshot | None) -> str:
        if market is None:
            jth = -order[0]
            return ("no market inputs: worst J/TH first, "
                    + ("unknown J/TH" if math.isinf(jth) else f"{jth:.1f} J/TH"))
        return f"worst margin per watt first: {order[0] * 1000:+.3f} USD/day per kW"

    # ------------------------------------------------------------------- shed
    def _shed(self, r: MinerReading, power_w: float, excess_w: float) -> _Shed | None:
        """Limit (as far as needed) when that loses less hashrate per watt than sleeping."""
        idle = layer.idle_w(r)
        if power_w <= idle + 1.0:
            return None  # nothing to shed
        limit = self._limit_option(r, power_w, excess_w)
        if limit is not None and r.supports_sleep:
            h_now = self._hashrate_at(r, power_w)
            assert limit.power_limit_w is not None
            lost_limit = (h_now - self._hashrate_at(r, limit.power_limit_w)) / limit.saved_w
            lost_sleep = h_now / (power_w - idle)
            if lost_limit > lost_sleep + 1e-12:
                limit = None  # sleeping keeps more revenue per watt here
        if limit is not None:
            return limit
        if r.supports_sleep:
            return _Shed("sleep", None, power_w - idle)
        return None

    def _limit_option(self, r: MinerReading, power_w: float, excess_w: float) -> _Shed | None:
        if not (self.config.use_power_limits and r.supports_power_limit
                and r.min_power_limit_w is not None):
            return None
        floor = float(math.ceil(r.min_power_limit_w))
        tol = max(25.0, 0.02 * power_w)
        if power_w - floor <= tol:
            return None  # already at (or near) its lowest target
        # only as far as needed, but a step the guards see as a change (beyond tolerance)
        target = max(floor, min(float(math.ceil(power_w - excess_w)),
                                float(math.floor(power_w - tol - 1.0))))
        return _Shed("limit", target, power_w - target)
