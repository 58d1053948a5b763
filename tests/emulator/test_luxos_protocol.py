"""LuxOS family driven by unmodified pyasic over loopback sockets (RPC 4028 + web 80).

Assertions compare what pyasic makes of the replies with the physics (``EmulatedMiner.read()``)
or check that a pyasic command changed the physics.
"""

from __future__ import annotations

import httpx
import pyasic
import pytest
from pyasic.errors import APIError
from pyasic.miners.backends.luxminer import LUXMiner
from pyasic.miners.factory import MinerFactory, MinerTypes
from pyasic.rpc.luxminer import LUXMinerRPCAPI

from curtaild.core.models import MODELS
from curtaild.emulator.families.luxos import SESSION_TTL_S, LuxosFamily, profiles_for
from curtaild.emulator.physics import EmulatedMiner
from tests.emulator.loopback_family import FamilyServer, wait_state

TIME_SCALE = 0.001  # a 60 s boot takes 0.06 s


def make_miner(ip: str, model: str = "S19 XP") -> EmulatedMiner:
    return EmulatedMiner(ip=ip, spec=MODELS[model], time_scale=TIME_SCALE)


def close(measured: float, truth: float, rel: float) -> bool:
    return abs(measured - truth) <= rel * max(abs(truth), 1e-9)


@pytest.fixture
async def served(request):
    """(pyasic miner, physics) for a LuxOS machine at the address given by the test's param."""
    ip, model = request.param
    miner = make_miner(ip, model)
    async with FamilyServer(LuxosFamily(), miner):
        client = await pyasic.get_miner(ip)
        assert client is not None, "pyasic did not detect the emulated LuxOS machine"
        yield client, miner


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(("ip", "model", "cls"), [
    ("127.11.2.1", "S19 XP", "LUXMinerS19XP"),
    ("127.11.2.2", "S19j Pro LuxOS", "LUXMinerS19jPro"),
])
async def test_pyasic_detects_luxos_by_rpc_and_web(ip: str, model: str, cls: str) -> None:
    miner = make_miner(ip, model)
    async with FamilyServer(LuxosFamily(), miner):
        client = await pyasic.get_miner(ip)
        assert type(client).__name__ == cls
        assert isinstance(client, LUXMiner)
        factory = MinerFactory()
        assert await factory._get_miner_web(ip) == MinerTypes.LUX_OS
        assert await factory._get_miner_socket(ip) == MinerTypes.LUX_OS
        async with httpx.AsyncClient() as http:
            assert "Luxor Firmware" in (await http.get(f"http://{ip}/")).text
            assert (await http.get(f"http://{ip}/cgi-bin/nothing")).status_code == 404


@pytest.mark.parametrize("served", [("127.11.2.10", "S19 XP")], indirect=True)
async def test_get_data_reports_physical_truth(served) -> None:
    client, miner = served
    data = await client.get_data()
    truth = miner.read()
    # pyasic's LuxOS _get_hashrate returns before parsing; the total is the boards' sum.
    assert close(float(data.hashrate), truth.hashrate_ths, 0.06)
    assert close(data.wattage, truth.power_w, 0.03)
    assert data.wattage_limit == round(miner.spec.power_w)  # the "default" profile
    assert data.fw_ver == "2025.4.8.220305" and data.api_ver == "3.7"  # the captured firmware
    assert data.uptime is not None and close(data.uptime, truth.uptime_s, 0.01)
    assert data.fault_light is False
    assert data.expected_hashrate is not None
    assert close(float(data.expected_hashrate), miner.spec.hashrate_ths, 0.001)
    assert len(data.hashboards) == miner.spec.chains
    for board, chip_t, board_t in zip(data.hashboards, truth.chip_temp_c, truth.board_temp_c,
                                      strict=True):
        assert board.chips == miner.spec.chips_per_chain
        assert abs(board.chip_temp - chip_t) <= 3
        assert abs(board.temp - board_t) <= 3
    assert len(data.fans) == miner.spec.fans
    assert all(abs(f.speed - truth.fan_rpm[0]) < 300 for f in data.fans)
    assert data.pools[0].user == miner.pools[0]["user"]


@pytest.mark.parametrize("served", [("127.11.2.20", "S19 XP")], indirect=True)
async def test_curtail_sleep_and_wakeup_change_physics(served) -> None:
    client, miner = served
    assert await client.stop_mining() is True
    assert miner.read().state == "sleeping"
    data = await client.get_data()
    assert float(data.hashrate) == 0.0
    # LuxOS estimates the hash boards' power from the profile (PSU false): 0 with them off
    assert data.wattage == 0

    assert await client.resume_mining() is True
    assert miner.read().state == "booting"
    await wait_state(miner, "mining")
    data = await client.get_data()
    assert close(float(data.hashrate), miner.spec.hashrate_ths, 0.06)


@pytest.mark.parametrize("served", [("127.11.2.25", "S19 XP")], indirect=True)
async def test_ignore_sleep_fault_is_acknowledged_but_keeps_hashing(served) -> None:
    client, miner = served
    miner.fault.kind = "ignore_sleep"
    assert await client.stop_mining() is True
    assert miner.read().state == "mining"
    config = await client.rpc.config()
    assert config["CONFIG"][0]["CurtailMode"] == "Sleep"  # luxminer believes it curtailed
    assert float((await client.get_data()).hashrate) > 0.5 * miner.spec.hashrate_ths
    assert await client.resume_mining() is True
    assert (await client.rpc.config())["CONFIG"][0]["CurtailMode"] == "None"


@pytest.mark.parametrize("served", [("127.11.2.30", "S19 XP")], indirect=True)
async def test_set_power_limit_selects_profile_and_power(served) -> None:
    client, miner = served
    ladder = profiles_for(miner.spec)
    expected = max((p for p in ladder if p.watts <= 2500), key=lambda p: p.watts)
    assert await client.set_power_limit(2500) is True
    assert miner.power_limit_w == expected.watts
    assert close(miner.read().power_w, expected.watts, 0.03)
    assert await client.atm_enabled() is True  # pyasic switched ATM back on
    data = await client.get_data()
    assert data.wattage_limit == expected.watts
    assert close(data.wattage, expected.watts, 0.03)
    assert close(float(data.hashrate), expected.hashrate_ths, 0.06)
    # Below the lowest profile there is nothing to select: refused, physics unchanged.
    assert await client.set_power_limit(ladder[0].watts - 1) is False
    assert miner.power_limit_w == expected.watts


@pytest.mark.parametrize("served", [("127.11.2.40", "S19j Pro LuxOS")], indirect=True)
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
    # luxminer restarted: pyasic's cached session is gone, a fresh one works.
    assert await client.stop_mining() is False
    assert miner.read().state == "mining"
    client.rpc.session_token = None
    assert await client.stop_mining() is True
    assert miner.read().state == "sleeping"


async def test_sessions_are_exclusive_checked_and_expire() -> None:
    ip = "127.11.2.50"
    miner = make_miner(ip)
    clock = FakeClock()
    async with FamilyServer(LuxosFamily(clock=clock), miner):
        api = LUXMinerRPCAPI(ip)
        assert (await api.session())["SESSION"][0]["SessionID"] == ""
        sid = (await api.logon())["SESSION"][0]["SessionID"]
        assert sid
        assert (await api.session())["SESSION"][0]["SessionID"] == sid
        with pytest.raises(APIError, match="Another session is active"):
            await api.logon()
        with pytest.raises(APIError, match="Invalid session ID"):
            await api.send_command("curtail", "WRONGSID", "sleep")
        assert miner.read().state == "mining"
        # Used within the minute: refreshed. Idle for over a minute: gone.
        clock.t += SESSION_TTL_S - 1
        await api.send_command("curtail", sid, "sleep")
        assert miner.read().state == "sleeping"
        clock.t += SESSION_TTL_S - 1
        await api.send_command("curtail", sid, "wakeup")
        clock.t += SESSION_TTL_S + 1
        assert (await api.session())["SESSION"][0]["SessionID"] == ""
        with pytest.raises(APIError, match="Invalid session ID"):
            await api.send_command("curtail", sid, "sleep")
        assert await api.auth()  # pyasic's own auth: session() is "", so logon()


async def test_profileset_needs_atm_off_and_joined_reads() -> None:
    ip = "127.11.2.60"
    miner = make_miner(ip)
    async with FamilyServer(LuxosFamily(), miner):
        api = LUXMinerRPCAPI(ip)
        with pytest.raises(APIError, match="ATM"):
            await api.profileset("420MHz")
        assert miner.power_limit_w is None
        await api.atmset(enabled=False)
        assert (await api.atm())["ATM"][0]["Enabled"] is False
        reply = await api.profileset("420MHz")
        assert reply["PROFILE"][0]["Profile"] == "420MHz"
        assert miner.power_limit_w == next(p.watts for p in profiles_for(miner.spec)
                                           if p.name == "420MHz")
        with pytest.raises(APIError, match="Profile not found"):
            await api.profileset("9999MHz")
        joined = await api.multicommand("config", "power", "profiles", "stats")
        assert joined["config"][0]["CONFIG"][0]["Profile"] == "420MHz"
        assert joined["power"][0]["POWER"][0]["Watts"] > 0
        with pytest.raises(APIError, match="Invalid command"):
            await api.send_command("no_such_command")
