"""LuxOS machines in the real emulator process, driven by unmodified pyasic, judged by the truth.

``curtaild emulate`` runs as a separate process (tests.support.emulator); pyasic talks to it
over real sockets (RPC 4028, web 80) and every effect is checked through ``GET /miners``.
"""

from __future__ import annotations

import asyncio

import httpx
import pyasic
import pytest
from pyasic.miners.backends.luxminer import LUXMiner

from curtaild.core.models import MODELS
from curtaild.emulator.families.luxos import profiles_for
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

XP = ["127.11.4.1", "127.11.4.2", "127.11.4.3", "127.11.4.4"]
JPRO = "127.11.4.10"
LIMITED = "127.11.4.20"
FLEET = f"""
[[miner]]
model = "S19 XP"
ip = "{XP[0]}"
count = {len(XP)}

[[miner]]
model = "S19j Pro LuxOS"
ip = "{JPRO}"

[[miner]]
model = "S19 XP"
ip = "{LIMITED}"
power_limit_w = 2000
"""


@pytest.fixture(scope="module")
def emu():
    with EmulatorProcess(fleet_toml=FLEET, first_ip="127.11.4.1", time_scale=0.01) as proc:
        yield proc


def close(measured: float, truth: float, rel: float) -> bool:
    return abs(measured - truth) <= rel * max(abs(truth), 1e-9)


async def truth(emu: EmulatorProcess, ip: str) -> dict:
    return await asyncio.to_thread(emu.miner, ip)


async def wait_state(emu: EmulatorProcess, ip: str, state: str) -> dict:
    return await asyncio.to_thread(emu.wait_state, ip, state, 20.0)


async def test_detected_by_rpc_and_web(emu) -> None:
    xp, jpro = await asyncio.gather(pyasic.get_miner(XP[0]), pyasic.get_miner(JPRO))
    assert type(xp).__name__ == "LUXMinerS19XP" and isinstance(xp, LUXMiner)
    assert type(jpro).__name__ == "LUXMinerS19jPro"
    async with httpx.AsyncClient() as http:
        page = await http.get(f"http://{XP[0]}/")
        assert page.status_code == 200 and "Luxor Firmware" in page.text
        assert (await http.get(f"http://{XP[0]}/nope")).status_code == 404


async def test_get_data_matches_truth(emu) -> None:
    client = await pyasic.get_miner(XP[1])
    data = await client.get_data()
    t = await truth(emu, XP[1])
    assert close(float(data.hashrate), t["hashrate_ths"], 0.06)
    assert close(data.wattage, t["power_w"], 0.03)
    assert data.wattage_limit == round(t["nameplate_power_w"])
    assert len(data.hashboards) == 3 and all(b.chips == 110 for b in data.hashboards)


async def test_configured_power_limit_shows_as_profile(emu) -> None:
    client = await pyasic.get_miner(LIMITED)
    data = await client.get_data()
    t = await truth(emu, LIMITED)
    assert t["power_limit_w"] == 2000
    ladder = profiles_for(MODELS["S19 XP"])
    assert data.wattage_limit == max(p.watts for p in ladder if p.watts <= 2000)
    assert close(data.wattage, t["power_w"], 0.03) and close(t["power_w"], 2000, 0.03)


async def test_curtail_sleep_and_wakeup(emu) -> None:
    client = await pyasic.get_miner(XP[2])
    assert await client.stop_mining() is True
    t = await truth(emu, XP[2])
    assert t["state"] == "sleeping" and t["hashrate_ths"] == 0.0 and t["power_w"] < 100
    assert float((await client.get_data()).hashrate) == 0.0
    assert await client.resume_mining() is True
    await wait_state(emu, XP[2], "mining")
    # the wakeup ramps the boards like a boot (RAMP_S, scaled), then full hashrate
    t = await asyncio.to_thread(emu.wait_view, XP[2], "at nameplate hashrate",
                                lambda m: close(m["hashrate_ths"], m["nameplate_hashrate_ths"],
                                                0.05), 20.0)
    assert t["state"] == "mining"


async def test_power_limit_picks_profile(emu) -> None:
    client = await pyasic.get_miner(JPRO)
    ladder = profiles_for(MODELS["S19j Pro LuxOS"])
    want = max((p for p in ladder if p.watts <= 2500), key=lambda p: p.watts)
    assert await client.set_power_limit(2500) is True
    t = await truth(emu, JPRO)
    assert t["power_limit_w"] == want.watts
    assert close(t["power_w"], want.watts, 0.03)
    assert close(t["hashrate_ths"], want.hashrate_ths, 0.05)
    data = await client.get_data()
    assert data.wattage_limit == want.watts and close(data.wattage, t["power_w"], 0.03)


async def test_fault_light_and_reboot(emu) -> None:
    client = await pyasic.get_miner(XP[3])
    assert await client.fault_light_on() is True
    assert (await truth(emu, XP[3]))["led_on"] is True
    assert (await client.get_data()).fault_light is True
    assert await client.fault_light_off() is True
    assert (await truth(emu, XP[3]))["led_on"] is False
    assert await client.reboot() is True
    assert (await truth(emu, XP[3]))["state"] == "booting"
    await wait_state(emu, XP[3], "mining")
