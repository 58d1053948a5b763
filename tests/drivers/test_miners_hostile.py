"""The miner driver against hostile devices (issue 15): bounded bytes, deadlines that end.

For each hostile fault of the emulator, on one machine of every firmware family (RPC-only
Antminer polls, btminer, LuxOS RPC+web, the Bitaxe's web API): a poll yields an unreachable
reading within its deadline, discovery gives up within its own, Python memory stays bounded
while it happens (tracemalloc's peak: a 50 MB or endless reply would show in full), and no
task is left running afterwards -- pyasic's discovery probes included, which it leaves running
when its caller's deadline cancels it.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from curtaild.controller.config import FleetConfig
from curtaild.core.snapshot import Command
from curtaild.drivers.miners import CommandFailed, MinerDriver, ObservationAborted
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

FLEET = """
[[miner]]
model = "S19"
[[miner]]
model = "M30S"
[[miner]]
model = "S19j Pro LuxOS"
[[miner]]
model = "BitAxe Gamma"
"""
FIRST = "127.151.1.1"
IPS = S19, M30S, LUX, AXE = tuple(f"127.151.1.{i}" for i in range(1, 5))
POLL_S, DISCOVERY_S = 2.0, 3.0
#: Python heap allowed above the start of one hostile sweep (pyasic parses and copies a
#: capped 1 MiB reply a few times per connection; four miners, a few connections each).
PEAK_BYTES = 48 * 1024 * 1024
HOSTILE = {"endless": {}, "huge": {}, "nested": {}, "accept_close": {},
           "drip": {"delay_s": 0.05}}


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(fleet_toml=FLEET, first_ip=FIRST, time_scale=0.01) as e:
        yield e


def driver(rediscover_after_failures: int = 100) -> MinerDriver:
    cfg = FleetConfig(ranges=[f"{FIRST}-127.151.1.4"], poll_timeout_s=POLL_S,
                      discovery_timeout_s=DISCOVERY_S,
                      rediscover_after_failures=rediscover_after_failures)
    return MinerDriver(cfg, poll_interval_s=1.0)


def leftover_tasks(d: MinerDriver) -> list[asyncio.Task]:
    """Every task still alive but this test's own and the driver's background discoveries."""
    mine = {asyncio.current_task(), *d._rediscovering.values()}
    return [t for t in asyncio.all_tasks() if t not in mine and not t.done()]


def set_all(emu: EmulatorProcess, kind: str, **kw: float) -> None:
    for ip in IPS:
        emu.set_fault(ip, kind, **kw)


async def sweep(d: MinerDriver) -> tuple[dict, float, int]:
    """One observe(): readings by ip, seconds it took, Python heap peak above its start."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        started = time.monotonic()
        snap = await d.observe()
        took = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return {r.ip: r for r in snap.miners}, took, peak


@pytest.mark.parametrize("kind", list(HOSTILE))
async def test_a_hostile_miner_is_unreachable_within_its_deadline(
        emu: EmulatorProcess, kind: str) -> None:
    d = driver()
    first = {r.ip: r for r in (await d.observe()).miners}
    assert all(first[ip].state == "mining" for ip in IPS), first
    set_all(emu, kind, **HOSTILE[kind])
    try:
        got, took, peak = await sweep(d)
        leftovers = leftover_tasks(d)
    finally:
        set_all(emu, "none")
    for ip in IPS:
        assert got[ip].state == "unreachable", (kind, ip, got[ip])
        assert got[ip].error and len(got[ip].error) <= 300, (kind, ip, got[ip].error)
    assert took < POLL_S + 2.0, (kind, took)
    assert peak < PEAK_BYTES, (kind, peak)
    assert not leftovers, (kind, leftovers)


@pytest.mark.parametrize("kind", list(HOSTILE))
async def test_discovery_of_a_hostile_address_ends_at_its_deadline(
        emu: EmulatorProcess, kind: str) -> None:
    set_all(emu, kind, **HOSTILE[kind])
    try:
        d = driver()
        got, took, peak = await sweep(d)  # first sight: discovered inline, under its deadline
        leftovers = leftover_tasks(d)
    finally:
        set_all(emu, "none")
    assert got == {}, (kind, got)  # never identified: no reading, no miner object
    assert d.error_counts.get("discovery") == len(IPS), (kind, d.error_counts)
    assert took < DISCOVERY_S + 2.0, (kind, took)
    assert peak < PEAK_BYTES, (kind, peak)
    assert not leftovers, (kind, leftovers)


async def test_background_rediscovery_of_a_hostile_address_backs_off(
        emu: EmulatorProcess) -> None:
    d = driver(rediscover_after_failures=1)
    await d.observe()
    emu.set_fault(S19, "endless")
    try:
        attempts = []
        until = time.monotonic() + 6.0
        while time.monotonic() < until:  # a sweep every 0.25 s for 6 s
            await d.observe()
            task = d._rediscovering.get(S19)
            if task is not None:
                await asyncio.wait({task}, timeout=DISCOVERY_S + 2.0)
            attempts.append(d._tracked[S19].discovery_attempts)
            assert not leftover_tasks(d)
            await asyncio.sleep(0.25)
        t = d._tracked[S19]
    finally:
        emu.set_fault(S19, "none")
    # Each failed re-discovery doubles the wait (poll_interval_s 1 s: 1, 2, 4 ... s): about
    # twenty sweeps start three re-discoveries, not twenty.
    assert len(attempts) >= 15 and 2 <= attempts[-1] <= 4, attempts
    assert t.next_discovery_at > time.monotonic()  # and still waiting


async def test_stop_abandons_the_sweep_in_progress_and_refuses_new_commands(
        emu: EmulatorProcess) -> None:
    d = driver()
    await d.observe()
    emu.set_fault(S19, "drip", delay_s=0.05)  # its poll runs to the 2 s deadline
    try:
        sweep = asyncio.ensure_future(d.observe())
        await asyncio.sleep(0.5)
        assert not sweep.done()
        started = time.monotonic()
        d.stop()
        with pytest.raises(ObservationAborted):
            await sweep
        assert time.monotonic() - started < 0.5  # not the rest of the poll deadline
        assert not leftover_tasks(d)
        with pytest.raises(CommandFailed, match="stopping"):
            await d.execute(Command(key=M30S, ip=M30S, action="sleep", power_limit_w=None,
                                    reason="test", delta_power_w=0.0),
                            observed_state="mining", timeout_s=10, attempts=1)
        with pytest.raises(ObservationAborted):
            await d.observe()
    finally:
        emu.set_fault(S19, "none")
    assert emu.miner(M30S)["state"] == "mining"


@pytest.mark.parametrize("kind", list(HOSTILE))
async def test_a_command_to_a_hostile_miner_fails_within_its_deadline(
        emu: EmulatorProcess, kind: str) -> None:
    d = driver()
    await d.observe()
    timeout_s = 3.0
    for ip in (M30S, LUX):  # btminer and LuxOS RPC (HTTP replies: the poll tests above)
        emu.set_fault(ip, kind, **HOSTILE[kind])
        try:
            started = time.monotonic()
            with pytest.raises(CommandFailed) as err:
                await d.execute(Command(key=ip, ip=ip, action="sleep", power_limit_w=None,
                                        reason="test", delta_power_w=0.0),
                                observed_state="mining", timeout_s=timeout_s, attempts=3)
            took = time.monotonic() - started
            leftovers = leftover_tasks(d)
        finally:
            emu.set_fault(ip, "none")
        # a credential check first (Whatsminer; its own deadline), then the command's
        assert took < POLL_S + 1.0 + timeout_s + 0.5, (kind, ip, took, err.value)
        assert not leftovers, (kind, ip, leftovers)
        assert len(str(err.value)) <= 300, (kind, ip)
        if emu.miner(ip)["state"] != "mining":  # huge/nested/drip replace only the reply:
            emu.action(ip, "wake")              # the firmware did act on the request
            emu.wait_state(ip, "mining", 30)
