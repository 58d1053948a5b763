"""The bridge's inbound batches and load shedding, without a broker (the real-broker flood is
tests/controller/test_mqtt_flood.py): answers leave only after their batch is saved, the loop
is woken once per batch, an overloaded bridge answers "busy" instead of applying, and answers
are sent a window at a time with failures put back in order."""

from __future__ import annotations

import asyncio
import json

import pytest

from curtaild.controller.directives import DirectiveStore, Limits
from curtaild.controller.mqtt import SEND_WINDOW, MqttBridge
from curtaild.controller.mqtt_config import MqttConfig

PREFIX = "curtaild/site1"


def cmd(**kw) -> bytes:
    return json.dumps(kw).encode()


def bridge(calls: list[str], **cfg) -> MqttBridge:
    config = MqttConfig(host="127.0.0.1", topic_prefix=PREFIX, **cfg)
    store = DirectiveStore(Limits.from_config(config))

    def persist() -> None:
        calls.append(f"persist {len(store.take_pending())}")

    def known() -> dict[str, str]:
        calls.append("known")
        return {"AA": "AA"}

    return MqttBridge(config, store, wake=lambda: calls.append("wake"), persist=persist,
                      known_miners=known)


def answers(b: MqttBridge) -> list[dict]:
    return [json.loads(body) for _t, body in b._responses]


def test_a_batch_is_saved_once_then_answered_and_the_loop_woken_once() -> None:
    calls: list[str] = []
    b = bridge(calls)
    b.handle_message(f"{PREFIX}/cmd/curtail", cmd(id="e1", target_power_w=5e4), retained=False,
                     backlog=2)
    b.handle_message(f"{PREFIX}/cmd/override", cmd(id="o1", miner="AA", action="sleep"),
                     retained=False, backlog=1)
    b.handle_message(f"{PREFIX}/cmd/override", cmd(id="o2", miner="ZZ", action="sleep"),
                     retained=False, backlog=0)
    assert list(b._responses) == [] and "persist" not in " ".join(calls)  # held
    b.commit()
    assert calls == ["known", "persist 4", "wake"]  # fleet read once; 2 rows + 2 ids; 1 wake
    got = answers(b)
    assert [(a["id"], a["status"]) for a in got] == [("e1", "accepted"), ("o1", "accepted"),
                                                     ("o2", "rejected")]
    assert b.commands == {("curtail", "accepted"): 1, ("override", "accepted"): 1,
                          ("override", "rejected"): 1}
    calls.clear()
    b.handle_message(f"{PREFIX}/cmd/curtail", cmd(id="bad", target_power_w=-1), retained=False)
    b.commit()
    assert calls == ["known"]  # nothing to save, nothing to wake for


def test_an_overloaded_bridge_answers_busy_and_applies_nothing() -> None:
    calls: list[str] = []
    b = bridge(calls, busy_backlog=50)
    b.handle_message(f"{PREFIX}/cmd/curtail", cmd(id="e1", target_power_w=5e4), retained=False,
                     backlog=50)
    b.handle_message(f"{PREFIX}/cmd/curtail/cancel", cmd(id="e0"), retained=False, backlog=70)
    b.handle_message(f"{PREFIX}/cmd/heartbeat", b"", retained=False, backlog=60)
    b.commit()
    assert calls == []  # nothing applied: no save, no wake, the fleet never read
    got = answers(b)
    assert [(a["id"], a["status"]) for a in got] == [("e1", "rejected"), ("e0", "rejected")]
    assert got[0]["reason"] == ("busy: overloaded, 50 commands waiting (busy_backlog 50); "
                                "not applied, send it again later")
    assert b.store.events == {} and b.store.seen == {}
    assert b.store.last_heard > 0  # the heartbeat still counted
    assert b.commands == {("curtail", "busy"): 1, ("curtail/cancel", "busy"): 1,
                          ("heartbeat", "accepted"): 1}
    # below the threshold the same id is applied
    b.handle_message(f"{PREFIX}/cmd/curtail", cmd(id="e1", target_power_w=5e4), retained=False,
                     backlog=49)
    b.commit()
    assert answers(b)[-1]["status"] == "accepted" and "e1" in b.store.events


def test_answers_to_answers_are_ignored() -> None:
    b = bridge([])
    b.handle_message(f"{PREFIX}/cmd/curtail/response", b"{}", retained=False)
    b.handle_message(f"{PREFIX}/cmd/curtail/cancel/response", b"{}", retained=False)
    b.commit()
    assert list(b._responses) == [] and b.commands == {}


class FakeClient:
    """Records publishes; fails the ones whose payload says so (after a yield, as a lost
    connection would)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most_in_flight = 0
        self.sent: list[bytes] = []

    async def publish(self, topic: str, body: bytes, **kw: object) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.001)
        self.in_flight -= 1
        if b"fail" in body:
            raise OSError("connection lost")
        self.sent.append(body)


def test_answers_go_out_a_window_at_a_time_and_failures_go_back_in_order() -> None:
    b = bridge([])
    bodies = [json.dumps({"n": i, "x": "fail" if i in (3, 5) else ""}).encode()
              for i in range(SEND_WINDOW + 10)]
    b._responses.extend((f"{PREFIX}/cmd/curtail/response", body) for body in bodies)
    client = FakeClient()
    with pytest.raises(OSError):
        asyncio.run(b._send_responses(client))  # type: ignore[arg-type]
    assert client.most_in_flight == SEND_WINDOW
    assert len(client.sent) == SEND_WINDOW - 2
    assert [body for _t, body in b._responses] == [bodies[3], bodies[5], *bodies[SEND_WINDOW:]]
    assert b.published == {"response": SEND_WINDOW - 2}
