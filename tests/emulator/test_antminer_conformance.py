"""The emulated stock Antminer answers like the real one: captures and emulator, same parsers.

``captures/antminer/v2020`` (copied from the shared capture set) holds replies of a real S19
Pro (stock, CompileTime Dec 2022) and a real S21's ``get_system_info.cgi``
(FR-1.12(251009-S21)). Each capture and the emulator's reply to the same request (an S19 of the
default Dec-2022 generation, and an S21 of the FR-1.12 one) go through pyasic 0.79's own
decoder and parsers; the parsed hashrate, hash boards, fans, uptime, firmware and work mode
must agree in kind, and every reply must have the capture's shape: the same keys at every
level, each with the same JSON type.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyasic.miners.antminer.bmminer.X19.S19 import BMMinerS19, BMMinerS19Pro
from pyasic.miners.backends.bmminer import BMMiner
from pyasic.rpc.base import BaseMinerRPCAPI

from curtaild.core.models import MODELS
from curtaild.emulator.families.antminer import (
    GENERATIONS,
    AntminerFamily,
    cgi_get_miner_conf,
    cgi_get_system_info,
)
from curtaild.emulator.families.base import HttpRequest
from curtaild.emulator.physics import EmulatedMiner
from tests.support.conformance import diff, shape

#: Copies of the captures, kept with the tests (captures/SOURCES.md says where they are from).
CAPTURES = Path(__file__).resolve().parent / "captures" / "antminer" / "v2020"
RPC = ("version", "summary", "stats", "pools", "devs")


def capture(name: str) -> dict:
    return json.loads((CAPTURES / f"{name}.json").read_text())


def emulated(command: str, miner: EmulatedMiner) -> dict:
    """The emulator's reply bytes, decoded the way pyasic decodes every RPC reply."""
    raw = AntminerFamily().handle_rpc(miner, json.dumps({"command": command}).encode())
    assert raw.endswith(b"\x00")  # bmminer NUL-terminates
    return BaseMinerRPCAPI._load_api_data(raw)


def web(fn, miner: EmulatedMiner) -> dict:
    return json.loads(fn(miner, HttpRequest("GET", "/", "", {}, b"")).body)


@pytest.fixture
def s19() -> EmulatedMiner:
    """An emulated S19 of the captured machine's generation (the default one)."""
    return EmulatedMiner(ip="127.158.200.1", spec=MODELS["S19"], time_scale=0.01,
                         firmware_version="2022-12")


@pytest.mark.parametrize("command", RPC)
def test_rpc_replies_have_the_captured_shape(s19: EmulatedMiner, command: str) -> None:
    assert diff(shape(capture(command)), shape(emulated(command, s19))) == []


def test_system_info_has_the_captured_shape_and_version_format() -> None:
    s21 = EmulatedMiner(ip="127.158.200.2", spec=MODELS["S21"], firmware_version="2025-10")
    real, ours = capture("system_info"), web(cgi_get_system_info, s21)
    assert diff(shape(real), shape(ours)) == []
    # the captured S21's firmware is the emulated FR-1.12 generation's, character for character
    assert ours["system_filesystem_version"] == real["system_filesystem_version"]
    assert ours["system_kernel_version"] == real["system_kernel_version"]
    assert ours["minertype"] == real["minertype"]


async def _parsed(miner: BMMiner, replies: dict[str, dict]) -> dict:
    """What pyasic's parsers make of one set of replies (no network: each is handed in)."""
    boards = await BMMiner._get_hashboards(miner, rpc_stats=replies["stats"])
    return {
        "hashrate_ths": float(await miner._get_hashrate(rpc_summary=replies["summary"])),
        "expected_ths": float(await miner._get_expected_hashrate(rpc_stats=replies["stats"])),
        "boards": [(b.slot, b.chips, b.missing, b.chip_temp, b.temp, float(b.hashrate))
                   for b in boards],
        "fans": [f.speed for f in await miner._get_fans(rpc_stats=replies["stats"])],
        "uptime_s": await miner._get_uptime(rpc_stats=replies["stats"]),
        "fw_ver": await miner._get_fw_ver(rpc_version=replies["version"]),
        "api_ver": await miner._get_api_ver(rpc_version=replies["version"]),
        "pools": [str(p.url) for p in await miner._get_pools(rpc_pools=replies["pools"])],
    }


async def test_pyasic_parses_captures_and_emulator_alike(s19: EmulatedMiner) -> None:
    real = await _parsed(BMMinerS19Pro("127.158.200.3"), {c: capture(c) for c in RPC})
    ours = await _parsed(BMMinerS19("127.158.200.4"), {c: emulated(c, s19) for c in RPC})
    # hashrate: within a few percent of what the same machine expects of itself
    assert real["hashrate_ths"] == pytest.approx(real["expected_ths"], rel=0.05)
    assert ours["hashrate_ths"] == pytest.approx(ours["expected_ths"], rel=0.05)
    assert ours["expected_ths"] == pytest.approx(MODELS["S19"].hashrate_ths)
    # boards: three real ones of four slots, numbered alike, chips counted, both sensors read
    assert [b[0] for b in ours["boards"]] == [b[0] for b in real["boards"]] == [0, 1, 2]
    for (_, chips, missing, chip_t, board_t, rate), (_, rchips, rmissing, *_r) in zip(
            ours["boards"], real["boards"], strict=True):
        assert not missing and not rmissing and chips > 0 and rchips > 0
        assert 30 < chip_t < 110 and 30 < board_t < 110
        assert rate == pytest.approx(ours["hashrate_ths"] / 3, rel=0.1)
    # fans: four, spinning
    assert len(ours["fans"]) == len(real["fans"]) == 4
    assert all(f > 1000 for f in ours["fans"] + real["fans"])
    # uptime, firmware and API versions: same kinds; the firmware is the captured build
    assert isinstance(ours["uptime_s"], int) and isinstance(real["uptime_s"], int)
    assert ours["fw_ver"] == real["fw_ver"] == GENERATIONS["2022-12"].compile_time
    assert ours["api_ver"] == real["api_ver"] == "3.1"
    assert len(ours["pools"]) >= 1 and all(p.startswith("stratum+tcp://") for p in
                                            ours["pools"] + real["pools"])


async def test_work_mode_reads_the_same_way(s19: EmulatedMiner) -> None:
    """No capture of get_miner_conf.cgi exists; asic-rs#245 quotes a real one's work mode as a
    string ("bitmain-work-mode":"0"). pyasic reads the emulator's mode from that key."""
    conf = web(cgi_get_miner_conf, s19)
    assert conf["bitmain-work-mode"] == "0"
    miner = BMMinerS19("127.158.200.5")
    assert await miner._is_mining(web_get_conf=conf) is True
    s19.sleep()
    assert await miner._is_mining(web_get_conf=web(cgi_get_miner_conf, s19)) is False


def test_stock_api_groups_refuse_config_and_devdetails(s19: EmulatedMiner) -> None:
    for command in ("config", "devdetails"):
        status = emulated(command, s19)["STATUS"][0]
        assert (status["STATUS"], status["Code"]) == ("E", 45)
        assert status["Msg"] == f"Access denied to '{command}' command"
