"""Site-map labels and measured power in `status`, `plan` and MQTT payloads (issue 18)."""

from __future__ import annotations

from curtaild.controller.loop import TickResult
from curtaild.controller.mqtt_payloads import decisions_payload, miner_payload
from curtaild.controller.report import plan_table, tick_summary
from curtaild.core.snapshot import FleetSnapshot, MinerReading
from tests.support.site_view import full_site_view


def _result(site) -> TickResult:
    r = MinerReading(key="k1", ip="127.184.0.1", make="BitAxe", model="Gamma",
                     firmware="bitaxe", state="sleeping", hashrate_ths=0.0, power_w=0.0,
                     power_source="pdu", power_limit_w=None, temp_c=None, supports_sleep=False)
    return TickResult(started_at=1.0, duration_s=0.1, fleet=FleetSnapshot((r,), 1.0),
                      market=None, desired={}, effective={}, held={"k1": "outlet off"},
                      commands=(), outcomes={}, dry_run=False, site=site)


def test_labels_and_site_power_everywhere() -> None:
    result = _result(full_site_view())
    labels = {"container": "C1", "rack": "R1", "pdu": "pdu-a", "outlet": "1", "phase": "L1"}
    assert miner_payload(result.fleet.miners[0], result)["site"] == labels
    d = decisions_payload(result)
    assert (d["site_power_w"], d["site_power_source"]) == (4500.0, "meter")
    assert d["outlets"] == [{"pdu": "pdu-a", "outlet": 1, "on": False,
                             "reason": "cannot sleep", "outcome": "ok"}]
    status = tick_summary(result)
    assert status["miners"][0]["site"] == labels
    assert status["site"]["power_source"] == "meter"
    assert status["site"]["gap_w"] == 1200.0
    assert status["site"]["owned_outlets"] == [["pdu-a", 1]]
    assert [p["key"] for p in status["site"]["pdus"]] == ["pdu-a", "pdu-b"]
    text = plan_table(result)
    assert "site power 4.5 kW (meter)" in text and "PDU pdu-b: no answer" in text
    assert "would switch outlet 1 of pdu-a off: cannot sleep (k1)" in text


def test_no_site_no_site_keys() -> None:
    result = _result(None)
    assert "site" not in miner_payload(result.fleet.miners[0], result)
    assert "site_power_w" not in decisions_payload(result)
    assert "site" not in tick_summary(result)
    assert tick_summary(result)["miners"][0]["site"] is None


def test_rack_and_container_groups_in_exclusions_and_overrides() -> None:
    from curtaild.controller.inventory import Inventory, Placement
    from curtaild.controller.site import Site
    from curtaild.core.snapshot import Directives, Override

    site = Site.__new__(Site)  # only the inventory is used here
    site.inventory = Inventory([Placement("k1", container="C1", rack="R1"),
                                Placement("k2", container="C1", rack="R2")])

    def r(key: str) -> MinerReading:
        return MinerReading(key=key, ip=key, make="", model="", firmware="", state="mining",
                            hashrate_ths=1.0, power_w=1.0, power_source="firmware",
                            power_limit_w=None, temp_c=None)

    fleet = FleetSnapshot((r("k1"), r("k2"), r("k3")), 1.0)
    assert site.expand_groups(["rack:R1", "k3"], fleet) == ["k1", "k3"]
    d = Directives(overrides=(Override("container:C1", "sleep", None, "mqtt"),
                              Override("k2", "run", None, "mqtt")))
    out = {o.key: o.action for o in site.expand_overrides(d, fleet).overrides}
    assert out == {"k1": "sleep", "k2": "run"}  # the machine's own override wins
