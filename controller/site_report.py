"""The site's part of ``status``, ``plan`` and MQTT: placements, PDUs, meter, outlet actions.

Kept apart from controller/report.py (which calls in here) so the shapes of the per-machine
rows stay as they were for sites without PDUs or an inventory.
"""

from __future__ import annotations

from typing import Any

from curtaild.controller.site import SiteView


def site_json(view: SiteView | None) -> dict[str, Any] | None:
    """``status.json``'s ``site``: measured power and its source, the gap between it and the
    machines' own figures, each PDU (error, outlets), owned outlets and this tick's actions."""
    if view is None:
        return None
    meter = view.meter
    plan = view.plan
    return {
        "power_w": round(view.site_power_w, 1) if view.site_power_w is not None else None,
        "power_source": view.site_power_source,
        "estimated_w": round(view.estimated_w, 1),
        "gap_w": (round(view.site_power_w - view.estimated_w, 1)
                  if view.site_power_w is not None else None),
        "meter": None if meter is None else {
            "power_w": meter.power_w, "phases_w": meter.phases_w, "error": meter.error,
            "fresh": view.meter_fresh, "model": meter.model},
        "pdus": [{"key": k, "address": r.address, "mib": r.mib, "error": r.error,
                  "fresh": k in view.fresh, "power_w": r.power_w,
                  "outlets": {str(n): {"on": o.on, "power_w": o.power_w}
                              for n, o in sorted(r.outlets.items())}}
                 for k, r in sorted(view.pdus.items())],
        "owned_outlets": sorted([list(k) for k in view.owned]),
        "outlet_actions": [] if plan is None else [
            {"pdu": a.pdu, "outlet": a.outlet, "on": a.on, "reason": a.reason,
             "miners": list(a.miners),
             "outcome": view.outcomes.get((a.pdu, a.outlet))} for a in plan.actions],
    }


def site_lines(view: SiteView | None) -> list[str]:
    """``plan``'s lines about the site (none without one)."""
    if view is None:
        return []
    out = []
    if view.site_power_w is not None:
        out.append(f"site power {view.site_power_w / 1000:.1f} kW ({view.site_power_source}); "
                   f"machines' own figures {view.estimated_w / 1000:.1f} kW")
    for k, r in sorted(view.pdus.items()):
        if r.error:
            out.append(f"PDU {k}: {r.error}")
    for a in view.plan.actions if view.plan is not None else []:
        out.append(f"would switch outlet {a.outlet} of {a.pdu} {'on' if a.on else 'off'}: "
                   f"{a.reason} ({', '.join(a.miners)})")
    return out
