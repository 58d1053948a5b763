"""Bitaxe (AxeOS) as released, per firmware version, through unmodified pyasic 0.79.

The default machine runs AxeOS v2.4.5, the release of the reply captured from a real Bitaxe
(``shared/firmware-captures/bitaxe/v2_0_0/system_info.json``): its ``/api/system/info`` has
that reply's keys and types, and pyasic's parsers read the capture and the emulator alike.
Up to v2.12 ``/api/system/restart`` answers plain text (pyasic's ``reboot()`` then raises
although the machine restarts); pause/resume exist from v2.14 only, and pyasic 0.79 does not
use them, so a Bitaxe stays "cannot command" for curtaild.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pyasic import get_miner
from pyasic.errors import APIError
from pyasic.miners.bitaxe.espminer.BM.BM1370 import BitAxeGamma

from curtaild.emulator.families.bitaxe import DEFAULT_VERSION
from curtaild.emulator.fleet import FleetError, plan_fleet_text
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

CAPTURE = (Path(__file__).resolve().parent / "captures" / "bitaxe" / "v2_0_0"
           / "system_info.json")
OLD, OLD_2, V12, V14, V14_2 = (f"127.161.3.{i}" for i in range(1, 6))
FLEET = f"""
[[miner]]
model = "BitAxe Gamma"
ip = "{OLD}"
count = 2
[[miner]]
model = "BitAxe Gamma"
ip = "{V12}"
firmware_version = "v2.12.2"
[[miner]]
model = "BitAxe Gamma"
ip = "{V14}"
firmware_version = "v2.14.0"
count = 2
"""


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(fleet_toml=FLEET, first_ip=OLD, time_scale=0.01) as e:
        yield e


def kind(value: object) -> str:
    """cJSON has one number type: integral values print without a fraction."""
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) \
        else type(value).__name__


async def info(ip: str) -> dict:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://{ip}/api/system/info")).json()


async def post(ip: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(f"http://{ip}{path}")


async def test_v2_4_5_info_has_the_captured_keys_and_types(emu: EmulatorProcess) -> None:
    captured, ours = json.loads(CAPTURE.read_text()), await info(OLD)
    assert set(ours) == set(captured)
    assert {k: kind(v) for k, v in ours.items()} == {k: kind(v) for k, v in captured.items()}
    assert ours["version"] == DEFAULT_VERSION == "v2.4.5"
    assert isinstance(ours["bestDiff"], str)  # "483k" in the capture, a number later
    assert (await asyncio.to_thread(emu.miner, OLD))["firmware_version"] == "v2.4.5"


async def test_pyasic_parses_capture_and_emulator_alike(emu: EmulatorProcess) -> None:
    captured, ours = json.loads(CAPTURE.read_text()), await info(OLD)

    async def parsed(reply: dict) -> dict:
        m = BitAxeGamma(OLD)
        boards = await m._get_hashboards(web_system_info=reply)
        return {
            "hashrate": await m._get_hashrate(web_system_info=reply),
            "expected": await m._get_expected_hashrate(web_system_info=reply),
            "wattage": await m._get_wattage(web_system_info=reply),
            "fans": [f.speed is not None for f in await m._get_fans(web_system_info=reply)],
            "boards": [(b.hashrate is not None, b.chip_temp is not None, b.temp is not None)
                       for b in boards],
            "fw": await m._get_fw_ver(web_system_info=reply),
            "mac": await m._get_mac(web_system_info=reply),
            "uptime": await m._get_uptime(web_system_info=reply),
        }

    real, emulated = await parsed(captured), await parsed(ours)
    assert real["boards"] == emulated["boards"] == [(True, True, True)]
    assert real["fans"] == emulated["fans"] == [True]
    for key in ("hashrate", "expected", "wattage", "fw", "mac", "uptime"):
        assert real[key] is not None and emulated[key] is not None, key
    truth = emu.miner(OLD)
    assert float(emulated["hashrate"]) == pytest.approx(truth["hashrate_ths"], rel=0.05)
    assert float(emulated["expected"]) == pytest.approx(1.2, rel=0.01)
    assert emulated["wattage"] == pytest.approx(truth["power_w"], abs=1)
    assert emulated["mac"] == truth["mac"]
    # and the whole pyasic path on the live machine
    data = await (await get_miner(OLD)).get_data()
    assert data.fw_ver == "v2.4.5" and float(data.hashrate) > 1.0


@pytest.mark.parametrize("ip", [OLD_2, V12])
async def test_restart_answers_plain_text_up_to_v2_12(emu: EmulatorProcess, ip: str) -> None:
    miner = await get_miner(ip)
    assert miner is not None
    with pytest.raises(APIError, match="System will restart shortly"):
        await miner.reboot()  # pyasic expects JSON ...
    assert emu.miner(ip)["state"] == "booting"  # ... but the machine restarted
    await asyncio.to_thread(emu.wait_state, ip, "mining", 10.0)


async def test_no_pause_before_v2_14(emu: EmulatorProcess) -> None:
    for ip in (OLD, V12):
        reply = await post(ip, "/api/system/pause")
        # v2.4: the 404 handler's captive-portal redirect; v2.12: the API's "unknown route"
        assert reply.status_code in (302, 404)
        assert emu.miner(ip)["state"] == "mining"
    assert (await post(OLD, "/api/system/identify")).status_code == 302  # not in v2.4.5
    assert "miningPaused" not in await info(V12)


async def test_pause_and_resume_from_v2_14(emu: EmulatorProcess) -> None:
    paused = await post(V14, "/api/system/pause")
    assert paused.status_code == 200 and paused.json() == {"message": "Mining paused"}
    assert emu.miner(V14)["state"] == "sleeping"
    state = await info(V14)
    assert state["miningPaused"] is True and state["hashRate"] == 0
    resumed = await post(V14, "/api/system/resume")
    assert resumed.json() == {"message": "Mining resumed"}
    assert emu.miner(V14)["state"] == "booting"
    await asyncio.to_thread(emu.wait_state, V14, "mining", 10.0)
    assert (await info(V14))["miningPaused"] is False
    # pyasic 0.79 has no pause: still nothing to command
    assert await (await get_miner(V14)).stop_mining() is False


async def test_v2_14_restart_is_json_and_does_not_keep_the_pause(emu) -> None:
    assert (await post(V14_2, "/api/system/pause")).status_code == 200
    miner = await get_miner(V14_2)
    assert await miner.reboot() is True  # JSON from v2.13 on
    assert emu.miner(V14_2)["state"] == "booting"
    await asyncio.to_thread(emu.wait_state, V14_2, "mining", 10.0)  # the flag is not stored
    assert (await info(V14_2))["miningPaused"] is False


@pytest.mark.parametrize("value", ['"v1.9.0"', '"2.4"', '"v2.3.9"', "24"])
def test_firmware_version_is_checked(value: str) -> None:
    with pytest.raises(FleetError, match=r"miner\[0\]\.firmware_version: expected an AxeOS"):
        plan_fleet_text(f'[[miner]]\nmodel = "BitAxe Gamma"\nfirmware_version = {value}\n')
