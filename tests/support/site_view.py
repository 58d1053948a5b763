"""A SiteView with every site series populated (PDUs, meter, placements, an owned outlet and
a mismatch), for the metrics tests: every family the dashboard and alert rules use exists."""

from __future__ import annotations

from curtaild.controller.outlets import OutletAction, OutletPlan
from curtaild.controller.site import SiteView
from curtaild.drivers.meter import MeterReading
from curtaild.drivers.pdu import OutletReading, PduReading


def full_site_view(now: float = 1_700_000_000.0) -> SiteView:
    pdu = PduReading("pdu-a", "127.184.0.50", "apc", {
        1: OutletReading(1, False, 0.0, 0.0), 2: OutletReading(2, True, 3250.0, 14.1),
        3: OutletReading(3, True, 17.0, 0.1)}, taken_at=now)
    down = PduReading("pdu-b", "127.184.0.51", "raritan", taken_at=now, error="no answer")
    plan = OutletPlan(actions=[OutletAction("pdu-a", 1, False, "cannot sleep", ("k1",))],
                      intent={("pdu-a", 1): "off", ("pdu-a", 3): "off"})
    return SiteView(
        pdus={"pdu-a": pdu, "pdu-b": down}, fresh=frozenset({"pdu-a"}),
        meter=MeterReading(4500.0, {"L1": 2000.0, "L2": 1500.0, "L3": 1000.0}, now, model=213),
        meter_fresh=True, site_power_w=4500.0, site_power_source="meter", estimated_w=3300.0,
        plan=plan, outcomes={("pdu-a", 1): "ok"}, owned=frozenset({("pdu-a", 1)}),
        placements={"k1": {"container": "C1", "rack": "R1", "pdu": "pdu-a", "outlet": "1",
                           "phase": "L1"}},
        errors={"pdu-b": 3}, switch_failures=1)
