"""Whatsminers in the real emulator process, driven by unmodified pyasic, judged by the truth.

``curtaild emulate`` runs as a separate process (tests.support.emulator); pyasic talks to it
over real sockets and every effect is checked through the control API's ``GET /miners``.
"""

from __future__ import annotations

import asyncio

import pyasic
import pytest
from pyasic.miners.backends.btminer import BTMinerV2

from tests.support.emulator import SITE_WHATSMINER_PASSWORD, EmulatorProcess

pytestmark = pytest.mark.integration

M50 = ["127.11.3.1", "127.11.3.2", "127.11.3.3", "127.11.3.4", "127.11.3.5"]
M30S = "127.11.3.10"
PW = SITE_WHATSMINER_PASSWORD  # set up as at a site: admin password changed, write API on
FLEET = f"""
[[miner]]
model = "M50"
ip = "{M50[0]}"
count = {len(M50)}
password = "{PW}"

[[miner]]
model = "M30S"
ip = "{M30S}"
password = "{PW}"
"""


@pytest.fixture(scope="module")
def emu():
    with EmulatorProcess(fleet_toml=FLEET, first_ip="127.11.3.1", time_scale=0.01) as proc:
        yield proc


async def site_miner(ip: str):
    """pyasic's miner object told the site's admin password (its default is the factory one,
    which writes nothing on a machine set up for the API)."""
    miner = await pyasic.get_miner(ip)
    miner.rpc.pwd = PW
    return miner


def close(measured: float, truth: float, rel: float) -> bool:
    return abs(measured - truth) <= rel * max(abs(truth), 1e-9)


async def truth(emu: EmulatorProcess, ip: str) -> dict:
    return await asyncio.to_thread(emu.miner, ip)


async def wait_state(emu: EmulatorProcess, ip: str, state: str) -> dict:
    return await asyncio.to_thread(emu.wait_state, ip, state, 20.0)


async def wait_for(emu: EmulatorProcess, ip: str, pred, within_s: float = 20.0) -> dict:
    """The truth once ``pred`` holds (a ramp to full power takes 4.8 s at this scale)."""
    deadline = asyncio.get_running_loop().time() + within_s
    while not pred(t := await truth(emu, ip)):
        assert asyncio.get_running_loop().time() < deadline, t
        await asyncio.sleep(0.1)
    return t


async def test_detected_as_api_v2_models(emu) -> None:
    m50, m30s = await asyncio.gather(pyasic.get_miner(M50[0]), pyasic.get_miner(M30S))
    assert type(m50).__name__ == "BTMinerM50VH50" and isinstance(m50, BTMinerV2)
    assert type(m30s).__name__ == "BTMinerM30SV10" and isinstance(m30s, BTMinerV2)


async def test_get_data_matches_truth(emu) -> None:
    client = await pyasic.get_miner(M50[1])
    data = await client.get_data()
    t = await truth(emu, M50[1])
    assert t["state"] == "mining" and data.is_mining is True
    assert close(float(data.hashrate), t["hashrate_ths"], 0.06)
    assert close(data.wattage, t["power_w"], 0.03)
    assert data.mac == t["mac"].upper() and data.serial_number == t["serial"]
    assert abs(data.temperature_avg - t["temp_c"]) < 15  # board average vs hottest chip


async def test_stop_and_resume_mining(emu) -> None:
    client = await site_miner(M50[2])
    assert await client.stop_mining() is True
    t = await truth(emu, M50[2])
    assert t["state"] == "sleeping" and t["hashrate_ths"] == 0.0
    assert t["power_w"] < 100
    data = await client.get_data()
    # the firmware says off at once; MHS 1m (pyasic's hashrate) lags by up to a minute
    assert data.is_mining is False and float(data.hashrate) > 0.5 * t["nameplate_hashrate_ths"]
    await asyncio.sleep(60 * 0.01 + 0.1)  # a minute, at this emulator's time scale
    data = await client.get_data()
    assert data.is_mining is False and float(data.hashrate) == 0.0
    assert close(data.wattage, t["power_w"], 0.15)

    assert await client.resume_mining() is True
    assert (await truth(emu, M50[2]))["state"] == "booting"
    t = await wait_state(emu, M50[2], "mining")
    # power_on ramps to full hashrate over minutes (480 s emulated, 4.8 s here)
    assert t["hashrate_ths"] < 0.5 * t["nameplate_hashrate_ths"]
    await wait_for(emu, M50[2],
                   lambda m: close(m["hashrate_ths"], m["nameplate_hashrate_ths"], 0.05))
    assert (await client.get_data()).is_mining is True


async def test_power_limit_changes_truth(emu) -> None:
    client = await site_miner(M30S)
    assert await client.set_power_limit(2400) is True
    t = await truth(emu, M30S)
    assert t["power_limit_w"] == 2400
    t = await wait_state(emu, M30S, "mining")  # btminer restarts to apply the limit
    t = await wait_for(emu, M30S, lambda m: close(m["power_w"], 2400, 0.03))  # and ramps
    assert t["hashrate_ths"] < 0.85 * t["nameplate_hashrate_ths"]
    data = await client.get_data()
    assert data.wattage_limit == 2400
    # what btminer reports trails the truth by its averaging window: on a loaded machine the
    # first read after the ramp may still be on its way up
    for _ in range(50):
        if close(data.wattage, 2400, 0.03):
            break
        await asyncio.sleep(0.1)
        data = await client.get_data()
    assert close(data.wattage, 2400, 0.03)


async def test_fault_light_and_reboot(emu) -> None:
    client = await site_miner(M50[3])
    assert await client.fault_light_on() is True
    assert (await truth(emu, M50[3]))["led_on"] is True
    assert (await client.get_data()).fault_light is True
    assert await client.fault_light_off() is True
    assert (await truth(emu, M50[3]))["led_on"] is False

    assert await client.reboot() is True
    assert (await truth(emu, M50[3]))["state"] == "booting"
    t = await wait_state(emu, M50[3], "mining")
    assert t["hashrate_ths"] > 0


async def test_ignore_sleep_fault(emu) -> None:
    await asyncio.to_thread(emu.set_fault, M50[4], "ignore_sleep")
    client = await site_miner(M50[4])
    assert await client.stop_mining() is True  # acknowledged ...
    t = await truth(emu, M50[4])
    assert t["state"] == "mining" and t["hashrate_ths"] > 0  # ... but still hashing
    data = await client.get_data()
    assert data.is_mining is False  # the firmware says off
    assert close(float(data.hashrate), t["hashrate_ths"], 0.06)  # its meters say otherwise
