"""Every family goes silent the way real machines do (issue 13, "Every family").

- A control board that reboots -- asked (pyasic's ``reboot``), unasked (the ``silent_reboot``
  fault) or after power comes back -- answers nothing for its boot time: first blackholed (the
  connect times out), then refused, then up again.
- A host off the network (mains power cut) is blackholed: connects time out, they are not
  refused at once as an emulator without a network would do.
- After a power cut, a machine whose firmware stores sleep (stock Antminer, LuxOS) comes back
  asleep; a Whatsminer (no source says it stores ``power_off``) and a Bitaxe come back mining.

Observed from the client side (raw connects, unmodified pyasic) and in GET /miners (``network``:
up | refused | blackhole).
"""

from __future__ import annotations

import asyncio

import httpx
import pyasic
import pytest

from tests.support.emulator import SITE_WHATSMINER_PASSWORD, EmulatorProcess

pytestmark = pytest.mark.integration

TIME_SCALE = 0.05  # LuxOS boots in 3 s, a Whatsminer in 6 s, a Bitaxe in 0.5 s
LUX, M30S, M50, AXE, STOCK = (f"127.159.2.{i}" for i in range(1, 6))
LUX2, M30S2, AXE2 = "127.159.2.11", "127.159.2.12", "127.159.2.13"
PW = SITE_WHATSMINER_PASSWORD  # the site's admin password: their write API is on
FLEET = f"""
[[miner]]
model = "S19 XP"
ip = "{LUX}"
[[miner]]
model = "M30S"
ip = "{M30S}"
password = "{PW}"
[[miner]]
model = "M50"
ip = "{M50}"
api = "v3"
[[miner]]
model = "BitAxe Gamma"
ip = "{AXE}"
[[miner]]
model = "S19j Pro"
ip = "{STOCK}"
[[miner]]
model = "S19 XP"
ip = "{LUX2}"
[[miner]]
model = "M30S"
ip = "{M30S2}"
password = "{PW}"
[[miner]]
model = "BitAxe Gamma"
ip = "{AXE2}"
"""
PORT = {LUX: 4028, M30S: 4028, M50: 4028, AXE: 80, STOCK: 80, LUX2: 4028, M30S2: 4028,
        AXE2: 80}


@pytest.fixture(scope="module")
def emu():
    with EmulatorProcess(fleet_toml=FLEET, first_ip=LUX, time_scale=TIME_SCALE) as proc:
        yield proc


async def silence(ip: str, port: int, wait_s: float = 0.3) -> str:
    """How a connect to ``ip:port`` goes: "connect timeout", "no answer" (connected, nothing
    comes back), "refused", or "answered"."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), wait_s)
    except TimeoutError:
        return "connect timeout"
    except ConnectionRefusedError:
        return "refused"
    try:
        writer.write(b'{"command":"summary"}' if port == 4028 else b"GET / HTTP/1.0\r\n\r\n")
        try:
            data = await asyncio.wait_for(reader.read(1), wait_s)
        except TimeoutError:
            return "no answer"
        except ConnectionError:
            return "refused"
        return "answered" if data else "no answer"
    finally:
        writer.close()


async def wait_view(emu: EmulatorProcess, ip: str, what: str, predicate,
                    within_s: float = 20.0) -> dict:
    return await asyncio.to_thread(emu.wait_view, ip, what, predicate, within_s)


@pytest.mark.parametrize("ip", [LUX, M30S, M50, AXE])
async def test_silent_reboot_blackholes_then_refuses_then_answers(emu, ip: str) -> None:
    before = await asyncio.to_thread(emu.miner, ip)
    assert before["network"] == "up"
    v = await asyncio.to_thread(emu.set_fault, ip, "silent_reboot")
    assert v["network"] == "blackhole" and v["listening"] is False and v["state"] == "booting"
    # (a Bitaxe boots in 0.5 s: its blackholed half may be over by the time the probe runs)
    assert await silence(ip, PORT[ip]) in ("connect timeout", "no answer", "refused")
    await wait_view(emu, ip, "refusing", lambda m: m["network"] == "refused")
    if ip != AXE:  # a Bitaxe's refused half lasts 0.25 s: too short to probe reliably
        assert await silence(ip, PORT[ip]) == "refused"
    v = await wait_view(emu, ip, "up again", lambda m: m["network"] == "up")
    assert v["fault"] == "silent_reboot" and v["listening"] is True
    assert [c[1:] for c in v["changes"] if c[1] == "reboot"] == [["reboot", "firmware"]]
    assert await silence(ip, PORT[ip]) == "answered"
    miner = await pyasic.get_miner(ip)
    assert miner is not None and (await miner.get_data()).hashrate is not None
    await asyncio.sleep(0.5)  # the fault reboots once, not for as long as it is set
    assert (await asyncio.to_thread(emu.set_fault, ip, "none"))["network"] == "up"


@pytest.mark.parametrize("ip", [M30S2, AXE2])
async def test_a_reboot_command_silences_the_board_for_its_boot(emu, ip: str) -> None:
    if ip == M30S2:
        miner = await pyasic.get_miner(ip)
        miner.rpc.pwd = PW
        assert await miner.reboot() is True
    else:  # AxeOS v2.4 answers /restart in plain text, which pyasic's reboot() cannot parse
        async with httpx.AsyncClient() as http:
            assert (await http.post(f"http://{ip}/api/system/restart")).status_code == 200
    v = await asyncio.to_thread(emu.miner, ip)
    assert v["network"] in ("blackhole", "refused") and v["listening"] is False
    assert await silence(ip, PORT[ip]) != "answered"
    await wait_view(emu, ip, "up again", lambda m: m["network"] == "up")
    assert await silence(ip, PORT[ip]) == "answered"


async def test_a_power_cut_blackholes_and_stored_sleep_survives_it(emu) -> None:
    lux = await pyasic.get_miner(LUX2)
    assert await lux.stop_mining() is True  # curtail sleep: stored by LuxOS
    await asyncio.to_thread(emu.action, STOCK, "sleep")  # at the machine: cgminer.conf
    m30s = await pyasic.get_miner(M30S)
    m30s.rpc.pwd = PW
    assert await m30s.stop_mining() is True  # power_off: not stored
    await wait_view(emu, M30S, "asleep", lambda m: m["state"] == "sleeping")
    everyone = [LUX2, STOCK, M30S, AXE]
    for ip in everyone:
        v = await asyncio.to_thread(emu.power, ip, False)
        assert v["state"] == "off" and v["network"] == "blackhole"
    # off the network: the second connect times out (the first may sit in the queue)
    for ip in everyone:
        first, second = await silence(ip, PORT[ip]), await silence(ip, PORT[ip])
        assert first in ("connect timeout", "no answer") and second == "connect timeout", ip
    for ip in everyone:
        assert (await asyncio.to_thread(emu.power, ip, True))["network"] == "blackhole"
    came_back = {ip: (await wait_view(emu, ip, "booted", lambda m: m["network"] == "up"
                                      and m["state"] != "booting"))["state"]
                 for ip in everyone}
    assert came_back == {LUX2: "sleeping", STOCK: "sleeping", M30S: "mining", AXE: "mining"}
    assert (await lux.rpc.config())["CONFIG"][0]["CurtailMode"] == "Sleep"
