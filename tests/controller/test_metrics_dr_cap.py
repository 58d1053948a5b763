"""curtaild_site_power_cap_watts carries a demand-response event received over MQTT (the
directives of the tick), so the over-cap alert (judged on the meter: its promtool tests are in
deploy/prometheus/rules/curtaild.rules.test.yml) fires during an event too (issue 18)."""

from __future__ import annotations

from curtaild.core.snapshot import Directives
from tests.controller.test_metrics import exposition, has, market, state, tick, value


def test_an_mqtt_demand_response_event_is_the_cap_in_force() -> None:
    assert not has(exposition(state(tick(directives=Directives()))),
                   "curtaild_site_power_cap_watts")
    event = Directives(power_cap_w=170.0, power_cap_event_id="dr-1")
    text = exposition(state(tick(directives=event), power_cap_w=8000.0))
    assert value(text, "curtaild_site_power_cap_watts") == 170.0
    # the lowest cap in force wins
    text = exposition(state(tick(mk=market(power_cap_w=150.0), directives=event)))
    assert value(text, "curtaild_site_power_cap_watts") == 150.0


def test_the_machines_draw_per_phase_of_the_site_map() -> None:
    from dataclasses import replace

    from tests.support.site_view import full_site_view

    t = tick()
    a, b, c, gone = t.fleet.miners
    fleet = replace(t.fleet, miners=(replace(a, phase="L1"), replace(b, phase="L2"),
                                     replace(c, phase="L1"), replace(gone, phase="L3")))
    text = exposition(state(replace(t, fleet=fleet, site=full_site_view())))
    assert value(text, "curtaild_site_phase_power_watts", phase="L1") == \
        a.power_w + c.power_w
    assert value(text, "curtaild_site_phase_power_watts", phase="L2") == b.power_w
    assert b'curtaild_site_phase_power_watts{phase="L3"}' not in text  # unreachable: unknown
