"""The emulated LuxOS behaves like LuxOS in the field (issue 13), seen through unmodified pyasic.

Conformance: replies of a real S19k Pro on LUXminer 2025.4.8 (``captures/luxminer/v1``) and the
emulator's replies for an S19k Pro of the same nameplate have the same keys and JSON types,
and pyasic 0.79's LuxOS parsers make the same kind of thing of both (the 25-step profile
ladder is the captured one, watt for watt).

Field behaviour, each driven through pyasic and observed from the client side and in the
emulator's truth (GET /miners): ATM moves a profile set by hand back toward the default on a
cool machine (and down on a hot one); one session at a time; curtailment survives a reboot and
a power cut; power is an estimate; a wakeup ramps like a boot.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pyasic
import pytest
from pyasic.config import MinerConfig
from pyasic.errors import APIError
from pyasic.miners.backends.luxminer import LUXMiner
from pyasic.rpc.base import BaseMinerRPCAPI
from pyasic.rpc.luxminer import LUXMinerRPCAPI

from curtaild.core.models import MODELS, ModelSpec
from curtaild.emulator.families.luxos import LUXMINER_VERSION, LuxosFamily, profiles_for
from curtaild.emulator.physics import EmulatedMiner
from tests.emulator.loopback_family import FamilyServer
from tests.support.conformance import diff, shape
from tests.support.driving import truth as view
from tests.support.emulator import EmulatorProcess

CAPTURES = Path(__file__).resolve().parent / "captures" / "luxminer" / "v1"
COMMANDS = ("version", "summary", "stats", "devs", "pools", "power", "fans", "temps", "config",
            "profiles")
#: The captured machine's nameplate: 121.8 TH/s at 2794 W (its "default" profile).
S19K_PRO = ModelSpec("AntMiner", "S19k Pro", "luxos", 121.8, 2794.0, 40.0, 784.0, 4195.0,
                     chips_per_chain=77, boot_s=60.0)


def capture(name: str) -> dict:
    return json.loads((CAPTURES / f"{name}.json").read_text())


def emulated(family: LuxosFamily, miner: EmulatedMiner, command: str) -> dict:
    raw = family.handle_rpc(miner, json.dumps({"command": command}).encode())
    return BaseMinerRPCAPI._load_api_data(raw)


@pytest.fixture
def s19k() -> tuple[LuxosFamily, EmulatedMiner]:
    """An emulated S19k Pro on the captured machine's profile (290MHz, step -12)."""
    family = LuxosFamily()
    miner = EmulatedMiner(ip="127.159.200.1", spec=S19K_PRO, time_scale=0.01)
    miner.firmware_state["luxos.atm"] = False  # keep the profile where the capture has it
    miner.power_limit_w = 1188.0
    return family, miner


# --------------------------------------------------------------------------- conformance
@pytest.mark.parametrize("command", COMMANDS)
def test_replies_have_the_captured_shape(s19k, command: str) -> None:
    family, miner = s19k
    real, ours = capture(command), emulated(family, miner, command)
    assert diff(shape(real), shape(ours)) == []
    assert ours["STATUS"][0]["Description"] == real["STATUS"][0]["Description"]
    assert ours["STATUS"][0]["Code"] == real["STATUS"][0]["Code"]


def test_the_profile_ladder_is_the_captured_one(s19k) -> None:
    """25 profiles, 16 below the default and 8 above, 25 MHz apart: watts, frequency, voltage
    and step of the captured S19k Pro, profile for profile."""
    family, miner = s19k
    real = capture("profiles")["PROFILES"]
    ours = emulated(family, miner, "profiles")["PROFILES"]
    assert len(ours) == len(real) == 25
    keys = ("Profile Name", "Step", "Frequency", "Voltage", "Watts")
    assert [{k: p[k] for k in keys} for p in ours] == [{k: p[k] for k in keys} for p in real]
    assert [p["Watts"] for p in ours][0::24] == [784, 4195]


async def _parsed(miner: LUXMiner, replies: dict[str, dict]) -> dict:
    """What pyasic's LuxOS parsers make of one set of replies (each handed in, no network)."""
    boards = await miner._get_hashboards(rpc_stats=replies["stats"])
    config = MinerConfig.from_luxos(rpc_tempctrl={}, rpc_fans=replies["fans"],
                                    rpc_pools=replies["pools"], rpc_groups={"GROUPS": []},
                                    rpc_config=replies["config"],
                                    rpc_profiles=replies["profiles"])
    return {
        "boards": [(b.slot, b.chips, b.missing, type(b.chip_temp), type(b.temp),
                    type(float(b.hashrate))) for b in boards],
        "wattage": await miner._get_wattage(rpc_power=replies["power"]),
        "limit": await miner._get_wattage_limit(rpc_config=replies["config"],
                                                rpc_profiles=replies["profiles"]),
        "fans": [type(f.speed) for f in await miner._get_fans(rpc_fans=replies["fans"])],
        "expected_ths": float(await miner._get_expected_hashrate(rpc_stats=replies["stats"])),
        "uptime": await miner._get_uptime(rpc_stats=replies["stats"]),
        "fw_ver": await miner._get_fw_ver(rpc_version=replies["version"]),
        "presets": [p.power for p in config.mining_mode.available_presets],
        "active": config.mining_mode.active_preset.name,
        "pools": [(p.url is not None, p.alive) for p in
                  await miner._get_pools(rpc_pools=replies["pools"])][:1],
    }


async def test_pyasic_parses_captures_and_emulator_alike(s19k) -> None:
    family, machine = s19k
    async with FamilyServer(family, machine):
        client = await pyasic.get_miner(machine.ip)
    assert type(client).__name__ == "LUXMinerS19kPro"
    real = await _parsed(client, {c: capture(c) for c in COMMANDS})
    ours = await _parsed(client, {c: emulated(family, machine, c) for c in COMMANDS})
    truth = machine.read()
    assert real["boards"] == ours["boards"] and len(ours["boards"]) == 3
    assert all(b[1] == 77 and b[2] is False for b in ours["boards"])
    assert type(real["wattage"]) is type(ours["wattage"]) is int
    assert abs(ours["wattage"] - truth.power_w) <= 0.03 * truth.power_w  # the estimate
    assert real["limit"] == ours["limit"] == 1188  # "290MHz", the captured machine's profile
    assert real["active"] == ours["active"] == "290MHz"
    assert real["presets"] == ours["presets"] and len(ours["presets"]) == 25
    assert real["fans"] == ours["fans"] and len(ours["fans"]) == 4
    assert ours["expected_ths"] == pytest.approx(
        next(p.hashrate_ths for p in profiles_for(S19K_PRO) if p.name == "290MHz"), rel=0.01)
    assert real["fw_ver"] == ours["fw_ver"] == "2025.4.8.220305"
    assert isinstance(real["uptime"], int) and isinstance(ours["uptime"], int)
    assert real["pools"] == ours["pools"] == [(True, True)]


# ------------------------------------------------------------------ the running emulator
TIME_SCALE = 0.002  # ATM: PostRampMinutes 15 -> 1.8 s, one step per 0.12 s; a boot 0.12 s
COOL, HOT, NO_ATM, SESSIONS, REBOOT, POWER = (f"127.159.1.{i}" for i in range(1, 7))
FLEET = f"""
[[miner]]
model = "S19 XP"
ip = "{COOL}"
[[miner]]
model = "S19 XP"
ip = "{HOT}"
ambient_c = 50.0
[[miner]]
model = "S19 XP"
ip = "{NO_ATM}"
atm = false
[[miner]]
model = "S19j Pro LuxOS"
ip = "{SESSIONS}"
[[miner]]
model = "S19 XP"
ip = "{REBOOT}"
[[miner]]
model = "S19 XP"
ip = "{POWER}"
"""
XP_LADDER = profiles_for(MODELS["S19 XP"])


@pytest.fixture(scope="module")
def emu():
    with EmulatorProcess(fleet_toml=FLEET, first_ip=COOL, time_scale=TIME_SCALE) as proc:
        yield proc


async def wait_view(emu: EmulatorProcess, ip: str, what: str, predicate,
                    within_s: float = 20.0) -> dict:
    return await asyncio.to_thread(emu.wait_view, ip, what, predicate, within_s)


@pytest.mark.integration
async def test_atm_moves_a_hand_set_profile_back_to_default_when_cool(emu) -> None:
    client = await pyasic.get_miner(COOL)
    assert (await view(emu, COOL))["atm"] is True  # as LuxOS ships
    assert await client.set_power_limit(2000) is True
    want = max((p for p in XP_LADDER if p.watts <= 2000), key=lambda p: p.watts)
    v = await view(emu, COOL)
    assert v["profile"] == want.name and v["power_limit_w"] == want.watts
    assert await client.atm_enabled() is True  # pyasic switched ATM back on after profileset
    # After PostRampMinutes, ATM steps the cool machine back up, one profile per interval
    v = await wait_view(emu, COOL, "back on the default profile",
                        lambda m: m["profile"] == "default")
    assert v["atm_steps"] >= -want.step and v["power_limit_w"] == MODELS["S19 XP"].power_w
    steps = [c for c in v["changes"] if c[1] == "limit" and c[2] == "firmware"]
    assert len(steps) >= 1  # ATM's own changes, never the client's
    data = await client.get_data()
    assert data.wattage_limit == 3010  # what pyasic reads: the limit has undone itself
    config = (await client.rpc.config())["CONFIG"][0]
    assert config["Profile"] == "default" and config["IsAtmEnabled"] is True


@pytest.mark.integration
async def test_atm_off_keeps_the_profile_and_a_hot_machine_steps_down(emu) -> None:
    client = await pyasic.get_miner(NO_ATM)
    assert await client.atm_enabled() is False
    assert await client.set_power_limit(2000) is True  # pyasic leaves ATM as it found it
    set_to = (await view(emu, NO_ATM))["profile"]
    hot = await wait_view(emu, HOT, "stepped down by ATM", lambda m: m["profile_step"] < 0)
    assert hot["atm"] is True and hot["temp_c"] > 70
    await asyncio.sleep(60 * 15 * TIME_SCALE + 1.0)  # past PostRampMinutes and a few steps
    v = await view(emu, NO_ATM)
    assert v["profile"] == set_to and v["atm_steps"] == 0 and v["atm"] is False


@pytest.mark.integration
async def test_one_session_at_a_time(emu) -> None:
    operator, other = LUXMinerRPCAPI(SESSIONS), LUXMinerRPCAPI(SESSIONS)
    sid = (await operator.logon())["SESSION"][0]["SessionID"]
    assert (await view(emu, SESSIONS))["session_active"] is True
    with pytest.raises(APIError, match="Another session is active"):
        await other.logon()
    # pyasic asks `session` first and takes the live one (sessions coordinate, they do not
    # authenticate), so its write goes through in the operator's session...
    client = await pyasic.get_miner(SESSIONS)
    assert await client.fault_light_on() is True
    assert (await view(emu, SESSIONS))["led_on"] is True
    # ...which dies when its holder logs off: pyasic keeps the dead id and its next write fails
    await operator.send_command("logoff", sid)
    assert (await view(emu, SESSIONS))["session_active"] is False
    assert await client.fault_light_off() is False
    assert (await view(emu, SESSIONS))["led_on"] is True
    client.rpc.session_token = None
    assert await client.fault_light_off() is True


@pytest.mark.integration
async def test_curtailment_survives_a_reboot_and_the_wakeup_ramps(emu) -> None:
    client = await pyasic.get_miner(REBOOT)
    assert await client.stop_mining() is True
    assert (await view(emu, REBOOT))["curtail_mode"] == "Sleep"
    assert await client.reboot() is True  # rebootdevice
    v = await view(emu, REBOOT)
    assert v["network"] != "up" and v["session_active"] is False  # the board is down
    v = await wait_view(emu, REBOOT, "back from its reboot", lambda m: m["network"] == "up")
    assert v["state"] == "sleeping" and v["curtail_mode"] == "Sleep"  # stored curtailment
    assert float((await client.get_data()).hashrate) == 0.0
    power = (await client.rpc.power())["POWER"][0]
    assert power == {"PSU": False, "Watts": 0}  # an estimate of boards that are off
    client.rpc.session_token = None  # luxminer restarted: the old session is gone
    assert await client.resume_mining() is True
    # the boards power on and ramp, like a boot (boot_s, then RAMP_S to the profile's power)
    assert all(d["IsRamping"] for d in (await client.rpc.devs())["DEVS"])
    v = await wait_view(emu, REBOOT, "ramped to full hashrate",
                        lambda m: m["hashrate_ths"] > 0.95 * 141.0)
    watts = (await client.rpc.power())["POWER"][0]["Watts"]
    assert abs(watts - 3010) < 0.05 * 3010 and v["curtail_mode"] == "None"


@pytest.mark.integration
async def test_curtailment_survives_a_power_cut(emu) -> None:
    client = await pyasic.get_miner(POWER)
    assert await client.stop_mining() is True
    off = await asyncio.to_thread(emu.power, POWER, False)
    assert off["state"] == "off" and off["network"] == "blackhole"
    on = await asyncio.to_thread(emu.power, POWER, True)
    assert on["network"] != "up"  # booting: silent
    v = await wait_view(emu, POWER, "booted", lambda m: m["network"] == "up")
    v = await wait_view(emu, POWER, "settled", lambda m: m["state"] != "booting")
    assert v["state"] == "sleeping" and v["curtail_mode"] == "Sleep"
    config = (await client.rpc.config())["CONFIG"][0]
    assert config["CurtailMode"] == "Sleep" and config["IsPowerSupplyOn"] is False
    # the operator's own wake at the machine clears the stored curtailment
    await asyncio.to_thread(emu.action, POWER, "wake")
    await asyncio.to_thread(emu.power, POWER, False)
    await asyncio.to_thread(emu.power, POWER, True)
    v = await wait_view(emu, POWER, "booted into mining", lambda m: m["state"] == "mining")
    assert v["curtail_mode"] == "None"
    assert (await view(emu, POWER))["firmware_version"] == LUXMINER_VERSION
