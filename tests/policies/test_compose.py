"""Composition: precedence, overrides and their expiry, pause, no market, config errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from curtaild.controller.config import ConfigError, parse_config
from curtaild.core.snapshot import Desired, Directives, Override
from curtaild.policies.base import PolicyError
from curtaild.policies.compose import PolicyStack, build_policy_stack, decide_stack
from curtaild.policies.margin import MarginPolicy
from tests.policies.snapshots import WED_1430_CHICAGO as NOW
from tests.policies.snapshots import fleet, market, miner

LIMITS = (1000.0, 3000.0)
HOT = miner("hot", temp_c=85.0, limits=LIMITS)
BAD = miner("bad", hashrate_ths=100.0)  # 30 J/TH: loses money at 0.05 / 0.08
GOOD = miner("good", hashrate_ths=200.0)
FOURCP = {"name": "4CP", "start": "15:00", "end": "18:00", "timezone": "America/Chicago"}


def stack(**layers: object) -> PolicyStack:
    return build_policy_stack({"name": "margin", **layers})


def decide(s, *miners, mk="fresh", **directives) -> dict[str, Desired]:
    return decide_stack(s, fleet(*miners), market(tariff=0.08) if mk == "fresh" else mk,
                        Directives(**directives), NOW)


def test_base_alone_is_margin() -> None:
    s = stack()
    assert s.name == "margin" and s.config.pool_fee == 0.02
    out = decide(s, BAD, GOOD)
    assert out["bad"].action == "sleep" and out["good"].action == "run"
    assert s.describe() == "margin + power_cap (demand response only)"


def test_precedence_thermal_over_override_over_cap_over_schedule_over_base() -> None:
    s = stack(thermal={"max_temp_c": 80}, schedule={"windows": [FOURCP], "lead_s": 3600},
              power_cap={"cap_w": 4000})
    o = (Override(key="hot", action="run", until=None, source="mqtt:1"),
         Override(key="good", action="run", until=NOW + 60, source="cli"))
    out = decide(s, HOT, GOOD, BAD, overrides=o)
    # margin sleeps bad; schedule the rest (lead time); the overrides pin good/hot running;
    # thermal derates hot anyway; the cap (4000 W) counts the pinned ones, nothing to shed.
    assert out["bad"].action == "sleep" and out["bad"].reason.startswith("sleep: ")
    assert "margin -0.86 USD/day at full power" in out["bad"].reason
    assert out["good"].action == "run" and out["good"].priority == "forced"
    assert "operator override run (cli" in out["good"].reason
    assert out["hot"].action == "limit" and out["hot"].priority == "emergency"
    assert "[overrides: operator override run (mqtt:1" in out["hot"].reason
    # Without overrides the schedule sleeps good too; thermal keeps hot's derate only because
    # the schedule's sleep is cooler: sleep stands.
    out = decide(s, HOT, GOOD, BAD)
    assert out["good"].action == "sleep" and out["good"].reason.startswith("schedule:")
    assert out["hot"].action == "sleep"


def test_cap_over_base() -> None:
    s = stack(power_cap={"cap_w": 3500})
    out = decide(s, GOOD, miner("good2", hashrate_ths=190.0), mk=market(tariff=0.03))
    assert out["good"].action == "run" and out["good2"].action == "sleep"
    assert out["good2"].reason.startswith("power cap 3500 W (cap_w)")
    assert "[base: run:" in out["good2"].reason


def test_expired_override_is_ignored_and_keys_match_mac_or_ip() -> None:
    s = stack()
    old = (Override(key="good", action="sleep", until=NOW - 1, source="mqtt:1"),)
    assert decide(s, GOOD, overrides=old)["good"].action == "run"
    by_ip = (Override(key=GOOD.ip, action="sleep", until=NOW + 1, source="cli"),)
    assert decide(s, GOOD, overrides=by_ip)["good"].priority == "forced"
    nobody = (Override(key="127.9.9.9", action="sleep", until=None, source="cli"),)
    assert decide(s, GOOD, overrides=nobody)["good"].priority == "normal"


@pytest.mark.parametrize("why", ["paused", "no market"])
def test_pause_and_no_market_leave_only_safety_and_operator(why: str) -> None:
    s = stack(thermal={}, schedule={"windows": [FOURCP], "lead_s": 3600})
    kw = {"automation_paused": True} if why == "paused" else {}
    mk = "fresh" if why == "paused" else None
    o = (Override(key="good", action="sleep", until=None, source="cli"),)
    out = decide(s, HOT, GOOD, BAD, mk=mk, overrides=o, **kw)
    assert "bad" not in out  # no base, no schedule: held as it is
    assert out["good"].action == "sleep" and out["good"].priority == "forced"
    assert out["hot"].action == "limit" and out["hot"].priority == "emergency"
    # A demand-response event still sheds (worst first: bad), with emergency priority.
    out = decide(s, HOT, GOOD, BAD, mk=mk, power_cap_w=5000.0, power_cap_event_id="dr7", **kw)
    assert out["bad"].action == "sleep" and out["bad"].priority == "emergency"
    assert "demand-response event dr7" in out["bad"].reason


def test_dr_event_works_with_any_config_and_plain_policies() -> None:
    for s in (stack(), MarginPolicy(), build_policy_stack({"name": "thermal"})):
        out = decide(s, GOOD, miner("g2", hashrate_ths=190.0), mk=market(tariff=0.03),
                     power_cap_w=3500.0, power_cap_event_id="e1")
        assert out["g2"].action == "sleep" and out["g2"].priority == "emergency", s


def test_layers_on_their_own() -> None:
    s = build_policy_stack({"name": "thermal", "max_temp_c": 80})
    assert s.name == "thermal" and s.config.pool_fee == 0.02
    out = decide(s, HOT, BAD)
    assert out["bad"].action == "run" and out["hot"].action == "limit"
    alone = decide(s, HOT, BAD, mk=None)
    assert set(alone) == {"hot"} and alone["hot"].power_limit_w == out["hot"].power_limit_w
    s = build_policy_stack({"name": "power_cap", "cap_w": 3500})
    assert s.describe() == "power_cap"
    assert decide(s, GOOD, BAD)["bad"].action == "sleep"
    s = build_policy_stack({"name": "schedule", "windows": [FOURCP], "lead_s": 3600})
    assert decide(s, GOOD)["good"].action == "sleep"


def problems(table: dict) -> list[str]:
    with pytest.raises(PolicyError) as info:
        build_policy_stack(table)
    return info.value.problems


def test_errors_name_the_layer_key() -> None:
    got = problems({"name": "margin", "pool_fe": 1, "thermal": {"max_temp_c": "hot",
                                                               "max_temp": 80},
                    "schedule": {"lead_s": -1}, "power_cap": 5})
    keys = sorted(line.split(":", 1)[0] for line in got)
    assert keys == ["policy.pool_fe", "policy.power_cap", "policy.schedule.lead_s",
                    "policy.thermal.max_temp", "policy.thermal.max_temp_c"], got
    assert any("unknown key (valid keys:" in line for line in got)
    assert problems({"name": "margin", "thermal": {"pool_fee": 0.1}}) == [
        "policy.thermal.pool_fee: set pool_fee once, in [policy]"]
    assert problems({"name": "thermal", "thermal": {}})[0].startswith("policy.thermal: ")
    assert problems({"thermal": {}}) == [
        "policy.name: required, the policy to run (e.g. 'margin')"]
    got = problems({"name": "margin", "thermal": {"max_temp_c": 95, "sleep_temp_c": 90}})
    assert got == ["policy.thermal: sleep_temp_c (90.0) must be above max_temp_c (95.0)"]


def test_check_reports_layer_errors() -> None:
    data = {"fleet": {"ranges": ["127.52.0.1-127.52.0.2"]},
            "hashprice": {"source": "fixed", "usd_per_th_day": 0.05},
            "tariff": {"kind": "flat", "usd_per_kwh": 0.05},
            "policy": {"name": "margin", "thermal": {"max_temp_c": "hot"}}}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert [p.split(":", 1)[0] for p in info.value.problems] == ["policy.thermal.max_temp_c"]
    data["policy"]["thermal"] = {"max_temp_c": 75}
    assert parse_config(data).policy["thermal"] == {"max_temp_c": 75}


@dataclass
class _Fixed:
    """A plug-in style base policy with a decide() only."""

    name = "fixed"
    config = None

    def decide(self, fleet, market, now):
        return {m.key: Desired(action="run", reason="fixed") for m in fleet.miners}


def test_plain_policy_gets_overrides_too() -> None:
    o = (Override(key="good", action="sleep", until=None, source="cli"),)
    assert decide(_Fixed(), GOOD, overrides=o)["good"].priority == "forced"
