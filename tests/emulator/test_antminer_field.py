"""The emulated stock Antminer behaves like the firmware in the field (firmware-behaviour.md).

Every behaviour is driven through unmodified pyasic 0.79 over real sockets and observed twice:
from the client side (what pyasic sees) and in the emulator's truth (GET /miners). Timings are
the firmware's, scaled by --time-scale (0.02 here: the 20 s CGI takes 0.4 s).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from pyasic import get_miner
from pyasic.errors import APIError

from curtaild.core.models import MODELS
from curtaild.emulator.families.antminer import BOARD_BOOT_S, CGI_S, GENERATIONS, RESTART_S
from curtaild.emulator.fleet import plan_count
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

SCALE = 0.02
FLEET = """
[[miner]]
model = "S19j Pro"
firmware_version = "2022-12"
[[miner]]
model = "S21"
firmware_version = "2025-10"
[[miner]]
model = "S21"
firmware_version = "Fri Feb 7 11:15:49 CST 2025"
[[miner]]
model = "S19"
count = 6
"""
OLD, NEW, LIAR, WIPE, POWER, REBOOT, LIE, SLOW, SPARE = (f"127.158.1.{i}" for i in range(1, 10))


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(fleet_toml=FLEET, first_ip="127.158.1.1", time_scale=SCALE) as e:
        yield e


def running(emu: EmulatorProcess, ip: str, timeout: float = 15.0) -> dict:
    return emu.wait_view(ip, "running", lambda m: m["process"] == "running", timeout)


def client_actions(view: dict) -> list[str]:
    return [c[1] for c in view["changes"] if c[2] == "client"]


async def rpc(ip: str, command: str) -> bytes:
    reader, writer = await asyncio.open_connection(ip, 4028)
    writer.write(json.dumps({"command": command}).encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5.0)
    writer.close()
    return data


async def post_conf(miner, **changes: object) -> dict:
    """What a careful client posts: the whole config it just read, with ``changes``."""
    conf = await miner.web.get_miner_conf()
    assert conf.get("pools"), conf
    return await miner.web.set_miner_conf({**conf, **changes})


async def test_a_write_answers_late_then_restarts_bmminer(emu: EmulatorProcess) -> None:
    miner = await get_miner(OLD)
    start = time.monotonic()
    assert await miner.stop_mining() is True
    assert time.monotonic() - start >= CGI_S * SCALE * 0.9  # the CGI worked before answering
    view = emu.miner(OLD)
    assert view["process"] == "restarting" and view["state"] == "booting"
    assert await rpc(OLD, "summary") == b""  # bmminer is down: closed unanswered
    with pytest.raises(APIError):
        await miner.rpc.version()
    assert (await miner.web.get_miner_conf())["bitmain-work-mode"] == "1"  # lighttpd is up
    emu.wait_state(OLD, "sleeping", timeout=15)
    running(emu, OLD)
    summary = await miner.rpc.summary()
    assert summary["SUMMARY"][0]["Elapsed"] < 60  # bmminer started again (emulated seconds)
    assert (await miner.get_data()).is_mining is False

    assert await miner.resume_mining() is True
    running(emu, OLD)
    stats = json.loads((await rpc(OLD, "stats"))[:-1])["STATS"][1]
    if emu.miner(OLD)["state"] == "booting":  # the boards come up: no chips, no temperatures
        assert stats["chain_acn1"] == 0 and stats["temp_pcb1"] == "0-0-0-0"
        assert stats["temp1"] == 0 and stats["chain_acs1"] == ""
    assert emu.wait_state(OLD, "mining", timeout=15)["hashrate_ths"] > 90


async def test_generations_obey_different_keys(emu: EmulatorProcess) -> None:
    old, new = await get_miner(OLD), await get_miner(NEW)
    # Dec-2022 firmware: bitmain-work-mode is acknowledged and ignored (asic-rs#245)
    assert (await post_conf(old, **{"bitmain-work-mode": "1"}))["code"] == "M000"
    running(emu, OLD)
    assert emu.wait_state(OLD, "mining", timeout=15)["work_mode"] == 0
    # 2025 FR firmware: pyasic's miner-mode is acknowledged and ignored (asic-rs#120)...
    assert await new.stop_mining() is True
    running(emu, NEW)
    view = emu.wait_state(NEW, "mining", timeout=15)
    assert view["work_mode"] == 0 and view["firmware_generation"] == "2025-10"
    assert (await new.get_data()).is_mining is True
    # ...bitmain-work-mode works, and 2 is HEM: it hashes, at less power
    assert (await post_conf(new, **{"bitmain-work-mode": "1"}))["code"] == "M000"
    emu.wait_state(NEW, "sleeping", timeout=15)
    assert (await post_conf(new, **{"bitmain-work-mode": "2"}))["code"] == "M000"
    view = emu.wait_state(NEW, "mining", timeout=15)
    assert view["work_mode"] == 2 and view["mode"] == "low"
    assert view["power_w"] < 0.8 * view["nameplate_power_w"]
    assert await new.is_mining() is True
    assert (await post_conf(new, **{"bitmain-work-mode": "0"}))["code"] == "M000"
    assert emu.wait_view(NEW, "normal", lambda m: m["mode"] == "normal")["work_mode"] == 0


async def test_the_lying_generation_acknowledges_and_changes_nothing(
        emu: EmulatorProcess) -> None:
    liar = await get_miner(LIAR)
    assert emu.miner(LIAR)["obeys"] is False
    assert emu.miner(LIAR)["firmware_generation"] == "2025-02"
    assert await liar.stop_mining() is True
    assert (await post_conf(liar, **{"bitmain-work-mode": "1"}))["code"] == "M000"
    running(emu, LIAR)
    view = emu.wait_state(LIAR, "mining", timeout=15)
    assert view["work_mode"] == 0 and "sleep" not in client_actions(view)
    assert (await liar.get_data()).is_mining is True
    assert "restart" in [c[1] for c in view["changes"]]  # it did restart bmminer


async def test_a_failed_read_makes_pyasic_store_empty_pools(emu: EmulatorProcess) -> None:
    miner = await get_miner(WIPE)
    emu.set_fault(WIPE, "wipe_pools_on_failed_read")
    assert emu.miner(WIPE)["pools_ok"] is True
    assert (await miner.web.get_miner_conf()).get("success") is False  # the read fails
    assert await miner.stop_mining() is True  # pyasic posts three empty pools...
    view = emu.wait_state(WIPE, "sleeping", timeout=15)
    assert view["pools_ok"] is False and view["pools"] == []  # ...and the firmware stores them
    emu.set_fault(WIPE, "none")
    assert await miner.resume_mining() is True
    view = emu.wait_state(WIPE, "mining", timeout=15)  # it wakes...
    assert view["hashrate_ths"] == 0.0 and view["pools_ok"] is False  # ...and hashes nothing
    running(emu, WIPE)
    data = await miner.get_data()
    assert float(data.hashrate) == 0.0 and data.pools == []
    assert all(p["url"] == "" for p in (await miner.web.get_miner_conf())["pools"])


async def test_sleep_survives_a_power_cycle(emu: EmulatorProcess) -> None:
    miner = await get_miner(POWER)
    assert await miner.stop_mining() is True
    emu.wait_state(POWER, "sleeping", timeout=15)
    view = emu.power(POWER, on=False)
    assert view["state"] == "off" and view["process"] == "off"
    # off the network: nothing answers (the connect, or the request, times out)
    with pytest.raises((httpx.ConnectError, httpx.TimeoutException)):
        async with httpx.AsyncClient() as client:
            await client.get(f"http://{POWER}/", timeout=2)
    assert emu.power(POWER, on=True)["state"] == "booting"
    running(emu, POWER)
    await asyncio.sleep(MODELS["S19j Pro"].boot_s * SCALE * 1.5)  # > a boot to mining
    view = emu.miner(POWER)
    assert view["state"] == "sleeping" and view["work_mode"] == 1  # came back asleep
    assert (await miner.get_data()).is_mining is False
    assert await miner.resume_mining() is True
    emu.wait_state(POWER, "mining", timeout=15)
    emu.power(POWER, on=False)
    emu.power(POWER, on=True)
    assert emu.wait_state(POWER, "mining", timeout=15)["work_mode"] == 0  # and awake, awake
    with pytest.raises(Exception, match="'on' must be true or false"):
        emu._call("POST", f"/miners/{POWER}/power", {"on": "yes"})



async def test_silent_reboot_is_silent_for_the_boot_then_back_as_it_was(
        emu: EmulatorProcess) -> None:
    miner = await get_miner(REBOOT)
    view = emu.set_fault(REBOOT, "silent_reboot")
    assert view["process"] == "restarting" and view["state"] == "booting"
    assert ("reboot", "firmware") in [(c[1], c[2]) for c in view["changes"]]
    assert await rpc(REBOOT, "version") == b""  # nothing answers...
    with pytest.raises(httpx.HTTPError):
        async with httpx.AsyncClient() as client:  # ...not even the web UI
            await client.get(f"http://{REBOOT}/", timeout=2)
    running(emu, REBOOT, timeout=BOARD_BOOT_S * SCALE + 10)
    assert (await miner.rpc.summary())["SUMMARY"][0]["Elapsed"] < 60
    assert emu.wait_state(REBOOT, "mining", timeout=15)["fault"] == "silent_reboot"
    emu.set_fault(REBOOT, "none")


async def test_lie_fault_acknowledges_and_changes_nothing(emu: EmulatorProcess) -> None:
    miner = await get_miner(LIE)
    emu.set_fault(LIE, "lie")
    try:
        assert emu.miner(LIE)["obeys"] is False
        assert await miner.stop_mining() is True
        await asyncio.sleep((CGI_S + RESTART_S) * SCALE * 2)
        view = emu.miner(LIE)
        assert view["state"] == "mining" and view["process"] == "running"
        assert view["work_mode"] == 0 and client_actions(view) == []
        assert (await miner.get_data()).is_mining is True
    finally:
        emu.set_fault(LIE, "none")


async def test_slow_write_times_pyasic_out_and_still_lands(emu: EmulatorProcess) -> None:
    """pyasic posts with its api_function_timeout (5 s in 0.79) and returns True whatever
    happened; the real CGI can take longer (asic-rs#249)."""
    miner = await get_miner(SLOW)
    emu.set_fault(SLOW, "slow_write", delay_s=7.0)
    try:
        start = time.monotonic()
        assert await miner.stop_mining() is True  # gave up after 5 s: no answer seen
        assert time.monotonic() - start < 6.5
        assert emu.miner(SLOW)["state"] == "mining"  # not yet...
        emu.wait_state(SLOW, "sleeping", timeout=15)  # ...but the write landed
    finally:
        emu.set_fault(SLOW, "none")
    assert await miner.resume_mining() is True
    emu.wait_state(SLOW, "mining", timeout=15)


async def test_api_groups_and_joined_commands(emu: EmulatorProcess) -> None:
    for ip in (OLD, NEW):
        for command in ("config", "devdetails"):
            status = json.loads((await rpc(ip, command))[:-1])["STATUS"][0]
            assert (status["STATUS"], status["Code"]) == ("E", 45), (ip, command)
    refused = json.loads((await rpc(OLD, "summary+stats"))[:-1])
    assert refused["STATUS"][0]["STATUS"] == "E"  # Dec-2022 firmware refuses joined commands
    joined = json.loads((await rpc(NEW, "summary+stats"))[:-1])
    assert set(joined) == {"summary", "stats", "id"}
    old = await get_miner(OLD)
    split = await old.rpc.multicommand("summary", "stats")  # pyasic falls back to one by one
    assert split["summary"][0]["SUMMARY"] and split["stats"][0]["STATS"]


async def test_firmware_versions_are_coherent(emu: EmulatorProcess) -> None:
    for ip, gen in ((OLD, "2022-12"), (NEW, "2025-10"), (LIAR, "2025-02")):
        miner = await get_miner(ip)
        view = emu.miner(ip)
        info = await miner.web.get_system_info()
        assert view["firmware_version"] == info["system_filesystem_version"]
        assert view["firmware_generation"] == gen
        assert await miner.get_fw_ver() == GENERATIONS[gen].compile_time
    assert emu.miner(NEW)["firmware_version"] == "FR-1.12(251009-S21)"


def test_count_fleets_run_every_generation() -> None:
    plan = plan_count(8, "127.158.2.1")
    gens = [m.firmware_version for m in plan.miners if m.model in ("S19", "S19j Pro", "S21")]
    assert sorted(gens) == sorted(GENERATIONS)
