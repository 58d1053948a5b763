"""Fault injection, observed from the client side with unmodified pyasic.

Each fault is switched at run time through the control API on a dedicated miner, and must be
visible to a client exactly as the broken machine would be: hang -> timeouts, refuse ->
ECONNREFUSED, garbage -> decode errors / empty data, slow -> measurable delay, ignore_sleep ->
the firmware claims to sleep while the truth keeps mining.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from pyasic import get_miner
from pyasic.errors import APIError

from curtaild.emulator.server import json_request_complete
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

FLEET = """
[[miner]]
model = "S19j Pro"
count = 6
[[miner]]
model = "BitAxe Gamma"
[[miner]]
model = "S21"
ip = "127.10.3.50"
fault = "refuse"
"""
HANG, REFUSE, GARBAGE, SLOW, IGNORE, CYCLE, AXE = (f"127.10.3.{i}" for i in range(1, 8))
STARTS_REFUSED = "127.10.3.50"


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(fleet_toml=FLEET, first_ip="127.10.3.1", time_scale=0.01) as e:
        yield e


async def test_hang_times_out_and_keeps_the_connection_open(emu: EmulatorProcess) -> None:
    miner = await get_miner(HANG)
    assert miner is not None
    emu.set_fault(HANG, "hang")
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(miner.get_data(), 2.0)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(miner.rpc.version(), 1.0)
        reader, writer = await asyncio.open_connection(HANG, 4028)  # accepted...
        writer.write(b'{"command":"summary"}')
        await writer.drain()
        with pytest.raises(TimeoutError):  # ...read, never answered, never closed
            await asyncio.wait_for(reader.read(), 1.0)
        writer.close()
    finally:
        emu.set_fault(HANG, "none")
    assert (await asyncio.wait_for(miner.get_data(), 10)).hashrate is not None


async def test_refuse_stops_listening_until_cleared(emu: EmulatorProcess) -> None:
    truth = emu.set_fault(REFUSE, "refuse")
    assert truth["listening"] is False and truth["state"] == "mining"
    try:
        for port in (4028, 80):
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(REFUSE, port)
        start = time.monotonic()
        assert await get_miner(REFUSE) is None
        assert time.monotonic() - start < 2.5
    finally:
        emu.set_fault(REFUSE, "none")
    assert emu.miner(REFUSE)["listening"] is True
    assert type(await get_miner(REFUSE)).__name__ == "BMMinerS19jPro"


async def test_fault_from_fleet_file_applies_at_start(emu: EmulatorProcess) -> None:
    assert emu.miner(STARTS_REFUSED)["fault"] == "refuse"
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(STARTS_REFUSED, 4028)
    emu.set_fault(STARTS_REFUSED, "none")
    assert type(await get_miner(STARTS_REFUSED)).__name__ == "BMMinerS21"


async def test_garbage_breaks_decoding(emu: EmulatorProcess) -> None:
    miner = await get_miner(GARBAGE)
    emu.set_fault(GARBAGE, "garbage")
    try:
        with pytest.raises(APIError):
            await miner.rpc.version()
        reader, writer = await asyncio.open_connection(GARBAGE, 4028)
        writer.write(b'{"command":"version"}')
        raw = await asyncio.wait_for(reader.read(), 2)
        assert raw.startswith(b'{"STATUS"') and not raw.rstrip(b"\x00").endswith(b"}")
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(f"http://{GARBAGE}/")
        data = await asyncio.wait_for(miner.get_data(), 10)
        assert data.hashrate is None and data.mac is None and data.uptime is None
        assert await get_miner(GARBAGE) is None
    finally:
        emu.set_fault(GARBAGE, "none")
    assert (await miner.get_data()).hashrate is not None


async def test_garbage_on_bitaxe_makes_pyasic_raise(emu: EmulatorProcess) -> None:
    """pyasic's ESPMiner backend raises from get_data() (via get_config) instead of
    returning empty data, so a driver has to catch APIError for Bitaxes."""
    miner = await get_miner(AXE)
    emu.set_fault(AXE, "garbage")
    try:
        with pytest.raises(APIError):
            await miner.web.system_info()
        with pytest.raises(APIError):
            await asyncio.wait_for(miner.get_data(), 10)
    finally:
        emu.set_fault(AXE, "none")
    assert (await miner.get_data()).wattage is not None


async def test_slow_delays_every_reply(emu: EmulatorProcess) -> None:
    miner = await get_miner(SLOW)
    start = time.monotonic()
    await miner.rpc.summary()
    baseline = time.monotonic() - start
    emu.set_fault(SLOW, "slow", delay_s=1.0)
    try:
        start = time.monotonic()
        summary = await miner.rpc.summary()
        slow = time.monotonic() - start
        assert summary["SUMMARY"][0]["GHS 5s"] > 0  # late, but correct
        assert slow >= 1.0 and slow > baseline + 0.9
        async with httpx.AsyncClient() as client:
            start = time.monotonic()
            resp = await client.get(f"http://{SLOW}/", timeout=5)
            assert resp.status_code == 401 and time.monotonic() - start >= 1.0
    finally:
        emu.set_fault(SLOW, "none")


async def test_ignore_sleep_claims_success_but_keeps_mining(emu: EmulatorProcess) -> None:
    miner = await get_miner(IGNORE)
    emu.set_fault(IGNORE, "ignore_sleep")
    try:
        assert await miner.stop_mining() is True
        data = await miner.get_data()
        assert data.is_mining is False  # the firmware says it sleeps...
        truth = emu.miner(IGNORE)
        assert truth["state"] == "mining" and truth["hashrate_ths"] > 90  # ...it does not
        assert float(data.hashrate) > 90  # and the hashrate it reports gives it away
    finally:
        emu.set_fault(IGNORE, "none")
    assert await miner.resume_mining() is True
    assert (await miner.get_data()).is_mining is True


async def test_faults_switch_back_and_forth(emu: EmulatorProcess) -> None:
    """Every kind in turn on one miner; after 'none' it answers normally again."""
    miner = await get_miner(CYCLE)
    for kind in ("refuse", "hang", "garbage", "slow", "refuse", "none"):
        emu.set_fault(CYCLE, kind, delay_s=0.2)
    data = await asyncio.wait_for(miner.get_data(), 10)
    assert float(data.hashrate) > 90
    assert emu.miner(CYCLE)["fault"] == "none"


@pytest.mark.parametrize(("buf", "complete"), [
    (b'{"command": "version"}', True),
    (b'{"command": "ver', False),
    (b'{"command": "a}b"', False),
    (b'{"command": "a\\"}"}', True),
    (b'  {"command": {"x": [1, 2]}}', True),
    (b'{"command": {"x": [1, 2]}', False),
    (b"summary|", True),
    (b"", False),
])
def test_json_request_framing(buf: bytes, complete: bool) -> None:
    assert json_request_complete(buf) is complete
