"""Operator overrides as decisions: a forced state per machine, until it expires.

An :class:`~controller.snapshot.Override` (from MQTT or the CLI) names a machine by its key
(MAC, else serial, else IP; any of them matches, case-insensitively) and a state, ``run`` or
``sleep``, until a unix time (``None``: until cleared). Expired overrides (``until < now``)
are ignored, so a forgotten override cannot pin a machine for ever. The last override for a
machine wins. Each becomes a Desired with priority "forced": the guards skip hysteresis and
minimum dwell for it and may wake a machine an operator slept (an override *is* the operator),
but it is still ramped and never touches an excluded, unreachable or flagged machine.
"""

from __future__ import annotations

import datetime as dt

from curtaild.core.snapshot import Desired, Directives, FleetSnapshot, Override


def in_force(o: Override, now: float) -> bool:
    return o.until is None or o.until >= now


def _until(o: Override) -> str:
    if o.until is None:
        return "until cleared"
    at = dt.datetime.fromtimestamp(o.until, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"until {at}"


def override_decisions(fleet: FleetSnapshot, directives: Directives,
                       now: float) -> dict[str, Desired]:
    """Desired per miner key for every override in force that names a machine in the fleet."""
    ids: dict[str, str] = {}
    for r in fleet.miners:
        for i in (r.key, r.mac, r.serial, r.ip):
            if i:
                ids.setdefault(i.casefold(), r.key)
    out: dict[str, Desired] = {}
    for o in directives.overrides:
        key = ids.get(o.key.strip().casefold())
        if key is None or not in_force(o, now):
            continue
        note = f": {o.reason}" if o.reason else ""
        out[key] = Desired(action=o.action, priority="forced",
                           reason=f"operator override {o.action} ({o.source}, {_until(o)}){note}")
    return out
