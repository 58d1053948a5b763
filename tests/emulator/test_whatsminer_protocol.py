"""Whatsminer (btminer API v2) family driven by unmodified pyasic over loopback sockets.

Every assertion compares what pyasic makes of the firmware's replies with the physical truth
(``EmulatedMiner.read()``), or checks that a pyasic command changed the physics.
"""

from __future__ import annotations

import asyncio
import json

import pyasic
import pytest
from pyasic.errors import APIError
from pyasic.miners.backends.btminer import BTMinerV2
from pyasic.rpc.btminer import BTMinerRPCAPI, TokenData, create_privileged_cmd

from curtaild.core.models import MODELS
from curtaild.emulator.families.whatsminer import BTMINER_RESTART_S, WhatsminerFamily
from curtaild.emulator.physics import EmulatedMiner
from tests.emulator.loopback_family import FamilyServer, wait_state

TIME_SCALE = 0.001  # a 120 s boot takes 0.12 s
#: The admin password the site set: the write API works only once it is changed.
PW = "site-wm-9Qd"


def make_miner(ip: str, model: str = "M50") -> EmulatedMiner:
    return EmulatedMiner(ip=ip, spec=MODELS[model], time_scale=TIME_SCALE, password=PW)


def site_rpc(ip: str) -> BTMinerRPCAPI:
    api = BTMinerRPCAPI(ip)
    api.pwd = PW
    return api


@pytest.fixture
async def served(request):
    """(pyasic miner, physics) for a Whatsminer on the address given by the test's param."""
    ip, model = request.param
    miner = make_miner(ip, model)
    async with FamilyServer(WhatsminerFamily(), miner):
        client = await pyasic.get_miner(ip)
        assert client is not None, "pyasic did not detect the emulated Whatsminer"
        client.rpc.pwd = PW
        yield client, miner


def close(measured: float, truth: float, rel: float) -> bool:
    return abs(measured - truth) <= rel * max(abs(truth), 1e-9)


@pytest.mark.parametrize(("ip", "model", "cls"), [
    ("127.11.1.1", "M50", "BTMinerM50VH50"),
    ("127.11.1.2", "M30S", "BTMinerM30SV10"),
])
async def test_pyasic_detects_api_v2_backend(ip: str, model: str, cls: str) -> None:
    miner = make_miner(ip, model)
    async with FamilyServer(WhatsminerFamily(), miner):
        client = await pyasic.get_miner(ip)
    assert type(client).__name__ == cls
    assert isinstance(client, BTMinerV2)
    assert client.expected_chips == miner.spec.chips_per_chain


@pytest.mark.parametrize("served", [("127.11.1.10", "M50")], indirect=True)
async def test_get_data_reports_physical_truth(served) -> None:
    client, miner = served
    data = await client.get_data()
    truth = miner.read()
    assert close(float(data.hashrate), truth.hashrate_ths, 0.06)
    assert close(data.wattage, truth.power_w, 0.03)
    assert data.wattage_limit == int(miner.spec.power_w)
    assert data.is_mining is True
    assert data.mac == miner.mac.upper()
    assert data.serial_number == miner.serial
    assert data.hostname == miner.hostname
    assert data.fw_ver == "20230911.12.Rel"
    assert data.uptime is not None and close(data.uptime, truth.uptime_s, 0.01)
    assert data.fault_light is False
    assert len(data.hashboards) == miner.spec.chains
    for board, chip_t, board_t in zip(data.hashboards, truth.chip_temp_c, truth.board_temp_c,
                                      strict=True):
        assert board.chips == miner.spec.chips_per_chain
        assert abs(board.chip_temp - chip_t) <= 3
        assert abs(board.temp - board_t) <= 3
        assert close(float(board.hashrate), truth.hashrate_ths / miner.spec.chains, 0.08)
    assert [f.speed for f in data.fans] and all(abs(f.speed - truth.fan_rpm[0]) < 300
                                                for f in data.fans)
    assert data.pools[0].url is not None
    assert str(data.pools[0].url).startswith(miner.pools[0]["url"].split(":")[0])
    assert data.pools[0].user == miner.pools[0]["user"]


@pytest.mark.parametrize("served", [("127.11.1.20", "M50")], indirect=True)
async def test_stop_and_resume_mining_change_physics(served) -> None:
    client, miner = served
    assert await client.stop_mining() is True
    assert miner.read().state == "sleeping"
    data = await client.get_data()
    assert data.is_mining is False
    # MHS 1m, pyasic's hashrate, lags the sleep by up to a minute (60 ms at this scale)
    assert float(data.hashrate) > 0.5 * miner.spec.hashrate_ths
    await asyncio.sleep(60 * TIME_SCALE + 0.01)
    data = await client.get_data()
    assert float(data.hashrate) == 0.0
    assert close(data.wattage, miner.spec.idle_power_w, 0.1)

    assert await client.resume_mining() is True
    assert miner.read().state == "booting"
    assert (await client.get_data()).is_mining is True
    await wait_state(miner, "mining")
    await asyncio.sleep(60 * TIME_SCALE + 0.01)  # and MHS 1m catches up
    data = await client.get_data()
    assert close(float(data.hashrate), miner.spec.hashrate_ths, 0.06)


@pytest.mark.parametrize("served", [("127.11.1.30", "M50")], indirect=True)
async def test_set_power_limit_changes_limit_and_measured_power(served) -> None:
    client, miner = served
    assert await client.set_power_limit(2500) is True
    assert miner.power_limit_w == 2500
    await wait_state(miner, "mining")  # btminer restarts to apply the limit
    truth = miner.read()
    assert close(truth.power_w, 2500, 0.03)
    data = await client.get_data()
    assert data.wattage_limit == 2500
    assert close(data.wattage, 2500, 0.03)
    assert float(data.hashrate) < 0.9 * miner.spec.hashrate_ths
    cfg = await client.get_config()
    assert cfg.mining_mode.mode == "power_tuning" and cfg.mining_mode.power == 2500


@pytest.mark.parametrize("served", [("127.11.1.40", "M50")], indirect=True)
async def test_fault_light_and_reboot(served) -> None:
    client, miner = served
    assert await client.fault_light_on() is True
    assert miner.led_on is True
    assert (await client.get_data()).fault_light is True
    assert await client.fault_light_off() is True
    assert miner.led_on is False
    assert (await client.get_data()).fault_light is False

    assert await client.reboot() is True
    truth = miner.read()
    assert truth.state == "booting" and truth.uptime_s == 0.0
    await wait_state(miner, "mining")


@pytest.mark.parametrize("served", [("127.11.1.50", "M30S")], indirect=True)
async def test_power_modes_and_pool_update(served) -> None:
    client, miner = served
    await client.rpc.set_low_power()
    assert miner.mode == "low"
    await wait_state(miner, "mining")
    assert close(miner.read().power_w, 0.75 * miner.spec.power_w, 0.03)
    summary = await client.rpc.summary()
    assert summary["SUMMARY"][0]["Power Mode"] == "Low"
    await client.rpc.set_normal_power()
    assert miner.mode == "normal"
    await asyncio.sleep(BTMINER_RESTART_S * TIME_SCALE + 0.01)  # btminer restarts: silent
    await client.rpc.update_pools("stratum+tcp://other.example:700", "acct.w1", "x")
    assert miner.pools == [{"url": "stratum+tcp://other.example:700", "user": "acct.w1",
                            "pass": "x"}]


@pytest.mark.parametrize("served", [("127.11.1.60", "M50")], indirect=True)
async def test_ignore_sleep_fault_is_acknowledged_but_keeps_hashing(served) -> None:
    client, miner = served
    miner.fault.kind = "ignore_sleep"
    assert await client.stop_mining() is True
    assert miner.read().state == "mining"
    data = await client.get_data()
    assert data.is_mining is False  # the firmware believes it is off ...
    assert float(data.hashrate) > 0.5 * miner.spec.hashrate_ths  # ... the meters disagree
    # Anything physical (here a reboot) brings the report back to the truth.
    miner.fault.kind = "none"
    miner.reboot()
    await wait_state(miner, "mining")
    assert (await client.get_data()).is_mining is True


async def test_privileged_access_errors_are_the_firmware_ones() -> None:
    ip = "127.11.1.70"
    miner = make_miner(ip)
    async with FamilyServer(WhatsminerFamily(), miner):
        # A privileged command sent in clear is refused.
        api = BTMinerRPCAPI(ip)
        with pytest.raises(APIError, match="Permission denied"):
            await api.send_command("power_off")
        # A wrong admin password (the factory one included) cannot even be decrypted.
        for password in ("not-admin", "admin"):
            wrong = BTMinerRPCAPI(ip)
            wrong.pwd = password
            with pytest.raises(APIError, match="invalid JSON message"):
                await wrong.power_off()
        # The right key with a token the miner never issued.
        token = await site_rpc(ip).get_token()
        forged = TokenData(host_sign="AAAAAAAAAAAAAAAAAAAAAA",
                           host_passwd_md5=token.host_passwd_md5)
        raw = await api._send_bytes(create_privileged_cmd(forged, {"cmd": "power_off"}))
        assert json.loads(raw)["Msg"] == "check token error"
        assert miner.read().state == "mining"
        # And the genuine handshake works.
        reply = await site_rpc(ip).power_off()
        assert reply["Msg"] == "API command OK"
        assert miner.read().state == "sleeping"


async def test_joined_reads_and_unknown_commands() -> None:
    ip = "127.11.1.80"
    miner = make_miner(ip)
    async with FamilyServer(WhatsminerFamily(), miner):
        api = BTMinerRPCAPI(ip)
        data = await api.multicommand("summary", "devs", "pools", "status", "get_version")
        assert {"summary", "devs", "pools", "status", "get_version"} <= set(data)
        assert len(data["devs"][0]["DEVS"]) == miner.spec.chains
        assert data["status"][0]["Msg"]["mineroff"] == "false"
        with pytest.raises(APIError, match="invalid cmd"):
            await api.send_command("no_such_command")
