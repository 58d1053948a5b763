"""Outbound MQTT payloads stay bounded on any fleet size: a broker closes the connection on a
packet over its max_packet_size, and a requeued oversized message would do it again after
every reconnect (found by bench/dr_latency.py at 1,000 miners)."""

from __future__ import annotations

from curtaild.controller.directives import DirectiveStore, Limits
from curtaild.controller.loop import TickResult
from curtaild.controller.mqtt import MqttBridge
from curtaild.controller.mqtt_config import MqttConfig
from curtaild.controller.mqtt_payloads import decisions_payload, dumps, reason_category
from curtaild.core.snapshot import Command, Desired, FleetSnapshot, MinerReading


def _reading(i: int) -> MinerReading:
    return MinerReading(key=f"02:EC:00:00:{i // 256:02X}:{i % 256:02X}",
                        ip=f"127.0.{i // 250}.{i % 250 + 1}", make="AntMiner", model="S19",
                        firmware="antminer", state="mining",
                        hashrate_ths=95.0, power_w=3250.0, power_source="model_table",
                        power_limit_w=None, temp_c=70.0, observed_at=1000.0)


def _big_tick(n: int) -> TickResult:
    miners = tuple(_reading(i) for i in range(n))
    commands = tuple(Command(key=m.key, ip=m.ip, action="sleep", power_limit_w=None,
                             reason=f"power cap 1400000 W (demand-response event dr-{i}): site "
                                    f"~2800000 W under the base decision; sleep sheds {3210 + i} W",
                             delta_power_w=-3210.0 - i, priority="emergency")
                     for i, m in enumerate(miners[: n // 2]))
    held = {m.key: f"ramp limit: needs {3000 + i} W, {i} W available (12000 W/min)"
            for i, m in enumerate(miners[n // 2:])}
    desired = {m.key: Desired(action="sleep", reason="x") for m in miners}
    return TickResult(started_at=1000.0, duration_s=1.0, fleet=FleetSnapshot(miners, 1000.0),
                      market=None, desired=desired, effective={}, held=held, commands=commands,
                      outcomes={c.key: "ok: stop_mining" for c in commands}, dry_run=False)


def test_decisions_payload_is_bounded_and_counts_what_it_leaves_out() -> None:
    body = decisions_payload(_big_tick(10_000))
    assert len(body["commands"]) == 200
    assert body["commands_total"] == 5_000 and body["commands_truncated"] is True
    assert body["held_by_reason"] == {"ramp limit": 5_000}
    assert len(dumps(body)) < 128 * 1024
    small = decisions_payload(_big_tick(10))
    assert small["commands_total"] == 5 and small["commands_truncated"] is False


def test_reason_category_drops_per_machine_numbers() -> None:
    assert reason_category("min dwell: changed 12 s ago (< 600 s)") == "min dwell"
    assert reason_category("policy has no opinion") == "policy has no opinion"
    assert reason_category("") == "unspecified"


def test_bridge_drops_and_counts_a_message_over_max_publish_bytes() -> None:
    cfg = MqttConfig(host="127.0.0.1", topic_prefix="curtaild/site1", max_publish_bytes=1024,
                     publish_miners=False)
    bridge = MqttBridge(cfg, DirectiveStore(Limits()))
    bridge.publish_tick(_big_tick(50), curtailed=0, stale_after_s=None)
    queued = [t for t, _ in bridge._queue] + list(bridge._retained)
    assert "curtaild/site1/decisions" not in queued  # ~10 kB: dropped, never sent
    assert "curtaild/site1/state" in queued  # small: kept
    assert bridge.dropped == 1
