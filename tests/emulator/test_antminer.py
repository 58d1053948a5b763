"""Antminer stock firmware, driven by unmodified pyasic against an emulator process."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from pyasic import get_miner
from pyasic.miners.backends import AntminerModern

from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

FLEET = """
[[miner]]
model = "S19j Pro"
count = 3
[[miner]]
model = "S19"
[[miner]]
model = "S21"
firmware_version = "FR-1.12(251009-S21)"  # the captured S21's: it answers joined commands
"""
S19JPRO, S19JPRO_2, S19JPRO_3, S19, S21 = (f"127.10.1.{i}" for i in range(1, 6))


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(fleet_toml=FLEET, first_ip="127.10.1.1", time_scale=0.01) as e:
        yield e


async def rpc(ip: str, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(ip, 4028)
    writer.write(payload)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5.0)  # the server closes after replying
    writer.close()
    return data


@pytest.mark.parametrize(("ip", "cls"), [(S19JPRO, "BMMinerS19jPro"), (S19, "BMMinerS19"),
                                         (S21, "BMMinerS21")])
async def test_pyasic_detects_the_model(emu: EmulatorProcess, ip: str, cls: str) -> None:
    miner = await get_miner(ip)
    assert miner is not None
    assert type(miner).__name__ == cls
    assert isinstance(miner, AntminerModern)
    assert miner.model == f"{emu.miner(ip)['model']} (Stock)"


async def test_get_data_matches_physical_truth(emu: EmulatorProcess) -> None:
    miner = await get_miner(S19JPRO)
    data = await miner.get_data()
    truth = emu.miner(S19JPRO)
    assert truth["state"] == "mining"
    assert float(data.hashrate) == pytest.approx(truth["hashrate_ths"], rel=0.05)
    assert float(data.expected_hashrate) == pytest.approx(104.0)
    assert data.wattage is None  # stock Antminers do not report power
    assert data.is_mining is True
    assert data.mac == truth["mac"]
    assert data.serial_number == truth["serial"]
    assert data.hostname
    assert data.api_ver == "3.1" and data.fw_ver
    assert len(data.hashboards) == 3
    for board in data.hashboards:
        assert board.chips == 126 and not board.missing
        assert float(board.hashrate) == pytest.approx(truth["hashrate_ths"] / 3, rel=0.06)
    hottest_chip = max(b.chip_temp for b in data.hashboards)
    assert hottest_chip == pytest.approx(truth["temp_c"], abs=3.0)
    assert len(data.fans) == 4 and all(f.speed > 1000 for f in data.fans)
    assert data.uptime and data.uptime > 0
    assert data.pools and data.pools[0].url.host == "pool.example"
    assert data.fault_light is False


async def test_stop_and_resume_mining_change_the_truth(emu: EmulatorProcess) -> None:
    """Each write answers after the CGI's working time, then restarts bmminer: silent, then
    asleep; or silent, then the boards boot (asic_num 0, no temperatures), then hashing."""
    miner = await get_miner(S19JPRO_2)
    assert await miner.stop_mining() is True
    emu.wait_state(S19JPRO_2, "sleeping", timeout=15)
    emu.wait_view(S19JPRO_2, "running", lambda m: m["process"] == "running", timeout=15)
    asleep = await miner.get_data()
    assert asleep.is_mining is False
    assert float(asleep.hashrate) == 0.0
    assert emu.miner(S19JPRO_2)["power_w"] < 100

    assert await miner.resume_mining() is True
    assert emu.miner(S19JPRO_2)["state"] == "booting"
    emu.wait_view(S19JPRO_2, "running", lambda m: m["process"] == "running", timeout=15)
    booting = await miner.get_data()  # bmminer answers while the boards come up: 0 hashrate
    if emu.miner(S19JPRO_2)["state"] == "booting":
        assert float(booting.hashrate) == 0.0
        assert all(not b.chips for b in booting.hashboards)  # asic_num 0 while booting
    truth = emu.wait_state(S19JPRO_2, "mining", timeout=15)  # 90 s boot x 0.01
    assert truth["hashrate_ths"] > 90
    back = await miner.get_data()
    assert back.is_mining is True
    assert float(back.hashrate) == pytest.approx(104.0, rel=0.08)


async def test_operator_sleep_is_what_pyasic_sees(emu: EmulatorProcess) -> None:
    emu.action(S19, "sleep")
    try:
        data = await (await get_miner(S19)).get_data()
        assert data.is_mining is False and float(data.hashrate) == 0.0
    finally:
        emu.action(S19, "wake")
        emu.wait_state(S19, "mining", timeout=15)


async def test_fault_light_and_reboot(emu: EmulatorProcess) -> None:
    miner = await get_miner(S19JPRO_3)
    assert await miner.fault_light_on() is True
    assert emu.miner(S19JPRO_3)["led_on"] is True
    fresh = await get_miner(S19JPRO_3)  # a new object reads the LED from the firmware
    assert (await fresh.get_data()).fault_light is True
    assert await miner.fault_light_off() is False
    assert emu.miner(S19JPRO_3)["led_on"] is False

    assert await miner.reboot() is True
    assert emu.miner(S19JPRO_3)["state"] == "booting"
    emu.wait_state(S19JPRO_3, "mining", timeout=15)
    assert (await miner.get_data()).uptime < 600  # emulated seconds since the reboot


async def test_power_limit_is_not_supported(emu: EmulatorProcess) -> None:
    miner = await get_miner(S21)
    assert await miner.set_power_limit(3000) is False
    assert emu.miner(S21)["power_limit_w"] is None


async def test_digest_auth_is_enforced() -> None:
    url = f"http://{S19JPRO}/cgi-bin/get_system_info.cgi"
    async with httpx.AsyncClient() as client:
        anon = await client.get(url)
        assert anon.status_code == 401
        assert 'Digest realm="antMiner Configuration"' in anon.headers["www-authenticate"]
        wrong = await client.get(url, auth=httpx.DigestAuth("root", "admin"))
        assert wrong.status_code == 401
        good = await client.get(url, auth=httpx.DigestAuth("root", "root"))
        assert good.status_code == 200
        assert good.json()["minertype"] == "Antminer S19j Pro"
        # The Marathon probe must not look like JSON, or pyasic calls this a Marathon miner.
        mara = await client.get(f"http://{S19JPRO}/kaonsu/v1/brief",
                                auth=httpx.DigestAuth("root", "root"))
        assert mara.status_code == 404
        with pytest.raises(ValueError):
            json.loads(mara.text)


async def test_rpc_single_batched_and_invalid_commands() -> None:
    one = await rpc(S21, b'{"command": "version"}')
    assert one.endswith(b"\x00")  # bmminer NUL-terminates its replies
    version = json.loads(one[:-1])
    assert version["VERSION"][0]["Type"] == "Antminer S21"
    batched = json.loads((await rpc(S21, b'{"command":"summary+stats+pools"}'))[:-1])
    assert set(batched) == {"summary", "stats", "pools", "id"}
    stats = batched["stats"][0]["STATS"][1]
    assert stats["rate_unit"] == "GH" and stats["total_rateideal"] == 200000.0
    assert {f"temp_chip{i}" for i in (1, 2, 3)} <= stats.keys()
    assert {f"chain_rate{i}" for i in (1, 2, 3)} <= stats.keys()
    bad = json.loads((await rpc(S21, b'{"command":"frobnicate"}'))[:-1])
    assert bad["STATUS"][0]["STATUS"] == "E" and bad["STATUS"][0]["Msg"] == "Invalid command"
    junk = json.loads((await rpc(S21, b'{"command": nope}'))[:-1])
    assert junk["STATUS"][0]["Msg"] == "Invalid JSON"


async def test_request_split_across_packets_is_reassembled() -> None:
    reader, writer = await asyncio.open_connection(S21, 4028)
    writer.write(b'{"comm')
    await writer.drain()
    await asyncio.sleep(0.2)
    start = time.monotonic()
    writer.write(b'and": "summary"}')
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert json.loads(data[:-1])["SUMMARY"][0]["GHS 5s"] > 0
    assert time.monotonic() - start < 2
