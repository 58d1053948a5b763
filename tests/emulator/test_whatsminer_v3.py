"""Whatsminer API v3 (port 4433) in the real emulator process, through unmodified pyasic 0.79.

Compared with replies captured from real machines (``shared/firmware-captures/whatsminer/v3``:
a real M60S on firmware 20251209.16.Rel2, API 3.0.2) for shape and types, and with what
pyasic's own ``BTMinerV3`` parsers make of them; every effect is checked in the emulator's
truth (``GET /miners``). Field behaviour: the salt/ts token, the 32-tokens-per-client-IP
limit, "btminer process is down err" while powered off, the ramp after power_on, a power limit
above nameplate refused, and btminer restarting (silent) to apply a limit unless fast boot.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time

import pyasic
import pytest
from pyasic.errors import APIError
from pyasic.miners.backends.btminer import BTMinerV2, BTMinerV3
from pyasic.rpc.btminer import BTMinerRPCAPI, BTMinerV3RPCAPI

from curtaild.core.models import MODELS
from curtaild.emulator.families.whatsminer import FW_VERSION as V2_FW_VERSION
from curtaild.emulator.families.whatsminer import WRITE_API_KEY, WRITE_DISABLED_MSG
from curtaild.emulator.families.whatsminer_v3 import (
    BTMINER_RESTART_S,
    DOWN_MSG,
    RAMP_S,
    WRITE_DISABLED_CODE,
    BtminerFamily,
    api_for_version,
    v3_token,
)
from curtaild.emulator.fleet import (
    COUNT_PASSWORDS,
    FleetError,
    build_miners,
    plan_count,
    plan_fleet_text,
)
from curtaild.emulator.physics import EmulatedMiner
from tests.support.conformance import whatsminer_capture
from tests.support.driving import truth, wait_for
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

TIME_SCALE = 0.02  # a 30 s btminer restart is silent for 0.6 s; the ramp takes 9.6 s
PW = "v3-S1te-pw"
V3, V3_PW, V2, TOKENS, SERVICE, LIMIT, FAST, SILENT, EXHAUST, V2_EXHAUST = (
    f"127.156.1.{i}" for i in range(1, 11))
FLEET = f"""
[[miner]]
model = "M50"
ip = "{V3}"
api = "v3"
[[miner]]
model = "M50"
ip = "{V3_PW}"
api = "v3"
password = "{PW}"
[[miner]]
model = "M30S"
ip = "{V2}"
[[miner]]
model = "M50"
ip = "{TOKENS}"
password = "{PW}"
firmware_version = "20251209.16.Rel2"
[[miner]]
model = "M50"
ip = "{SERVICE}"
password = "{PW}"
api = "v3"
[[miner]]
model = "M50"
ip = "{LIMIT}"
password = "{PW}"
api = "v3"
[[miner]]
model = "M50"
ip = "{FAST}"
password = "{PW}"
api = "v3"
fast_boot = true
[[miner]]
model = "M50"
ip = "{SILENT}"
password = "{PW}"
api = "v3"
[[miner]]
model = "M50"
ip = "{EXHAUST}"
password = "{PW}"
api = "v3"
[[miner]]
model = "M30S"
ip = "{V2_EXHAUST}"
"""
NAMEPLATE_W = MODELS["M50"].power_w


@pytest.fixture(scope="module")
def emu():
    with EmulatorProcess(fleet_toml=FLEET, first_ip=V3, time_scale=TIME_SCALE) as proc:
        yield proc


def rpc(ip: str, pwd: str = PW) -> BTMinerV3RPCAPI:
    """A fresh pyasic v3 client (a new object: its first write fetches a salt)."""
    client = BTMinerV3RPCAPI(ip)
    client.pwd = pwd
    return client


def capture(name: str) -> dict:
    return whatsminer_capture("v3", name)


def shape(value: object) -> object:
    """Key names and JSON types, recursively (a list by its first element)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def missing(expected: object, got: object, where: str = "") -> list[str]:
    """Where ``got`` lacks a key of ``expected`` or has another type (extra keys are fine)."""
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return [f"{where}: {got!r} is not an object"]
        out = []
        for k, v in expected.items():
            if k not in got:
                out.append(f"{where}.{k}: missing")
            else:
                out.extend(missing(v, got[k], f"{where}.{k}"))
        return out
    if isinstance(expected, list):
        if not isinstance(got, list):
            return [f"{where}: {got!r} is not a list"]
        return missing(expected[0], got[0], f"{where}[0]") if expected and got else []
    return [] if expected == got else [f"{where}: {got} instead of {expected}"]


# ------------------------------------------------------------------------ discovery
async def test_pyasic_picks_btminer_v3_for_firmware_after_2024_11(emu) -> None:
    v3, v2, dated = await asyncio.gather(pyasic.get_miner(V3), pyasic.get_miner(V2),
                                         pyasic.get_miner(TOKENS))
    assert type(v3).__name__ == "BTMinerM50VH50" and isinstance(v3, BTMinerV3)
    assert isinstance(dated, BTMinerV3)
    assert type(v2).__name__ == "BTMinerM30SV10" and isinstance(v2, BTMinerV2)
    views = {m["ip"]: m for m in await asyncio.to_thread(emu.miners)}
    assert (views[V3]["api"], views[V3]["firmware_version"]) == ("v3", "20250915.16.Rel2")
    assert views[TOKENS]["firmware_version"] == "20251209.16.Rel2"
    assert (views[V2]["api"], views[V2]["firmware_version"]) == ("v2", "20230911.12.Rel")
    assert "max_client_ips" in views[V2]["api_tokens"]  # v2's get_token, counted per IP
    assert views[V3]["process"] == "running"


# ------------------------------------------------------------- replies vs. captures
@pytest.mark.parametrize(("cmd", "param", "name"), [
    ("get.device.info", None, "get_device_info.json"),
    ("get.miner.status", "summary", "get_miner_status_summary.json"),
    ("get.miner.status", "edevs", "get_miner_status_edevs.json"),
    ("get.miner.status", "pools", "get_miner_status_pools.json"),
])
async def test_replies_have_the_shape_and_types_of_the_captures(emu, cmd, param, name) -> None:
    got = await rpc(V3).send_command(cmd, parameters=param)
    problems = missing(shape(capture(name)), shape(got))
    assert not problems, problems
    assert got["code"] == 0 and got["desc"] == cmd


async def test_pyasic_parses_emulator_and_capture_alike(emu) -> None:
    """pyasic's BTMinerV3 parsers, fed the captured replies and the emulator's: the same kinds
    of values (hashrate, boards, fans, power, limit), and the emulator's match its truth."""
    client = await pyasic.get_miner(V3)
    r = client.rpc
    live = {"summary": await r.get_miner_status_summary(),
            "edevs": await r.get_miner_status_edevs(), "info": await r.get_device_info()}
    real = {"summary": capture("get_miner_status_summary.json"),
            "edevs": capture("get_miner_status_edevs.json"),
            "info": capture("get_device_info.json")}
    parsed = {}
    for source, replies in (("live", live), ("real", real)):
        s = replies["summary"]
        parsed[source] = {
            "hashrate": await client._get_hashrate(rpc_get_miner_status_summary=s),
            "boards": await client._get_hashboards(rpc_get_device_info=replies["info"],
                                                   rpc_get_miner_status_edevs=replies["edevs"]),
            "fans": await client._get_fans(rpc_get_miner_status_summary=s),
            "wattage": await client._get_wattage(rpc_get_miner_status_summary=s),
            "limit": await client._get_wattage_limit(rpc_get_miner_status_summary=s),
            "mac": await client._get_mac(rpc_get_device_info=replies["info"]),
            "fw": await client._get_firmware_version(rpc_get_device_info=replies["info"]),
        }
    live_p, real_p = parsed["live"], parsed["real"]
    assert float(real_p["hashrate"]) == pytest.approx(171.259)
    assert real_p["limit"] == 3600 and real_p["wattage"] == 3156.0
    for key in ("hashrate", "wattage", "limit", "mac", "fw"):
        assert type(live_p[key]) is type(real_p[key]), key
    assert len(live_p["boards"]) == len(real_p["boards"]) == 3
    assert [type(f.speed) for f in live_p["fans"]] == [type(f.speed) for f in real_p["fans"]]
    assert len(live_p["fans"]) == len(real_p["fans"]) == 2
    for lb, rb in zip(live_p["boards"], real_p["boards"], strict=True):
        assert lb.active and rb.active and lb.serial_number and rb.serial_number
        assert type(lb.chips) is type(rb.chips) and type(lb.temp) is type(rb.temp)
    t = await truth(emu, V3)
    assert float(live_p["hashrate"]) == pytest.approx(t["hashrate_ths"], rel=0.05)
    assert live_p["wattage"] == pytest.approx(t["power_w"], rel=0.05)
    assert live_p["limit"] == int(NAMEPLATE_W)
    assert sum(float(b.hashrate) for b in live_p["boards"]) == pytest.approx(
        t["hashrate_ths"], rel=0.05)
    assert live_p["mac"] == t["mac"].upper() and live_p["fw"] == "20250915.16.Rel2"


# ------------------------------------------------------------------- authentication
async def test_writes_need_the_machines_password(emu) -> None:
    """pyasic's v3 client sends the password ``super`` unless told; the machine takes only the
    site's (its write API is on once the admin password was changed), never the factory one;
    a factory unit takes none (its write API is off: ``apiswitch`` "0")."""
    default = BTMinerV3RPCAPI(V3_PW)
    assert default.pwd == "super"
    refused = await default.set_miner_service("stop")
    assert refused["code"] == -1
    for password in ("admin", "super", PW):
        factory_unit = rpc(V3, password)
        refused = await factory_unit.set_miner_service("stop")
        assert (refused["code"], refused["msg"]) == (WRITE_DISABLED_CODE, WRITE_DISABLED_MSG)
    assert (await rpc(V3).get_device_info())["msg"]["system"]["apiswitch"] == "0"
    assert (await rpc(V3_PW).get_device_info())["msg"]["system"]["apiswitch"] == "1"
    assert (await truth(emu, V3))["write_api"] is False
    assert (await truth(emu, V3))["state"] == "mining"
    miner = await pyasic.get_miner(V3_PW)
    assert await miner.stop_mining() is False
    miner.rpc.pwd = "admin"  # the factory password no longer works once the site changed it
    assert await miner.stop_mining() is False
    assert (await truth(emu, V3_PW))["state"] == "mining"
    miner.rpc.pwd = PW
    assert await miner.stop_mining() is True
    await wait_for(emu, V3_PW, lambda m: m["state"] == "sleeping")
    assert await miner.resume_mining() is True
    await wait_for(emu, V3_PW, lambda m: m["state"] == "mining")


async def test_v2_writes_are_refused_on_v3_firmware(emu) -> None:
    """Firmware after 2024-11 broke the v2 write API (pyasic#363): reads still answer on 4028
    (that is how pyasic finds the machine), writes do not."""
    v2 = BTMinerRPCAPI(V3)
    assert (await v2.get_version())["Msg"]["fw_ver"] == "20250915.16.Rel2"
    with pytest.raises(APIError):
        await v2.power_off()
    assert (await truth(emu, V3))["state"] == "mining"


def test_token_is_the_documented_derivation() -> None:
    """What pyasic computes (``BTMinerV3RPCAPI.send_command``), reproduced independently."""
    import base64
    import hashlib

    digest = hashlib.sha256(b"set.miner.serviceadminabcdEFGH1700000000").digest()
    assert v3_token("set.miner.service", "admin", "abcdEFGH", 1700000000) == \
        base64.b64encode(digest).decode()[:8]


# --------------------------------------------------------------------------- tokens
def _raw_salt_request(ip: str, source_ip: str) -> dict:
    """get.device.info/salt from a chosen client address (another machine on the LAN)."""
    body = json.dumps({"cmd": "get.device.info", "param": "salt"}).encode()
    with socket.create_connection((ip, 4433), timeout=5, source_address=(source_ip, 0)) as s:
        s.sendall(struct.pack("<I", len(body)) + body)
        head = s.recv(4, socket.MSG_WAITALL)
        return json.loads(s.recv(struct.unpack("<I", head)[0], socket.MSG_WAITALL))


async def test_token_limit_32_per_client_ip(emu) -> None:
    kept = rpc(TOKENS)
    assert (await kept.set_miner_service("start"))["code"] == 0  # one salt, then cached
    for _ in range(31):  # new pyasic objects: each fetches its own salt
        assert (await rpc(TOKENS).get_salt())
    over = await rpc(TOKENS).send_command("get.device.info", parameters="salt")
    assert (over["code"], over["msg"]) == (136, "token over max times")
    with pytest.raises(TypeError):  # pyasic cannot read the refusal as a salt
        await rpc(TOKENS).set_miner_service("start")
    view = await truth(emu, TOKENS)
    assert view["api_tokens"]["issued"] == {"127.0.0.1": 32}
    assert view["api_tokens"]["live"] == {"127.0.0.1": 32}
    assert view["api_tokens"]["refused"] == {"127.0.0.1": 2}
    # A client that kept its object (and its salt) still writes; another client IP has its
    # own 32.
    assert (await kept.set_miner_service("start"))["msg"] == "ok"
    other = await asyncio.to_thread(_raw_salt_request, TOKENS, "127.156.250.1")
    assert other["code"] == 0 and len(other["msg"]["salt"]) == 8
    view = await truth(emu, TOKENS)
    assert view["api_tokens"]["issued"] == {"127.0.0.1": 32, "127.156.250.1": 1}


def test_restart_silence_on_the_physics_clock() -> None:
    """Silent for BTMINER_RESTART_S (scaled) after a limit, then answering while it boots."""
    now = [500.0]
    family = BtminerFamily()
    miner = EmulatedMiner(ip="127.156.9.2", spec=MODELS["M50"], time_scale=TIME_SCALE,
                          api="v3", clock=lambda: now[0], password=PW)
    ts = int(time.time())
    limit = {"cmd": "set.miner.power_limit", "param": 2500, "ts": ts, "account": "super",
             "token": v3_token("set.miner.power_limit", PW, family.v3_salt(miner), ts)}
    status = json.dumps({"cmd": "get.miner.status", "param": "summary"}).encode()
    reply = family.handle_framed(miner, json.dumps(limit).encode(), "127.0.0.1")
    assert reply is not None and json.loads(reply)["msg"] == "ok"
    assert family.handle_framed(miner, status, "127.0.0.1") is None
    assert family.handle_rpc(miner, b'{"command": "summary"}') == b""
    assert family.control_view(miner)["process"] == "restarting"
    now[0] += BTMINER_RESTART_S * TIME_SCALE
    answered = family.handle_framed(miner, status, "127.0.0.1")
    assert answered is not None and json.loads(answered)["code"] == 0
    assert miner.read().state == "booting"
    assert family.control_view(miner)["process"] == "running"


async def test_token_exhaustion_fault_refuses_new_tokens_only(emu) -> None:
    """The control API's ``token_exhaustion``: a client that kept its salt still writes, a new
    one gets code 136 (v3) / "over max connect" (v2) until the fault is cleared."""
    kept = rpc(EXHAUST)
    assert (await kept.set_miner_service("start"))["msg"] == "ok"
    await asyncio.to_thread(emu.set_fault, EXHAUST, "token_exhaustion")
    await asyncio.to_thread(emu.set_fault, V2_EXHAUST, "token_exhaustion")
    try:
        refused = await rpc(EXHAUST).send_command("get.device.info", parameters="salt")
        assert refused["code"] == 136
        assert (await kept.set_miner_service("start"))["msg"] == "ok"
        with pytest.raises(APIError, match="over max connect"):
            await BTMinerRPCAPI(V2_EXHAUST).get_token()
        assert (await truth(emu, EXHAUST))["api_tokens"]["refused"] == {"127.0.0.1": 1}
    finally:
        await asyncio.to_thread(emu.set_fault, EXHAUST, "none")
        await asyncio.to_thread(emu.set_fault, V2_EXHAUST, "none")
    assert (await rpc(EXHAUST).send_command("get.device.info", parameters="salt"))["code"] == 0
    assert (await BTMinerRPCAPI(V2_EXHAUST).get_token()).host_sign


def test_token_window_frees_tokens_after_30_minutes() -> None:
    """The window, on the family with a test clock (real time would take 30 minutes)."""
    now = [1000.0]
    family = BtminerFamily(clock=lambda: now[0])
    miner = EmulatedMiner(ip="127.156.9.1", spec=MODELS["M50"], time_scale=TIME_SCALE,
                          api="v3")
    ask = json.dumps({"cmd": "get.device.info", "param": "salt"}).encode()

    def code() -> int:
        reply = family.handle_framed(miner, ask, "127.0.0.9")
        assert reply is not None
        return json.loads(reply)["code"]

    assert [code() for _ in range(32)] == [0] * 32
    assert code() == 136
    now[0] += 30 * 60 - 1
    assert code() == 136
    now[0] += 1
    assert code() == 0


# ---------------------------------------------------------------- power off / on
async def test_power_off_reads_btminer_down_and_power_on_ramps(emu) -> None:
    miner = await pyasic.get_miner(SERVICE)
    miner.rpc.pwd = PW
    assert await miner.stop_mining() is True
    t = await wait_for(emu, SERVICE, lambda m: m["state"] == "sleeping")
    assert t["process"] == "off"
    status = await miner.rpc.get_miner_status_summary()
    assert status["msg"] == DOWN_MSG and status["code"] != 0
    info = await miner.rpc.get_device_info()
    assert info["msg"]["error-code"] == DOWN_MSG and info["msg"]["miner"]["working"] == "false"
    with pytest.raises(APIError):  # what pyasic's get_data makes of a powered-off v3 machine
        await miner.get_data()
    # A new discovery still finds it, as API v3 firmware.
    assert isinstance(await pyasic.get_miner(SERVICE), BTMinerV3)

    assert await miner.resume_mining() is True
    await wait_for(emu, SERVICE, lambda m: m["state"] == "mining")
    t = await truth(emu, SERVICE)
    nameplate = t["nameplate_hashrate_ths"]
    assert t["hashrate_ths"] < 0.5 * nameplate, "full speed at once: no ramp"
    summary = (await miner.rpc.get_miner_status_summary())["msg"]["summary"]
    assert summary["up-freq-finish"] == 0 and summary["hash-realtime"] < 0.6 * nameplate
    ramp_s = RAMP_S * TIME_SCALE
    t = await wait_for(emu, SERVICE, lambda m: m["hashrate_ths"] > 0.95 * nameplate,
                       within_s=ramp_s * 3 + 5)
    assert t["process"] == "running"


# -------------------------------------------------------------------- power limits
async def test_limit_above_nameplate_is_refused(emu) -> None:
    miner = await pyasic.get_miner(LIMIT)
    miner.rpc.pwd = PW
    reply = await miner.rpc.set_miner_power_limit(int(NAMEPLATE_W) + 94)
    assert reply["code"] != 0
    assert (await truth(emu, LIMIT))["power_limit_w"] is None
    # pyasic's own set_power_limit reports success whatever the firmware said:
    assert await miner.set_power_limit(int(NAMEPLATE_W) + 94) is True
    t = await truth(emu, LIMIT)
    assert t["power_limit_w"] is None and t["process"] == "running"


async def test_limit_restarts_btminer_silently(emu) -> None:
    client = rpc(SILENT)
    assert (await client.set_miner_power_limit(2500))["msg"] == "ok"
    with pytest.raises(json.JSONDecodeError):  # pyasic's v3 client on a closed connection
        await client.get_miner_status_summary()
    with pytest.raises(APIError):  # nothing answers on 4028 either
        await BTMinerRPCAPI(SILENT).summary()
    assert (await truth(emu, SILENT))["power_limit_w"] == 2500
    await wait_for(emu, SILENT, lambda m: m["process"] != "restarting",
                   within_s=BTMINER_RESTART_S * TIME_SCALE + 5)
    assert (await client.get_miner_status_summary())["code"] == 0
    t = await wait_for(emu, SILENT, lambda m: m["state"] == "mining"
                       and m["power_w"] == pytest.approx(2500, rel=0.03), within_s=40)
    assert "reboot" in [c[1] for c in t["changes"]]
    summary = (await client.get_miner_status_summary())["msg"]["summary"]
    assert summary["power-limit"] == 2500


async def test_fast_boot_applies_a_limit_without_a_restart(emu) -> None:
    client = rpc(FAST)
    info = await client.get_device_info()
    assert info["msg"]["miner"]["fast-boot"] == "enable"
    before = await truth(emu, FAST)
    assert (await client.set_miner_power_limit(2500))["msg"] == "ok"
    t = await truth(emu, FAST)
    assert t["process"] == "running" and t["state"] == "mining"
    assert t["power_w"] == pytest.approx(2500, rel=0.03)
    assert "reboot" not in [c[1] for c in t["changes"]]
    assert t["power_w"] < before["power_w"]
    assert (await client.get_miner_status_summary())["msg"]["summary"]["power-limit"] == 2500


# ------------------------------------------------------------------- fleet files
def test_count_fleets_keep_the_mix_with_m50s_on_api_v3() -> None:
    plan = plan_count(16)
    assert [p.model for p in plan.miners[:8]] == list(MODELS)
    miners = build_miners(plan, time_scale=TIME_SCALE)
    apis = {(m.spec.model, m.api) for m in miners if m.spec.firmware == "whatsminer"}
    assert apis == {("M30S", "v2"), ("M50", "v3")}
    assert all(m.api is None for m in miners if m.spec.firmware != "whatsminer")
    assert all(m.ramp_s > 0 for m in miners if m.api == "v3")
    # older firmware next to the v3 one: every M30S runs API v2 firmware from before 2024-11
    family = BtminerFamily()
    versions = {m.spec.model: family.fw_version(m) for m in miners
                if m.spec.firmware == "whatsminer"}
    assert versions == {"M30S": V2_FW_VERSION, "M50": "20250915.16.Rel2"}
    assert api_for_version(V2_FW_VERSION) == "v2" and not family.is_legacy(miners[3])
    # set up as at a site that commands them: admin password changed, write API on
    wm = [m for m in miners if m.spec.firmware == "whatsminer"]
    assert len(wm) == 4
    for m in wm:
        assert m.password == COUNT_PASSWORDS["whatsminer"] and family.write_api(m)
        assert WRITE_API_KEY not in m.firmware_state  # on because the password was changed
    assert all(m.password is None for m in miners if m.spec.firmware != "whatsminer")


@pytest.mark.parametrize(("table", "error"), [
    ('model = "M50"\napi = "v4"', r"miner\[0\]\.api: expected \"v2\" or \"v3\""),
    ('model = "M50"\napi = "v2"\nfirmware_version = "20250915.16.Rel2"',
     r"firmware_version: 20250915\.16\.Rel2 is firmware for API v3 .* api = 'v2'"),
    ('model = "M50"\napi = "v3"\nfirmware_version = "20240911.12.Rel"',
     r"is firmware for API v2"),
    ('model = "M50"\nfirmware_version = "Rel2"', r"firmware_version: expected a btminer"),
    ('model = "S19"\nfast_boot = true', r"fast_boot: only emulated for Whatsminer"),
    ('model = "M50"\napi = "v3"\nfast_boot = "yes"', r"fast_boot: expected true or false"),
    ('model = "S21"\napi = "v3"', r"miner\[0\]\.api: only emulated for Whatsminer"),
])
def test_fleet_file_errors_name_the_key(table: str, error: str) -> None:
    with pytest.raises(FleetError, match=error):
        plan_fleet_text(f"[[miner]]\n{table}\n")


def test_firmware_version_implies_the_api() -> None:
    plan = plan_fleet_text('[[miner]]\nmodel = "M50"\nfirmware_version = "20241101.10.Rel"\n'
                           '[[miner]]\nmodel = "M50"\nfirmware_version = "20241031.10.Rel"\n')
    assert [p.api for p in plan.miners] == ["v3", "v2"]
