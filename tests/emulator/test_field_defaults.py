"""The realistic defaults of issue 13, through unmodified pyasic 0.79 and ``GET /miners``.

- Whatsminer write API: off until the admin password is changed (API v2.0.5 document), on
  API v2 and v3 alike; a factory unit, or one whose operator switched the API off, is read
  but never written. ``--count`` fleets are set up as a site that commands its Whatsminers:
  the password changed (the demo's) and the API on, so the factory ``admin`` writes nothing.
- API v3 token clients: at most 16 client IPs hold tokens (salts), as on API v2.
- The ``lie`` fault on every family: the command is acknowledged and nothing changes.
- Mains power coming back: every family is silent while its control board boots, then
  answers while its hash boards finish booting (a stock Antminer's ``asic_num`` 0).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time

import httpx
import pyasic
import pytest
from pyasic.errors import APIError
from pyasic.rpc.btminer import BTMinerRPCAPI, BTMinerV3RPCAPI

from curtaild.core.models import MODELS
from curtaild.emulator.families.whatsminer import MAX_CLIENT_IPS, WRITE_DISABLED_MSG
from curtaild.emulator.families.whatsminer_v3 import WRITE_DISABLED_CODE
from curtaild.emulator.fleet import COUNT_PASSWORDS, FleetError, plan_fleet_text
from curtaild.emulator.physics import BOARD_BOOT_S
from tests.support.driving import truth, wait_for
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

SCALE = 0.05  # a control board boots in 3 s, a stock Antminer's boards in 4.5 s
PW = "site-Wm-4471"
(WM2_FACTORY, WM3_FACTORY, WM2_OFF, WM3_OFF, LIE_V2, LIE_V3, LIE_LUX, LIE_AXE, TOKENS_V3,
 P_STOCK, P_M30S, P_M50, P_LUX, P_AXE) = (f"127.170.1.{i}" for i in range(1, 15))
FLEET = f"""
[[miner]]
model = "M30S"
ip = "{WM2_FACTORY}"
[[miner]]
model = "M50"
ip = "{WM3_FACTORY}"
api = "v3"
[[miner]]
model = "M30S"
ip = "{WM2_OFF}"
password = "{PW}"
write_api = false
[[miner]]
model = "M50"
ip = "{WM3_OFF}"
api = "v3"
password = "{PW}"
write_api = false
[[miner]]
model = "M30S"
ip = "{LIE_V2}"
password = "{PW}"
[[miner]]
model = "M50"
ip = "{LIE_V3}"
api = "v3"
password = "{PW}"
[[miner]]
model = "S19 XP"
ip = "{LIE_LUX}"
[[miner]]
model = "BitAxe Gamma"
ip = "{LIE_AXE}"
firmware_version = "v2.14.0"
[[miner]]
model = "M50"
ip = "{TOKENS_V3}"
api = "v3"
password = "{PW}"
[[miner]]
model = "S19j Pro"
ip = "{P_STOCK}"
[[miner]]
model = "M30S"
ip = "{P_M30S}"
password = "{PW}"
[[miner]]
model = "M50"
ip = "{P_M50}"
api = "v3"
password = "{PW}"
[[miner]]
model = "S19 XP"
ip = "{P_LUX}"
[[miner]]
model = "BitAxe Gamma"
ip = "{P_AXE}"
"""
#: client addresses the v3 token test connects from (this file's block)
CLIENTS = [f"127.170.9.{i}" for i in range(1, MAX_CLIENT_IPS + 2)]


@pytest.fixture(scope="module")
def emu():
    with EmulatorProcess(fleet_toml=FLEET, first_ip=WM2_FACTORY, time_scale=SCALE) as proc:
        yield proc


def v2(ip: str, pwd: str) -> BTMinerRPCAPI:
    api = BTMinerRPCAPI(ip)
    api.pwd = pwd
    return api


def v3(ip: str, pwd: str) -> BTMinerV3RPCAPI:
    api = BTMinerV3RPCAPI(ip)
    api.pwd = pwd
    return api


def client_changes(view: dict) -> list[str]:
    return [c[1] for c in view["changes"] if c[2] == "client"]


# -------------------------------------------------------------------- Whatsminer write API
async def test_a_factory_whatsminer_is_read_and_never_written(emu) -> None:
    """No password in the fleet file: the factory one, with which the firmware does not let
    the write API be switched on. Every write is refused whatever the password, every read
    answers; likewise a machine whose operator switched the API off again."""
    for ip in (WM2_FACTORY, WM3_FACTORY, WM2_OFF, WM3_OFF):
        assert (await truth(emu, ip))["write_api"] is False, ip
        miner = await pyasic.get_miner(ip)
        data = await miner.get_data()
        assert data.hashrate is not None and float(data.hashrate) > 0, ip
    assert (await truth(emu, LIE_V2))["write_api"] is True  # password changed: on
    for ip in (WM2_FACTORY, WM2_OFF):
        for pwd in ("admin", PW):
            with pytest.raises(APIError) as exc:
                await v2(ip, pwd).power_off()
            assert exc.value.message == WRITE_DISABLED_MSG
        miner = await pyasic.get_miner(ip)
        miner.rpc.pwd = PW
        assert await miner.stop_mining() is False
    for ip in (WM3_FACTORY, WM3_OFF):
        for pwd in ("admin", "super", PW):
            reply = await v3(ip, pwd).set_miner_service("stop")
            assert (reply["code"], reply["msg"]) == (WRITE_DISABLED_CODE, WRITE_DISABLED_MSG)
        assert (await v3(ip, PW).get_device_info())["msg"]["system"]["apiswitch"] == "0"
        miner = await pyasic.get_miner(ip)
        miner.rpc.pwd = PW
        assert await miner.stop_mining() is False
        assert await miner.set_power_limit(2000) is True  # pyasic 0.79 believes anything here
    for ip in (WM2_FACTORY, WM3_FACTORY, WM2_OFF, WM3_OFF):
        view = await truth(emu, ip)
        assert view["state"] == "mining" and view["power_limit_w"] is None, ip
        assert client_changes(view) == [], ip
    assert (await v3(LIE_V3, PW).get_device_info())["msg"]["system"]["apiswitch"] == "1"


def test_the_write_api_cannot_be_on_with_the_factory_password() -> None:
    with pytest.raises(FleetError, match=r"miner\[0\]\.write_api: .*admin password"):
        plan_fleet_text('[[miner]]\nmodel = "M50"\napi = "v3"\nwrite_api = true\n')
    plan = plan_fleet_text('[[miner]]\nmodel = "M50"\napi = "v3"\nwrite_api = false\n'
                           f'password = "{PW}"\n')
    assert plan.miners[0].write_api is False


async def test_count_fleets_are_set_up_for_the_api_and_refuse_the_factory_password() -> None:
    site = COUNT_PASSWORDS["whatsminer"]
    with EmulatorProcess(count=5, first_ip="127.170.2.1", time_scale=SCALE) as emu:
        m30s, m50 = "127.170.2.4", "127.170.2.5"
        views = {ip: await truth(emu, ip) for ip in (m30s, m50)}
        assert {ip: (v["model"], v["api"], v["write_api"]) for ip, v in views.items()} == {
            m30s: ("M30S", "v2", True), m50: ("M50", "v3", True)}
        # older firmware (API v2 only, before 2024-11) next to the v3 one
        assert views[m30s]["firmware_version"] < "20241100"
        assert views[m50]["firmware_version"] > "20241100"
        with pytest.raises(APIError, match="invalid JSON message"):
            await v2(m30s, "admin").power_off()  # the factory password decrypts nothing
        assert (await v3(m50, "admin").set_miner_service("stop"))["code"] == -1
        for ip in (m30s, m50):
            assert (await truth(emu, ip))["state"] == "mining"
            miner = await pyasic.get_miner(ip)
            miner.rpc.pwd = site
            assert await miner.stop_mining() is True
            await wait_for(emu, ip, lambda m: m["state"] == "sleeping")
            assert await miner.resume_mining() is True
            await wait_for(emu, ip, lambda m: m["state"] in ("booting", "mining"))


# ---------------------------------------------------------------- v3: 16 client IPs
def _salt_from(ip: str, source_ip: str) -> dict:
    body = json.dumps({"cmd": "get.device.info", "param": "salt"}).encode()
    with socket.create_connection((ip, 4433), timeout=5, source_address=(source_ip, 0)) as s:
        s.sendall(struct.pack("<I", len(body)) + body)
        head = s.recv(4, socket.MSG_WAITALL)
        return json.loads(s.recv(struct.unpack("<I", head)[0], socket.MSG_WAITALL))


async def test_v3_tokens_go_to_at_most_16_client_ips(emu) -> None:
    """API v2.0.5: "supports max 16 IP clients"; the salt a v3 client fetches is its token."""
    for source in CLIENTS[:MAX_CLIENT_IPS]:
        reply = await asyncio.to_thread(_salt_from, TOKENS_V3, source)
        assert reply["code"] == 0 and len(reply["msg"]["salt"]) == 8
    extra = await asyncio.to_thread(_salt_from, TOKENS_V3, CLIENTS[MAX_CLIENT_IPS])
    assert (extra["code"], extra["msg"]) == (136, "token over max times")
    # an unmodified pyasic client on yet another address (127.0.0.1) is refused too
    refused = await v3(TOKENS_V3, PW).send_command("get.device.info", parameters="salt")
    assert refused["code"] == 136
    # a client that already holds a token gets more (its own 32)
    again = await asyncio.to_thread(_salt_from, TOKENS_V3, CLIENTS[0])
    assert again["code"] == 0
    tokens = (await truth(emu, TOKENS_V3))["api_tokens"]
    assert len(tokens["live"]) == MAX_CLIENT_IPS and tokens["max_client_ips"] == 16
    assert tokens["live"][CLIENTS[0]] == 2
    assert tokens["refused"] == {CLIENTS[MAX_CLIENT_IPS]: 1, "127.0.0.1": 1}


# ----------------------------------------------------------------------- lie, every family
async def test_lie_on_whatsminer_v2_acknowledges_and_changes_nothing(emu) -> None:
    miner = await pyasic.get_miner(LIE_V2)
    miner.rpc.pwd = PW
    await asyncio.to_thread(emu.set_fault, LIE_V2, "lie")
    try:
        assert (await truth(emu, LIE_V2))["obeys"] is False
        assert await miner.stop_mining() is True
        assert await miner.set_power_limit(2500) is True
        assert await miner.fault_light_on() is True
        view = await truth(emu, LIE_V2)
        assert (view["state"], view["process"], view["power_limit_w"], view["led_on"]) == (
            "mining", "running", None, False)
        assert client_changes(view) == []
        assert (await miner.rpc.status())["Msg"]["mineroff"] == "false"
        assert (await miner.get_data()).is_mining is True
    finally:
        await asyncio.to_thread(emu.set_fault, LIE_V2, "none")
    assert await miner.stop_mining() is True  # an honest firmware again
    await wait_for(emu, LIE_V2, lambda m: m["state"] == "sleeping")
    assert await miner.resume_mining() is True


async def test_lie_on_whatsminer_v3_acknowledges_and_changes_nothing(emu) -> None:
    miner = await pyasic.get_miner(LIE_V3)
    miner.rpc.pwd = PW
    await asyncio.to_thread(emu.set_fault, LIE_V3, "lie")
    try:
        assert (await truth(emu, LIE_V3))["obeys"] is False
        assert await miner.stop_mining() is True
        assert (await miner.rpc.set_miner_power_limit(2500))["msg"] == "ok"
        view = await truth(emu, LIE_V3)
        assert (view["state"], view["process"], view["power_limit_w"]) == (
            "mining", "running", None)
        assert client_changes(view) == []
        status = await miner.rpc.get_miner_status_summary()
        assert status["code"] == 0 and status["msg"]["summary"]["power-limit"] == 3306
        # a signed command the firmware does not know is still refused: only writes lie
        assert (await miner.rpc.send_command("set.curtaild.nothing"))["code"] == -2
    finally:
        await asyncio.to_thread(emu.set_fault, LIE_V3, "none")
    assert await miner.stop_mining() is True
    await wait_for(emu, LIE_V3, lambda m: m["state"] == "sleeping")
    assert await miner.resume_mining() is True


async def test_lie_on_luxos_acknowledges_and_changes_nothing(emu) -> None:
    miner = await pyasic.get_miner(LIE_LUX)
    await asyncio.to_thread(emu.set_fault, LIE_LUX, "lie")
    try:
        assert (await truth(emu, LIE_LUX))["obeys"] is False
        assert await miner.stop_mining() is True  # curtail sleep: "Curtailment command sent"
        assert await miner.set_power_limit(2000) is True  # atmset, profileset, atmset: "done"
        assert await miner.reboot() is True
        view = await truth(emu, LIE_LUX)
        assert (view["state"], view["curtail_mode"], view["profile"], view["atm"]) == (
            "mining", "None", "default", True)
        assert view["power_limit_w"] is None and view["network"] == "up"
        assert client_changes(view) == []
        assert (await miner.rpc.config())["CONFIG"][0]["CurtailMode"] == "None"
    finally:
        await asyncio.to_thread(emu.set_fault, LIE_LUX, "none")
    miner = await pyasic.get_miner(LIE_LUX)  # a new session: the old one may have expired
    assert await miner.stop_mining() is True
    await wait_for(emu, LIE_LUX, lambda m: m["state"] == "sleeping")
    assert await miner.resume_mining() is True


async def test_lie_on_bitaxe_acknowledges_and_changes_nothing(emu) -> None:
    miner = await pyasic.get_miner(LIE_AXE)
    pools = (await truth(emu, LIE_AXE))["pools"]
    await asyncio.to_thread(emu.set_fault, LIE_AXE, "lie")
    try:
        assert (await truth(emu, LIE_AXE))["obeys"] is False
        assert await miner.reboot() is True  # v2.14 answers JSON, which pyasic reads
        async with httpx.AsyncClient() as http:  # pyasic 0.79 has no pause for AxeOS
            patched = await http.patch(f"http://{LIE_AXE}/api/system",
                                       json={"stratumURL": "other.example"})
            assert patched.status_code == 200
            paused = await http.post(f"http://{LIE_AXE}/api/system/pause")
            identify = await http.post(f"http://{LIE_AXE}/api/system/identify")
        assert paused.status_code == 200 and paused.json() == {"message": "Mining paused"}
        assert identify.status_code == 200
        view = await truth(emu, LIE_AXE)
        assert (view["state"], view["network"], view["led_on"]) == ("mining", "up", False)
        assert view["pools"] == pools and client_changes(view) == []
        assert (await miner.web.system_info())["miningPaused"] is False
    finally:
        await asyncio.to_thread(emu.set_fault, LIE_AXE, "none")
    async with httpx.AsyncClient() as http:
        assert (await http.post(f"http://{LIE_AXE}/api/system/pause")).status_code == 200
    assert (await truth(emu, LIE_AXE))["state"] == "sleeping"
    async with httpx.AsyncClient() as http:
        await http.post(f"http://{LIE_AXE}/api/system/resume")


# ------------------------------------------------------------- power restore, every family
async def _answers(ip: str, port: int) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 0.3)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b'{"command":"summary"}' if port == 4028 else b"GET / HTTP/1.0\r\n\r\n")
        return bool(await asyncio.wait_for(reader.read(1), 0.5))
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


async def _stats(ip: str) -> dict:
    reader, writer = await asyncio.open_connection(ip, 4028)
    writer.write(b'{"command":"stats"}')
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return json.loads(data.rstrip(b"\0"))["STATS"][1]


@pytest.mark.parametrize(("ip", "model", "port"), [
    (P_STOCK, "S19j Pro", 4028), (P_M30S, "M30S", 4028), (P_M50, "M50", 4028),
    (P_LUX, "S19 XP", 4028), (P_AXE, "BitAxe Gamma", 80)])
async def test_power_restore_is_silent_for_the_board_boot_then_boards_boot(
        emu, ip: str, model: str, port: int) -> None:
    boot_s = MODELS[model].boot_s
    board_s = min(BOARD_BOOT_S, boot_s)
    assert (await asyncio.to_thread(emu.power, ip, False))["network"] == "blackhole"
    view = await asyncio.to_thread(emu.power, ip, True)
    powered = time.monotonic()
    assert (view["network"], view["state"]) == ("blackhole", "booting")
    if model == "S19j Pro":
        assert view["process"] == "restarting"
    while not await _answers(ip, port):  # silent while the control board boots
        assert time.monotonic() - powered < board_s * SCALE + 10
        await asyncio.sleep(0.05)
    silent_s = time.monotonic() - powered
    assert silent_s >= 0.8 * board_s * SCALE, silent_s
    if boot_s > board_s:  # a stock Antminer or a Whatsminer: the hash boards still boot
        if model == "S19j Pro":
            stats = await _stats(ip)
            assert stats["chain_acn1"] == 0 and stats["chain_acs1"] == ""
            assert stats["temp_pcb1"] == "0-0-0-0"
            assert stats["Elapsed"] == 0
        miner = await pyasic.get_miner(ip)
        assert miner is not None  # the firmware answers: pyasic finds the machine
        data = await miner.get_data()
        assert (await truth(emu, ip))["state"] == "booting"
        if model == "S19j Pro":  # boards enumerated without chips, as while bmminer restarts
            assert data.hashboards and all(not b.chips for b in data.hashboards)
    view = await wait_for(emu, ip, lambda m: m["state"] == "mining",
                          within_s=boot_s * SCALE + 10)
    assert time.monotonic() - powered >= 0.8 * boot_s * SCALE
    assert view["network"] == "up"
