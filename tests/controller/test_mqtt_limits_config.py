"""``[mqtt]`` load-shedding and sanity settings (issue 15): each is bounded, the pairs that
depend on each other are checked together, and the directive store gets every one."""

from __future__ import annotations

import pytest

from curtaild.controller.config import ConfigError, parse_config
from curtaild.controller.directives import Limits

BASE = {"fleet": {"hosts": ["127.154.0.9"]}, "hashprice": {"source": "fixed",
        "usd_per_th_day": 0.05}, "tariff": {"kind": "flat", "usd_per_kwh": 0.05},
        "policy": {"name": "margin"}}
MQTT = {"host": "127.154.0.1", "topic_prefix": "curtaild/site1"}


def problems(**mqtt: object) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config({**BASE, "mqtt": {**MQTT, **mqtt}})
    return exc.value.problems


def test_defaults_reach_the_directive_store() -> None:
    cfg = parse_config({**BASE, "mqtt": MQTT}).mqtt
    assert (cfg.inbound_queue, cfg.busy_backlog) == (10000, 200)
    lim = Limits.from_config(cfg)
    assert (lim.min_target_power_w, lim.max_active_events, lim.max_overrides,
            lim.max_remembered_ids) == (1.0, 100, 10000, 5000)
    tuned = parse_config({**BASE, "mqtt": {**MQTT, "min_target_power_w": 250000,
                                           "max_active_events": 5}}).mqtt
    assert Limits.from_config(tuned).min_target_power_w == 250000
    assert Limits.from_config(tuned).max_active_events == 5


@pytest.mark.parametrize(("mqtt", "expect"), [
    ({"min_target_power_w": 0}, "mqtt.min_target_power_w: "),
    ({"min_target_power_w": 2e9}, "min_target_power_w must be <= max_target_power_w"),
    ({"busy_backlog": 10000}, "busy_backlog must be < inbound_queue"),
    ({"inbound_queue": 500, "busy_backlog": 600}, "busy_backlog must be < inbound_queue"),
    ({"inbound_queue": 200000}, "is more than the 100,000 allowed"),
    ({"max_active_events": 0}, "mqtt.max_active_events: "),
    ({"max_active_events": 20000}, "is more than the 10,000 allowed"),
    ({"max_overrides": 2_000_000}, "is more than the 1,000,000 allowed"),
    ({"max_remembered_ids": 10}, "mqtt.max_remembered_ids: "),
    ({"max_remembered_ids": 2_000_000}, "is more than the 1,000,000 allowed"),
])
def test_bad_values_are_refused_naming_the_key(mqtt: dict, expect: str) -> None:
    got = problems(**mqtt)
    assert any(expect in p for p in got), got
