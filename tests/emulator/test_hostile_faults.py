"""Hostile faults (endless, huge, nested, accept_close, drip), observed from the client side.

Each is switched on through the control API and read with a plain socket or httpx, the way a
careless client would read it: the bytes a hostile device sends are what is asserted (how
many, how framed, how fast), so the driver tests (tests/drivers/test_miners_hostile.py) can
rely on them. The Bitaxe has only a web port: it shows the HTTP framing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from curtaild.emulator.fleet import FleetError, plan_fleet_text
from curtaild.emulator.server import NESTED_DEPTH
from tests.support.emulator import EmulatorError, EmulatorProcess

pytestmark = pytest.mark.integration

FLEET = """
[[miner]]
model = "S19j Pro"
count = 6
[[miner]]
model = "BitAxe Gamma"
count = 2
[[miner]]
model = "S19j Pro"
ip = "127.151.0.50"
fault = "huge"
size_bytes = 300000
"""
ENDLESS, HUGE, NESTED, CLOSE, DRIP, SPARE = (f"127.151.0.{i}" for i in range(1, 7))
AXE, AXE2 = "127.151.0.7", "127.151.0.8"
FROM_FILE = "127.151.0.50"


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(fleet_toml=FLEET, first_ip="127.151.0.1", time_scale=0.01) as e:
        yield e


async def rpc_read(ip: str, *, limit: int, timeout_s: float) -> tuple[bytes, bool]:
    """Send a summary request and read until EOF, ``limit`` bytes or ``timeout_s``.

    Returns (the first ``limit`` bytes read, whether the server ended the reply itself).
    """
    reader, writer = await asyncio.open_connection(ip, 4028)
    writer.write(b'{"command":"summary"}')
    await writer.drain()
    data = bytearray()
    ended = False
    deadline = time.monotonic() + timeout_s
    try:
        while len(data) < limit:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            if not chunk:
                ended = True
                break
            data += chunk
    finally:
        writer.close()
    return bytes(data[:limit]), ended


async def test_endless_streams_past_any_limit_on_every_port(emu: EmulatorProcess) -> None:
    emu.set_fault(ENDLESS, "endless")
    emu.set_fault(AXE, "endless")
    try:
        data, ended = await rpc_read(ENDLESS, limit=20 * 1024 * 1024, timeout_s=20)
        assert not ended and len(data) == 20 * 1024 * 1024
        assert data.startswith(b'{"STATUS":[{"STATUS":"S"')  # looks like a real reply
        # It starts on accept: no request needed.
        reader, writer = await asyncio.open_connection(ENDLESS, 80)
        first = await asyncio.wait_for(reader.readexactly(65536), 5)
        writer.close()
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")
        # HTTP: a 200 head without Content-Length, then a body that never ends.
        got = 0
        async with httpx.AsyncClient(timeout=5) as client, \
                client.stream("GET", f"http://{AXE}/api/system/info") as resp:
            assert resp.status_code == 200 and "content-length" not in resp.headers
            async for chunk in resp.aiter_raw():
                got += len(chunk)
                if got > 10 * 1024 * 1024:
                    break
        assert got > 10 * 1024 * 1024
    finally:
        emu.set_fault(ENDLESS, "none")
        emu.set_fault(AXE, "none")
    data, ended = await rpc_read(ENDLESS, limit=1 << 20, timeout_s=5)
    assert ended and json.loads(data.rstrip(b"\0"))["SUMMARY"]


async def test_huge_is_one_well_framed_reply_of_the_asked_size(emu: EmulatorProcess) -> None:
    size = 12 * 1024 * 1024
    emu.set_fault(HUGE, "huge", size_bytes=size)
    emu.set_fault(AXE2, "huge", size_bytes=size)
    try:
        data, ended = await rpc_read(HUGE, limit=size + 1, timeout_s=30)
        assert ended and len(data) == size
        assert json.loads(data)["STATUS"][0]["STATUS"] == "S"  # valid JSON, only enormous
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.get(f"http://{AXE2}/api/system/info")
        assert resp.status_code == 200 and int(resp.headers["content-length"]) == size
        assert len(resp.content) == size
    finally:
        emu.set_fault(HUGE, "none")
        emu.set_fault(AXE2, "none")
    # The fleet file sets it too, with its own size; the default is the probe's 50 MB.
    data, ended = await rpc_read(FROM_FILE, limit=1 << 20, timeout_s=10)
    assert ended and len(data) == 300000
    assert emu.miner(FROM_FILE)["fault_size_bytes"] == 300000
    assert emu.set_fault(HUGE, "huge")["fault_size_bytes"] == 50 * 1024 * 1024
    emu.set_fault(HUGE, "none")


async def test_nested_is_short_valid_json_that_breaks_a_recursive_parser(
        emu: EmulatorProcess) -> None:
    emu.set_fault(NESTED, "nested")
    emu.set_fault(AXE, "nested")
    try:
        data, ended = await rpc_read(NESTED, limit=1 << 20, timeout_s=10)
        assert ended and len(data) < 300_000
        assert data.count(b"[") == NESTED_DEPTH and data.endswith(b"}")
        with pytest.raises(RecursionError):
            json.loads(data)
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.get(f"http://{AXE}/api/system/info")
        assert resp.status_code == 200 and resp.content.count(b"[") == NESTED_DEPTH
        with pytest.raises(RecursionError):
            resp.json()
    finally:
        emu.set_fault(NESTED, "none")
        emu.set_fault(AXE, "none")


async def test_accept_close_accepts_then_closes_without_a_byte(emu: EmulatorProcess) -> None:
    emu.set_fault(CLOSE, "accept_close")
    emu.set_fault(AXE, "accept_close")
    try:
        reader, writer = await asyncio.open_connection(CLOSE, 4028)  # accepted (not refused)
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        except ConnectionResetError:
            pass  # closed with our request unread: the kernel resets instead of FIN
        writer.close()
        async with httpx.AsyncClient(timeout=5) as client:
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                await client.get(f"http://{AXE}/api/system/info")
        assert emu.miner(CLOSE)["listening"]
    finally:
        emu.set_fault(CLOSE, "none")
        emu.set_fault(AXE, "none")


async def test_drip_sends_the_real_reply_one_byte_per_interval(emu: EmulatorProcess) -> None:
    emu.set_fault(DRIP, "drip", delay_s=0.02)
    emu.set_fault(AXE2, "drip", delay_s=0.001)
    try:
        started = time.monotonic()
        data, ended = await rpc_read(DRIP, limit=1 << 20, timeout_s=1.0)
        took = time.monotonic() - started
        assert not ended and took >= 0.9
        # about one byte per 20 ms: a reply of a few hundred bytes takes seconds
        assert 10 <= len(data) <= 80, len(data)
        assert data.startswith(b'{"STATUS":')
        # HTTP: the real, complete reply, only slow (1 ms a byte here, so it finishes).
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=30) as client:
            resp = await client.get(f"http://{AXE2}/api/system/info")
        assert resp.status_code == 200 and resp.json()["hashRate"] >= 0
        assert time.monotonic() - started >= len(resp.content) * 0.001
    finally:
        emu.set_fault(DRIP, "none")
        emu.set_fault(AXE2, "none")


def test_bad_hostile_parameters_are_refused(emu: EmulatorProcess) -> None:
    with pytest.raises(EmulatorError, match="size_bytes"):
        emu.set_fault(SPARE, "huge", size_bytes=-1)
    with pytest.raises(EmulatorError, match="size_bytes"):
        emu.set_fault(SPARE, "huge", size_bytes=1.5)
    with pytest.raises(FleetError, match=r"miner\[0\]\.size_bytes"):
        plan_fleet_text('[[miner]]\nmodel = "S19"\nfault = "huge"\nsize_bytes = "big"\n')
    plan = plan_fleet_text('[[miner]]\nmodel = "S19"\nfault = "drip"\ndelay_s = 0.5\n')
    assert plan.miners[0].fault == "drip" and plan.miners[0].delay_s == 0.5
