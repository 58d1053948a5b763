"""What the layer policies (power_cap, schedule, thermal) share.

A *layer* modifies a decision someone else made: ``apply(decisions, fleet, market, directives,
now)`` takes the desired state per miner key and returns a new dict (never mutating its input).
Each layer also works on its own as ``[policy] name = "<layer>"``: its ``decide`` applies it to
the "everything runs" base below, so a site that only wants a power cap or thermal protection
needs no economics at all.

The helpers here estimate what a machine would draw under a decision -- the power cap needs a
site total *under the base decision*, not the present draw, so that a shed machine does not
make the cap look met and get woken on the next tick (level-triggered, no flapping).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Protocol

from curtaild.core.snapshot import Desired, Directives, FleetSnapshot, MarketSnapshot, MinerReading

#: Draw of a sleeping machine when its reading does not say (control board and fans), W.
IDLE_W = 40.0


class Layer(Protocol):
    """A policy that can also modify another policy's decision."""

    def apply(self, decisions: Mapping[str, Desired], fleet: FleetSnapshot,
              market: MarketSnapshot | None, directives: Directives,
              now: float) -> dict[str, Desired]: ...


def everything_runs(fleet: FleetSnapshot) -> dict[str, Desired]:
    """The base of a layer used on its own: every reachable machine runs at full power."""
    return {r.key: Desired(action="run", reason="run (no base policy: everything runs)")
            for r in fleet.miners if r.state != "unreachable"}


def idle_w(r: MinerReading) -> float:
    """A sleeping machine's draw: its own reading when asleep and reported, else IDLE_W.

    Power measured at its PDU outlet counts as measured even at 0 W (its outlet is off: it
    draws nothing; IDLE_W would add phantom watts to a cap judged on the meter). A machine
    that cannot sleep and is shed at its outlet (``r.outlet``) draws nothing either."""
    if r.state == "sleeping" and (r.power_w > 0 or r.power_source == "pdu"):
        return max(0.0, r.power_w)
    if not r.supports_sleep and r.outlet is not None:
        return 0.0
    return IDLE_W


def outlet_off(r: MinerReading) -> bool:
    """Read as behind an outlet switched off: asleep at 0 W measured at its PDU outlet (how
    controller/site.py presents a machine whose outlet curtaild owns)."""
    return r.state == "sleeping" and r.power_source == "pdu" and r.power_w <= 0


def full_power_w(r: MinerReading) -> float:
    """Full-power draw: nameplate, else the firmware's top target, else what it draws now."""
    return r.nameplate_power_w or r.max_power_limit_w or r.power_w


def full_hashrate_ths(r: MinerReading) -> float:
    """Full-power hashrate: nameplate when known, else measured (0 when neither)."""
    if r.nameplate_hashrate_ths:
        return r.nameplate_hashrate_ths
    return r.hashrate_ths


def is_limited(r: MinerReading) -> bool:
    """Mining under a power limit meaningfully below full power (set by anyone)."""
    plate = full_power_w(r)
    if r.state != "mining" or r.power_limit_w is None or not plate:
        return False
    return r.power_limit_w < plate - max(25.0, 0.02 * plate)


def present_w(r: MinerReading) -> float:
    """What the machine draws now, as observed (a machine held as it is)."""
    if r.state == "unreachable":
        return r.power_w  # unknown: 0 unless the reading kept a figure; see headroom_w
    if r.state == "sleeping":
        return idle_w(r)
    if r.power_w > 0:
        return r.power_w
    if r.power_limit_w is not None:
        return r.power_limit_w
    return full_power_w(r)


def power_under_w(r: MinerReading, d: Desired | None) -> float:
    """Estimated draw of ``r`` once decision ``d`` is carried out (None: held as it is)."""
    if d is None or r.state == "unreachable":
        return present_w(r)
    if d.action == "sleep":
        if not r.supports_sleep and r.outlet is None and r.state == "mining":
            return present_w(r)  # no sleep and no outlet to switch: it keeps drawing
        return idle_w(r)
    if d.action == "limit" and d.power_limit_w is not None:
        return d.power_limit_w
    if r.state == "mining" and not is_limited(r) and r.power_w > 0:
        return r.power_w
    return full_power_w(r)


def curtailing(reason: str, base: Desired | None, *, action: str,
               power_limit_w: float | None = None, priority: str = "normal") -> Desired:
    """A layer's curtailment of a machine, keeping the base's reason readable after it.

    ``run_margin_usd_per_day`` is left None on purpose: the guards' hysteresis band is about a
    margin near zero and must not veto a curtailment made for a reason other than margin.
    """
    tail = f" [base: {base.reason}]" if base is not None and base.reason else ""
    return Desired(action=action, reason=reason + tail,  # type: ignore[arg-type]
                   power_limit_w=power_limit_w, priority=priority)  # type: ignore[arg-type]


def overriding(new: Desired, old: Desired | None) -> Desired:
    """``new`` with the decision it replaces named after its own reason (for `plan`)."""
    if old is None or not old.reason:
        return new
    return replace(new, reason=f"{new.reason} [overrides: {old.reason}]")
