"""A connection dropped right after its CONNACK leaves no "exception never retrieved".

aiomqtt sets the disconnect error on ``_disconnected``; when that happens between the CONNACK
and the end of ``__aenter__``, ``__aenter__`` replaces the future before anyone reads it and
asyncio logs "Future exception was never retrieved" when it is collected (soak seed 321, a
broker restarted as curtaild connected). paho's callback is driven here by hand, as aiomqtt's
own loop would drive it, on curtaild's client class.
"""

from __future__ import annotations

import asyncio
import gc

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from curtaild.controller.mqtt import _Client


def _unretrieved_after_race(cls: type[aiomqtt.Client]) -> list[str]:
    async def main() -> list[str]:
        seen: list[str] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx["message"]))
        client = cls("127.0.0.1", 1)
        client._connected.set_result(None)  # the CONNACK arrived
        lost = ReasonCode(mqtt.PacketTypes.DISCONNECT, "Unspecified error")
        client._on_disconnect(client._client, None, mqtt.DisconnectFlags(False), lost, None)
        assert client._disconnected.done()
        client._disconnected = asyncio.Future()  # what __aenter__ does next
        gc.collect()
        await asyncio.sleep(0)
        return seen
    return asyncio.run(main())


def test_curtailds_client_marks_the_error_seen() -> None:
    assert _unretrieved_after_race(_Client) == []


def test_the_race_is_real_on_aiomqtts_own_client() -> None:
    """The case the subclass exists for: aiomqtt's client alone logs it."""
    assert any("never retrieved" in m for m in _unretrieved_after_race(aiomqtt.Client))


def test_a_waiter_still_gets_the_error() -> None:
    async def main() -> None:
        client = _Client("127.0.0.1", 1)
        client._connected.set_result(None)
        lost = ReasonCode(mqtt.PacketTypes.DISCONNECT, "Unspecified error")
        client._on_disconnect(client._client, None, mqtt.DisconnectFlags(False), lost, None)
        assert isinstance(client._disconnected.exception(), aiomqtt.MqttCodeError)
    asyncio.run(main())
