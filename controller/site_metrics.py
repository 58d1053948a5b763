"""Prometheus families for the site's power equipment (PDUs, meter, placements, outlets).

From the last tick's :class:`controller.site.SiteView` only (a scrape never reads a PDU).
Units in names; every PDU-level series carries ``pdu`` (its name, else its address).
"""

from __future__ import annotations

from collections.abc import Iterator

from curtaild.controller.metric_family import Family


def site_families(t) -> Iterator[Family]:
    v = getattr(t, "site", None)
    if v is None:
        return
    if v.site_power_w is not None:
        f = Family("curtaild_site_measured_power_watts", "gauge", "Site power measured: the "
                   "meter (source meter), else the sum of the PDUs (source pdu), watts; what "
                   "the power cap judges compliance on.", ("source",))
        f.add((v.site_power_source,), v.site_power_w)
        yield f
        yield Family("curtaild_site_power_gap_watts", "gauge", "Measured site power minus the "
                     "sum of the machines' own figures (firmware, tables, nameplate), watts: "
                     "facility load and estimate error.", (),
                     [((), v.site_power_w - v.estimated_w)])
    src = Family("curtaild_site_power_source", "gauge", "Where the site power the policies "
                 "judge comes from: one series, value 1, label source = meter | pdu | "
                 "estimate.", ("source",))
    src.add((v.site_power_source,), 1.0)
    yield src
    if v.meter is not None or v.meter_fresh:
        yield Family("curtaild_meter_up", "gauge", "1 when the site meter's last read "
                     "succeeded and is fresh.", (), [((), 1.0 if v.meter_fresh else 0.0)])
        if v.meter is not None and v.meter.power_w is not None and v.meter_fresh:
            ph = Family("curtaild_meter_phase_power_watts", "gauge", "Active power per phase "
                        "read from the site meter, watts.", ("phase",))
            for phase, w in sorted(v.meter.phases_w.items()):
                ph.add((phase,), w)
            yield ph
    up = Family("curtaild_pdu_up", "gauge", "1 when the PDU's last read succeeded.", ("pdu",))
    errors = Family("curtaild_pdu_read_errors", "counter", "Failed PDU (or meter: pdu = "
                    "meter) reads since start.", ("pdu",))
    on = Family("curtaild_pdu_outlet_on", "gauge", "1 when the outlet is on, 0 when off (as "
                "read this tick; absent when unknown).", ("pdu", "outlet"))
    power = Family("curtaild_pdu_outlet_power_watts", "gauge", "Power measured at the outlet, "
                   "watts (metered outlets).", ("pdu", "outlet"))
    owned = Family("curtaild_pdu_outlet_owned", "gauge", "1 for an outlet curtaild switched off "
                   "and owns (journaled; it will switch it back on).", ("pdu", "outlet"))
    mismatch = Family("curtaild_pdu_outlet_intent_mismatch", "gauge", "1 when the outlet's "
                      "state read this tick disagrees with what curtaild intends for it.",
                      ("pdu", "outlet"))
    for key, r in sorted(v.pdus.items()):
        up.add((key,), 1.0 if key in v.fresh else 0.0)
        if key not in v.fresh:
            continue
        for n, o in sorted(r.outlets.items()):
            if o.on is not None:
                on.add((key, str(n)), 1.0 if o.on else 0.0)
            if o.power_w is not None:
                power.add((key, str(n)), o.power_w)
    for key, n in sorted(v.owned):
        owned.add((key, str(n)), 1.0)
    intents = v.plan.intent if v.plan is not None else {}
    for (key, n), seen in sorted(v.observed().items()):
        # curtaild's intent: its plan's, else "off" for an outlet it owns, else as it is
        want = intents.get((key, n)) or ("off" if (key, n) in v.owned else None)
        wrong = seen is not None and want is not None and seen != (want == "on") \
            and not v.outcomes.get((key, n), "").startswith("ok")  # switched this tick
        mismatch.add((key, str(n)), 1.0 if wrong else 0.0)
    names = set(v.pdus) | ({"meter"} if v.meter is not None else set())
    for name in sorted(names | set(v.errors)):
        errors.add((name,), float(v.errors.get(name, 0)))
    yield from (up, errors, on, power, owned, mismatch)
    yield Family("curtaild_pdu_switch_failures", "counter", "Outlet switches a PDU refused or "
                 "did not answer, since start.", (), [((), float(v.switch_failures))])
    loads: dict[str, float] = {}
    for r in t.fleet.miners:  # what phase balance is judged on (core/phases.py)
        if r.phase and r.state != "unreachable":
            loads[r.phase] = loads.get(r.phase, 0.0) + max(0.0, r.power_w)
    if loads:
        ph = Family("curtaild_site_phase_power_watts", "gauge", "The machines' draw per "
                    "electrical phase of the site map, watts: what sheds and restores balance "
                    "([inventory] max_phase_imbalance_w).", ("phase",))
        for phase, w in sorted(loads.items()):
            ph.add((phase,), w)
        yield ph
    info = Family("curtaild_miner_site", "info", "Where each miner is (site map): "
                  "container, rack, pdu, outlet, phase; join on miner.",
                  ("miner", "container", "rack", "pdu", "outlet", "phase"))
    for key, labels in sorted(v.placements.items()):
        info.add((key, labels.get("container", ""), labels.get("rack", ""),
                  labels.get("pdu", ""), labels.get("outlet", ""), labels.get("phase", "")),
                 1.0)
    yield info
