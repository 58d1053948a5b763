"""Whatsminer API v2 behaving like the firmware in the field, through unmodified pyasic 0.79.

Each behaviour of firmware-behaviour.md "Whatsminer" that API v2 machines have is driven from
the client side and observed both there and in the emulator's truth (``GET /miners``): the
write API switch, tokens per client IP (32 per IP, 16 IPs), power_off on legacy firmware
(reads fail; pyasic's ``_is_mining`` relies on ``devdetails`` failing), the ramp after
power_on, a limit above the nameplate refused and an accepted one restarting btminer (silent)
unless fast boot, and ``MHS 1m`` lagging a change by up to a minute. The conformance tests
replay the replies captured from real machines (``shared/firmware-captures/whatsminer/v1``,
``v2``) and the emulator's through the same pyasic parsers and compare what they make of them.
"""

from __future__ import annotations

import asyncio
import json
import time

import pyasic
import pytest
from pyasic.errors import APIError
from pyasic.miners.backends.btminer import BTMinerV2
from pyasic.miners.whatsminer.btminer.M3X.M30S import BTMinerM30SV10
from pyasic.rpc.btminer import BTMinerRPCAPI

from curtaild.core.models import MODELS
from curtaild.emulator.families.whatsminer import (
    BTMINER_RESTART_S,
    HASH_WINDOW_S,
    LEGACY_API_VERSION,
    MAX_CLIENT_IPS,
    TOKEN_LIMIT,
    WRITE_DISABLED_MSG,
    WhatsminerFamily,
)
from curtaild.emulator.families.whatsminer_v3 import RAMP_S
from curtaild.emulator.fleet import FleetError, plan_fleet_text
from curtaild.emulator.physics import EmulatedMiner
from tests.support.conformance import whatsminer_capture as capture
from tests.support.driving import truth, wait_for
from tests.support.emulator import SITE_WHATSMINER_PASSWORD, EmulatorProcess

pytestmark = pytest.mark.integration

TIME_SCALE = 0.02  # btminer restart silent 0.6 s, boot 2.4 s, ramp 9.6 s, MHS 1m window 1.2 s
LEGACY_FW = "20220919.15.REL"
LEGACY, MODERN, NOWRITE, TOKENS, LIMIT, FAST, RAMP, LAG, CONF_OLD, CONF_NEW = (
    f"127.161.1.{i}" for i in range(1, 11))
#: The site's admin password on the machines this file writes to (their write API is on;
#: NOWRITE's operator switched it off again); CONF_* keep the factory one and are only read.
PW = SITE_WHATSMINER_PASSWORD
FLEET = f"""
[[miner]]
model = "M30S"
ip = "{LEGACY}"
password = "{PW}"
firmware_version = "{LEGACY_FW}"
[[miner]]
model = "M30S"
ip = "{MODERN}"
password = "{PW}"
[[miner]]
model = "M30S"
ip = "{NOWRITE}"
password = "{PW}"
write_api = false
[[miner]]
model = "M30S"
ip = "{TOKENS}"
password = "{PW}"
[[miner]]
model = "M50"
ip = "{LIMIT}"
password = "{PW}"
api = "v2"
[[miner]]
model = "M50"
ip = "{FAST}"
password = "{PW}"
api = "v2"
fast_boot = true
[[miner]]
model = "M30S"
ip = "{RAMP}"
password = "{PW}"
[[miner]]
model = "M30S"
ip = "{LAG}"
password = "{PW}"
[[miner]]
model = "M30S"
ip = "{CONF_OLD}"
firmware_version = "{LEGACY_FW}"
[[miner]]
model = "M30S"
ip = "{CONF_NEW}"
"""
#: client addresses the token test connects from (this test's block)
CLIENTS = [f"127.161.9.{i}" for i in range(1, MAX_CLIENT_IPS + 2)]


@pytest.fixture(scope="module")
def emu():
    with EmulatorProcess(fleet_toml=FLEET, first_ip=LEGACY, time_scale=TIME_SCALE) as proc:
        yield proc


async def site_miner(ip: str):
    """pyasic's miner object told the site's admin password (pyasic assumes the factory one)."""
    miner = await pyasic.get_miner(ip)
    miner.rpc.pwd = PW
    return miner


async def raw(ip: str, payload: dict, source: str | None = None) -> bytes:
    """One request on 4028, from ``source`` (a loopback address of this test) if given."""
    reader, writer = await asyncio.open_connection(
        ip, 4028, local_addr=(source, 0) if source else None)
    writer.write(json.dumps(payload).encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


# ------------------------------------------------------------------------ write API switch
async def test_write_api_off_refuses_every_write(emu) -> None:
    client = await pyasic.get_miner(NOWRITE)
    assert isinstance(client, BTMinerV2)
    data = await client.get_data()  # reads work
    assert float(data.hashrate) > 0
    assert await client.stop_mining() is False  # pyasic swallows the refusal ...
    with pytest.raises(APIError) as exc:  # ... which is the firmware's own text
        await BTMinerRPCAPI(NOWRITE).power_off()
    assert exc.value.message == WRITE_DISABLED_MSG
    t = await truth(emu, NOWRITE)
    assert t["state"] == "mining" and t["changes"] == [] and t["write_api"] is False
    assert (await truth(emu, MODERN))["write_api"] is True  # password changed: switch on


def test_write_api_fleet_key_is_checked() -> None:
    for table, error in [('model = "M30S"\nwrite_api = "no"', r"write_api: expected true"),
                         ('model = "S19"\nwrite_api = false', r"write_api: only emulated"),
                         ('model = "M50"\napi = "v3"\nwrite_api = true',
                          r"write_api: .* once the admin password is changed"),
                         ('model = "M30S"\nwrite_api = true',
                          r"write_api: .* once the admin password is changed")]:
        with pytest.raises(FleetError, match=error):
            plan_fleet_text(f"[[miner]]\n{table}\n")


# -------------------------------------------------------------------------------- tokens
async def test_tokens_per_client_ip_and_client_count(emu) -> None:
    def token(reply: bytes) -> dict:
        return json.loads(reply)

    first = CLIENTS[0]
    replies = [token(await raw(TOKENS, {"cmd": "get_token"}, first))
               for _ in range(TOKEN_LIMIT)]
    assert all(r["Code"] == 134 and set(r["Msg"]) == {"time", "salt", "newsalt"}
               for r in replies)
    over = token(await raw(TOKENS, {"cmd": "get_token"}, first))
    assert (over["STATUS"], over["Code"], over["Msg"]) == ("E", 136, "over max connect")
    # other client IPs have their own 32, up to 16 IPs; the 17th is refused
    for source in CLIENTS[1:MAX_CLIENT_IPS]:
        assert token(await raw(TOKENS, {"cmd": "get_token"}, source))["Code"] == 134
    extra = token(await raw(TOKENS, {"cmd": "get_token"}, CLIENTS[MAX_CLIENT_IPS]))
    assert extra["Code"] == 136
    tokens = (await truth(emu, TOKENS))["api_tokens"]
    assert tokens["live"][first] == TOKEN_LIMIT and len(tokens["live"]) == MAX_CLIENT_IPS
    assert tokens["refused"] == {first: 1, CLIENTS[MAX_CLIENT_IPS]: 1}
    assert tokens["limit"] == TOKEN_LIMIT and tokens["window_s"] == 1800


def test_tokens_come_back_after_the_window() -> None:
    """The window is 30 real minutes: a fake clock moves it (the family in process)."""
    now = [1000.0]
    family = WhatsminerFamily(clock=lambda: now[0])
    miner = EmulatedMiner(ip="127.161.8.1", spec=MODELS["M30S"])

    def ask(ip: str) -> int:
        return json.loads(family.handle_rpc(miner, b'{"cmd": "get_token"}', ip))["Code"]

    assert ask("127.161.9.1") == 134  # at t = 1000
    now[0] += 100.0
    assert [ask("127.161.9.1") for _ in range(TOKEN_LIMIT)][-2:] == [134, 136]
    now[0] += 1699.0
    assert ask("127.161.9.1") == 136
    now[0] += 2.0  # the first token is 30 minutes old: its slot is free again
    assert ask("127.161.9.1") == 134
    assert ask("127.161.9.1") == 136
    assert family.token_view(miner)["live"] == {"127.161.9.1": TOKEN_LIMIT}


# --------------------------------------------------------- power_off on legacy firmware
async def test_legacy_power_off_makes_reads_fail_like_real_firmware(emu) -> None:
    client = await site_miner(LEGACY)
    assert type(client).__name__ == "BTMinerM30SV10" and isinstance(client, BTMinerV2)
    version = await client.rpc.get_version()
    assert version["Msg"] == {"api_ver": LEGACY_API_VERSION, "fw_ver": LEGACY_FW}
    assert (await client.rpc.status())["Msg"]["btmineroff"] == "false"
    assert await client._is_mining() is True
    t = await truth(emu, LEGACY)
    assert t["legacy_api"] is True and t["process"] == "running"

    assert await client.stop_mining() is True
    t = await truth(emu, LEGACY)
    assert t["state"] == "sleeping" and t["process"] == "off"
    # btminer is stopped: the daemon's forwarded reads fail, its own still answer
    for read in (client.rpc.summary, client.rpc.devs, client.rpc.pools, client.rpc.devdetails):
        with pytest.raises(APIError, match="Socket connect failed: Connection refused"):
            await read()
    assert (await client.rpc.status())["Msg"]["btmineroff"] == "true"
    assert (await client.rpc.get_miner_info())["Msg"]["mac"] == t["mac"].upper()
    # pyasic's _is_mining: btmineroff present -> devdetails -> it fails -> not mining
    assert await client._is_mining() is False
    data = await client.get_data()
    assert data.is_mining is False and data.hashrate is None and data.wattage is None
    # and pyasic cannot discover a machine in this state (devdetails is how it knows btminer)
    assert await pyasic.get_miner(LEGACY) is None

    assert await client.resume_mining() is True
    assert (await client.rpc.status())["Msg"]["btmineroff"] == "false"
    assert (await truth(emu, LEGACY))["process"] == "running"
    assert len((await client.rpc.devs())["DEVS"]) == 3  # reads answer again (booting)


async def test_modern_v2_keeps_answering_while_off(emu) -> None:
    client = await site_miner(MODERN)
    assert await client.stop_mining() is True
    status = (await client.rpc.status())["Msg"]
    assert status["mineroff"] == "true" and status["mineroff_reason"] == "by whatsminer api"
    summary = (await client.rpc.summary())["SUMMARY"][0]
    assert summary["Power"] < 100 and summary["MHS 5s"] == 0
    assert await client._is_mining() is False
    assert (await truth(emu, MODERN))["process"] == "off"
    assert await client.resume_mining() is True


# ------------------------------------------------------------------------ power_on ramp
async def test_power_on_ramps_over_minutes(emu) -> None:
    client = await site_miner(RAMP)
    plate = MODELS["M30S"]
    assert await client.stop_mining() is True
    assert await client.resume_mining() is True
    assert (await truth(emu, RAMP))["state"] == "booting"
    t = await wait_for(emu, RAMP, lambda m: m["state"] == "mining")
    assert t["hashrate_ths"] < 0.5 * plate.hashrate_ths
    assert t["power_w"] < 0.6 * plate.power_w
    began = time.monotonic()
    t = await wait_for(emu, RAMP, lambda m: m["hashrate_ths"] > 0.97 * plate.hashrate_ths,
                       within_s=RAMP_S * TIME_SCALE + 5)
    # 6-10 minutes (HashSource); here 480 s at this scale, from the end of the boot
    assert time.monotonic() - began > 0.5 * RAMP_S * TIME_SCALE
    deadline = time.monotonic() + 0.1 * RAMP_S * TIME_SCALE + 1
    while not (await client.rpc.summary())["SUMMARY"][0]["Hash Stable"]:  # ramp done
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------- power limit
async def test_limit_above_nameplate_refused_and_a_limit_restarts_btminer(emu) -> None:
    client = await site_miner(LIMIT)
    plate = MODELS["M50"].power_w
    # "cannot be higher than the ordinary power of the machine"
    assert await client.set_power_limit(int(plate) + 100) is False
    with pytest.raises(APIError, match="invalid API command or data"):
        await client.rpc.adjust_power_limit(int(plate) + 100)
    assert (await truth(emu, LIMIT))["power_limit_w"] is None

    assert await client.set_power_limit(2500) is True
    t = await truth(emu, LIMIT)
    assert t["power_limit_w"] == 2500 and t["process"] == "restarting"
    with pytest.raises(APIError):  # btminer restarting: the API is silent
        await client.rpc.summary()
    await asyncio.sleep(BTMINER_RESTART_S * TIME_SCALE + 0.1)
    assert (await truth(emu, LIMIT))["process"] == "running"
    summary = (await client.rpc.summary())["SUMMARY"][0]
    assert summary["Power Limit"] == 2500
    # the boards boot again, then ramp to the new limit
    await wait_for(emu, LIMIT, lambda m: m["state"] == "mining")
    await wait_for(emu, LIMIT, lambda m: abs(m["power_w"] - 2500) < 75,
                   within_s=RAMP_S * TIME_SCALE + 5)


async def test_fast_boot_applies_a_limit_in_place(emu) -> None:
    client = await site_miner(FAST)
    assert (await client.rpc.summary())["SUMMARY"][0]["Btminer Fast Boot"] == "enable"
    assert await client.set_power_limit(2500) is True
    t = await truth(emu, FAST)
    assert t["process"] == "running" and t["state"] == "mining" and t["fast_boot"] is True
    assert abs(t["power_w"] - 2500) < 75
    assert (await client.rpc.summary())["SUMMARY"][0]["Power Limit"] == 2500


# ------------------------------------------------------------------------ MHS 1m lagging
async def test_hashrate_is_read_from_a_lagging_one_minute_window(emu) -> None:
    client = await site_miner(LAG)
    plate = MODELS["M30S"].hashrate_ths
    before = float((await client.get_data()).hashrate)
    assert before > 0.9 * plate
    assert await client.stop_mining() is True
    t = await truth(emu, LAG)
    assert t["hashrate_ths"] == 0.0
    summary = (await client.rpc.summary())["SUMMARY"][0]
    assert summary["MHS 5s"] == 0 and summary["HS RT"] == 0  # the instant: stopped
    lagging = float((await client.get_data()).hashrate)  # pyasic reads MHS 1m
    assert lagging > 0.8 * before
    await asyncio.sleep(HASH_WINDOW_S * TIME_SCALE / 2)
    half = float((await client.get_data()).hashrate)
    assert 0.2 * before < half < 0.8 * before
    await asyncio.sleep(HASH_WINDOW_S * TIME_SCALE / 2 + 0.1)
    assert float((await client.get_data()).hashrate) == 0.0
    assert await client.resume_mining() is True


# ------------------------------------------------------------------------- conformance
def _types(row: dict) -> dict:
    return {k: type(v).__name__ for k, v in row.items()}


async def _emulator_replies(ip: str) -> dict[str, dict]:
    api = BTMinerRPCAPI(ip)
    return {name: await getattr(api, name)()
            for name in ("summary", "devs", "pools", "status", "get_version", "get_psu",
                         "get_miner_info")}


async def test_reply_shapes_and_types_match_the_legacy_captures(emu) -> None:
    """Firmware 2022-09 against the v1 captures (a real machine): the same keys, the same
    JSON types, in every reply pyasic reads."""
    ours = await _emulator_replies(CONF_OLD)
    for name, section in (("summary", "SUMMARY"), ("devs", "DEVS"), ("pools", "POOLS")):
        cap = capture("v1", f"{name}.json")
        assert cap["STATUS"][0].keys() == ours[name]["STATUS"][0].keys()
        assert ours[name]["STATUS"][0]["Description"] == cap["STATUS"][0]["Description"]
        for row in ours[name][section]:
            assert _types(row) == _types(cap[section][0]), name
    for name in ("status", "get_version", "get_psu"):
        cap = capture("v1", f"{name}.json")
        assert ours[name].keys() == cap.keys()
        assert ours[name]["Description"] == cap["Description"]
        assert _types(ours[name]["Msg"]) == _types(cap["Msg"]), name
    assert ours["pools"]["POOLS"][0]["POOL"] == 1  # cgminer counts pools from 1, as captured


async def test_reply_shapes_and_types_match_the_2_0_5_captures(emu) -> None:
    """Firmware 2023-09 against the v2 captures: status is a real machine's (exact keys and
    types); the others are partly synthetic ("key names only", SOURCES.md), so every key they
    show is there with its type."""
    ours = await _emulator_replies(CONF_NEW)
    cap = capture("v2", "status.json")
    assert _types(ours["status"]["Msg"]) == _types(cap["Msg"])
    assert ours["status"].keys() == cap.keys()
    for name, section in (("summary", "SUMMARY"), ("devs", "DEVS"), ("pools", "POOLS")):
        cap_types = _types(capture("v2", f"{name}.json")[section][0])
        mine = _types(ours[name][section][0])
        assert {k: mine.get(k) for k in cap_types} == cap_types, name
    for name in ("get_version", "get_psu", "get_miner_info"):
        cap_types = _types(capture("v2", f"{name}.json")["Msg"])
        mine = _types(ours[name]["Msg"])
        assert {k: mine.get(k) for k in cap_types} == cap_types, name


async def _parsed(ip: str, summary: dict, devs: dict, status: dict) -> dict:
    """What pyasic's own BTMinerV2 parsers make of one set of replies."""
    m = BTMinerM30SV10(ip)
    boards = await m._get_hashboards(rpc_devs=devs)
    return {
        "hashrate": await m._get_hashrate(rpc_summary=summary),
        "boards": [(b.hashrate is not None, b.temp is not None, b.chip_temp is not None,
                    b.chips is not None, b.missing) for b in boards],
        "fans": [f.speed is not None for f in await m._get_fans(rpc_summary=summary)],
        "wattage": await m._get_wattage(rpc_summary=summary),
        "limit": await m._get_wattage_limit(rpc_summary=summary),
        "is_mining": await m._is_mining(rpc_status=status),
        "uptime": await m._get_uptime(rpc_summary=summary),
    }


async def test_pyasic_parses_the_emulator_as_it_parses_the_real_machine(emu) -> None:
    """The legacy captures (a real machine) and the emulator's legacy replies through the
    same parsers: hashrate, every board, both fans, power, limit, is_mining, uptime."""
    ours = await _emulator_replies(CONF_OLD)
    real = await _parsed(CONF_OLD, capture("v1", "summary.json"), capture("v1", "devs.json"),
                         capture("v1", "status.json"))
    emulated = await _parsed(CONF_OLD, ours["summary"], ours["devs"], ours["status"])
    assert real["boards"] == emulated["boards"] == [(True, True, True, True, False)] * 3
    assert real["fans"] == emulated["fans"] == [True, True]
    for key in ("hashrate", "wattage", "limit", "uptime"):
        assert real[key] is not None and emulated[key] is not None, key
        assert type(real[key]) is type(emulated[key]), key
    assert real["is_mining"] is emulated["is_mining"] is True
    t = await truth(emu, CONF_OLD)
    assert float(emulated["hashrate"]) == pytest.approx(t["hashrate_ths"], rel=0.06)
    assert emulated["wattage"] == pytest.approx(t["power_w"], rel=0.03)
    assert emulated["limit"] == int(MODELS["M30S"].power_w)
    # the 2.0.5 status (a real machine) is read the same way
    new = await _emulator_replies(CONF_NEW)
    m = BTMinerM30SV10(CONF_NEW)
    assert await m._is_mining(rpc_status=capture("v2", "status.json")) is True
    assert await m._is_mining(rpc_status=new["status"]) is True
    assert await m._get_wattage_limit(rpc_summary=capture("v2", "summary.json")) == 3300
    assert await m._get_wattage_limit(rpc_summary=new["summary"]) == int(MODELS["M30S"].power_w)


def test_versions_are_coherent_with_the_api_served() -> None:
    """v2 firmware dates before 2024-11 (pyasic then speaks v2), legacy before 2023."""
    family = WhatsminerFamily()
    legacy = EmulatedMiner(ip="127.161.8.2", spec=MODELS["M30S"])
    legacy.firmware_version = LEGACY_FW
    modern = EmulatedMiner(ip="127.161.8.3", spec=MODELS["M30S"])
    assert family.is_legacy(legacy) and not family.is_legacy(modern)
    assert family.fw_version(modern) < "20241100"
    with pytest.raises(FleetError, match="is firmware for API v3"):
        plan_fleet_text('[[miner]]\nmodel = "M30S"\napi = "v2"\n'
                        'firmware_version = "20250101.10.Rel"\n')
