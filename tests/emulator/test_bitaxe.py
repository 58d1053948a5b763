"""Bitaxe (AxeOS / ESP-Miner): detection, data, and that it cannot be curtailed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from pyasic import get_miner

from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

AXE, AXE_2 = "127.10.2.1", "127.10.2.2"


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    # AxeOS v2.13: a JSON restart reply and the later routes (the v2.4.5 default and v2.14's
    # pause are tests/emulator/test_bitaxe_field.py's)
    fleet = '[[miner]]\nmodel = "BitAxe Gamma"\ncount = 2\nfirmware_version = "v2.13.0"\n'
    with EmulatorProcess(fleet_toml=fleet, first_ip="127.10.2.1", time_scale=0.01) as e:
        yield e


async def test_detected_as_bitaxe_gamma(emu: EmulatorProcess) -> None:
    miner = await get_miner(AXE)
    assert miner is not None
    assert type(miner).__name__ == "BitAxeGamma"
    assert miner.model == "Gamma (Stock)"


async def test_get_data_matches_truth_including_power(emu: EmulatorProcess) -> None:
    data = await (await get_miner(AXE)).get_data()
    truth = emu.miner(AXE)
    assert float(data.hashrate) == pytest.approx(truth["hashrate_ths"], rel=0.05)
    assert float(data.expected_hashrate) == pytest.approx(1.2, rel=0.01)
    assert data.wattage == pytest.approx(truth["power_w"], rel=0.05, abs=1)
    assert data.hashboards[0].chip_temp == pytest.approx(truth["temp_c"], abs=2.5)
    assert data.mac == truth["mac"]
    assert data.hostname and data.fw_ver.startswith("v2.")
    assert data.fans[0].speed > 0
    assert data.uptime > 0


async def test_cannot_be_curtailed(emu: EmulatorProcess) -> None:
    """pyasic has no way to sleep a Bitaxe: it says so (False) and nothing changes."""
    miner = await get_miner(AXE)
    before = emu.miner(AXE)["commands_received"]
    assert await miner.stop_mining() is False
    assert await miner.set_power_limit(10) is False
    await asyncio.sleep(0.1)
    truth = emu.miner(AXE)
    assert truth["state"] == "mining" and truth["hashrate_ths"] > 1.0
    assert truth["power_limit_w"] is None
    assert truth["commands_received"] == before  # pyasic did not even try
    assert await miner.resume_mining() is False


async def test_restart_reboots(emu: EmulatorProcess) -> None:
    miner = await get_miner(AXE_2)
    assert await miner.reboot() is True
    assert emu.miner(AXE_2)["state"] == "booting"
    emu.wait_state(AXE_2, "mining", timeout=10)


async def test_no_rpc_port_and_esp_miner_routing() -> None:
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(AXE, 4028)
    async with httpx.AsyncClient() as client:
        unknown = await client.get(f"http://{AXE}/api/nope")
        assert unknown.status_code == 404 and unknown.json() == {"error": "unknown route"}
        other = await client.get(f"http://{AXE}/settings")
        assert other.status_code == 302 and other.headers["location"] == "/"
        asic = (await client.get(f"http://{AXE}/api/system/asic")).json()
        assert asic["ASICModel"] == "BM1370" and asic["asicCount"] == 1


async def test_settings_patch_changes_pool(emu: EmulatorProcess) -> None:
    async with httpx.AsyncClient() as client:
        bad = await client.patch(f"http://{AXE}/api/system", json={"stratumPort": "x"})
        assert bad.status_code == 400
        ok = await client.patch(f"http://{AXE}/api/system",
                                json={"stratumURL": "pool.test", "stratumPort": 4444})
        assert ok.status_code == 200 and ok.content == b""
    assert emu.miner(AXE)["pools"][0] == "stratum+tcp://pool.test:4444"
    config = await (await get_miner(AXE)).get_config()
    assert config.pools.groups[0].pools[0].url == "stratum+tcp://pool.test:4444"
