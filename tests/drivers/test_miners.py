"""The miner driver (drivers/miners.py): unmodified pyasic against the emulated firmware.

Judged by the emulator's physical truth (its control API), one machine per firmware family:
what a reading says, commands that really change the machine, a firmware whose power targets
are a ladder of presets, and the faults a real fleet throws (hang, garbage).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from curtaild.controller.config import FleetConfig
from curtaild.core.snapshot import Command
from curtaild.drivers.miners import CommandFailed, MinerDriver
from tests.support.driving import site_credentials
from tests.support.emulator import SITE_WHATSMINER_PASSWORD, EmulatorProcess

pytestmark = pytest.mark.integration

FLEET = f"""
[[miner]]
model = "S19"
[[miner]]
model = "M30S"
password = "{SITE_WHATSMINER_PASSWORD}"
[[miner]]
model = "S19 XP"
[[miner]]
model = "S19j Pro LuxOS"
[[miner]]
model = "BitAxe Gamma"
"""
FIRST = "127.67.0.1"
S19, M30S, XP, LUX, AXE = (f"127.67.0.{i}" for i in range(1, 6))


@pytest.fixture(scope="module")
def emu():
    with EmulatorProcess(fleet_toml=FLEET, first_ip=FIRST, time_scale=0.01) as e:
        yield e


def driver(poll_timeout_s: float = 5.0) -> MinerDriver:
    cfg = FleetConfig(ranges=[f"{FIRST}-127.67.0.5"], poll_timeout_s=poll_timeout_s,
                      discovery_timeout_s=8.0, rediscover_after_failures=2,
                      credentials=site_credentials())
    return MinerDriver(cfg, poll_interval_s=1.0)


def cmd(ip: str, action: str, limit: float | None = None) -> Command:
    return Command(key=ip, ip=ip, action=action, power_limit_w=limit,  # type: ignore[arg-type]
                   reason="test", delta_power_w=0.0)


async def test_readings_match_the_truth(emu: EmulatorProcess) -> None:
    snap = await driver().observe()
    got = {r.ip: r for r in snap.miners}
    truth = {m["ip"]: m for m in emu.miners()}
    assert set(got) == set(truth)
    for ip, r in got.items():
        t = truth[ip]
        assert r.state == "mining", (ip, r.error)
        assert r.hashrate_ths == pytest.approx(t["hashrate_ths"], rel=0.1), ip
        assert r.temp_c is not None and r.temp_c > 30, ip
        if ip in (XP, LUX):  # pyasic reads no MAC or serial from LuxOS: keyed by address
            assert r.key == ip
        else:
            assert r.key == t["mac"] or r.key == t["serial"], (ip, r.key)
    # Stock Antminer firmware reports no wattage: the model table stands in, and says so.
    assert got[S19].power_source in ("model_table", "nameplate")
    assert got[S19].power_w == 3250.0
    for ip in (M30S, XP, LUX, AXE):
        assert got[ip].power_source == "firmware", ip
        assert got[ip].power_w == pytest.approx(truth[ip]["power_w"], rel=0.1), ip
    assert not got[S19].supports_power_limit and not got[AXE].supports_sleep
    assert got[M30S].supports_power_limit and got[LUX].supports_power_limit
    # LuxOS power targets are its profile ladder: the floor is the higher of its lowest
    # profile and the model table's 1200 W (the full 25-step ladder reaches lower: 861 W on
    # the S19j Pro, 845 W on the S19 XP), the ceiling the lower of the top profile and the
    # table's.
    assert got[LUX].min_power_limit_w == 1200.0
    assert got[XP].min_power_limit_w == 1200.0
    assert got[LUX].max_power_limit_w == 3400.0 and got[XP].max_power_limit_w == 3600.0
    assert got[M30S].min_power_limit_w == 1500.0


async def test_sleep_and_wake_each_family_for_real(emu: EmulatorProcess) -> None:
    d = driver()
    await d.observe()
    for ip in (S19, M30S, LUX):
        await d.execute(cmd(ip, "sleep"), observed_state="mining", timeout_s=20, attempts=3)
        assert emu.wait_state(ip, "sleeping", 10)["state"] == "sleeping"
    seen = {r.ip: r for r in (await d.observe()).miners}
    assert {ip: seen[ip].state for ip in (S19, M30S, LUX)} == dict.fromkeys(
        (S19, M30S, LUX), "sleeping")
    assert seen[S19].power_source == "idle_estimate"
    for ip in (S19, M30S, LUX):
        await d.execute(cmd(ip, "run"), observed_state="sleeping", timeout_s=20, attempts=3)
        assert emu.wait_state(ip, "mining", 30)["state"] == "mining"
    seen = {r.ip: r for r in (await d.observe()).miners}
    assert all(seen[ip].state == "mining" for ip in (S19, M30S, LUX))


def btminer_up(emu: EmulatorProcess, ip: str, within_s: float = 10.0) -> None:
    """A Whatsminer restarts btminer to apply each accepted limit and is silent meanwhile,
    as real firmware is: wait for it before the next command (or the next test)."""
    deadline = time.monotonic() + within_s
    while emu.miner(ip).get("process") == "restarting":
        assert time.monotonic() < deadline, f"{ip}: btminer still restarting"
        time.sleep(0.05)


async def test_luxos_target_under_its_lowest_profile_takes_the_lowest(
        emu: EmulatorProcess) -> None:
    d = driver()
    await d.observe()
    out = await d.execute(cmd(LUX, "limit", 800.0), observed_state="mining", timeout_s=20,
                          attempts=2)
    assert "set_power_limit" in out
    assert emu.miner(LUX)["power_limit_w"] == 861.0  # 145MHz, the lowest of 25 profiles
    r = {m.ip: m for m in (await d.observe()).miners}[LUX]
    assert r.power_limit_w == pytest.approx(861.0, abs=30)
    await d.execute(cmd(M30S, "limit", 2000.0), observed_state="mining", timeout_s=20, attempts=2)
    assert emu.miner(M30S)["power_limit_w"] == 2000.0
    # A target a firmware cannot take at all is a clear failure, not a silent success.
    with pytest.raises(CommandFailed, match="set_power_limit returned False"):
        await d.execute(cmd(S19, "limit", 2000.0), observed_state="mining", timeout_s=10,
                        attempts=1)
    for ip, full in ((LUX, 3068.0), (M30S, 3344.0)):
        btminer_up(emu, ip)
        await d.execute(cmd(ip, "run", full), observed_state="mining", timeout_s=20, attempts=2)
    btminer_up(emu, M30S)


async def test_a_hung_miner_costs_one_deadline_and_is_marked(emu: EmulatorProcess) -> None:
    d = driver(poll_timeout_s=2.0)
    await d.observe()
    emu.set_fault(M30S, "hang")
    try:
        started = time.monotonic()
        snap = await d.observe()
        took = time.monotonic() - started
        r = {m.ip: m for m in snap.miners}
        assert r[M30S].state == "unreachable" and "timeout" in (r[M30S].error or "")
        assert all(r[ip].state == "mining" for ip in (S19, XP, LUX, AXE))
        assert took < 2.0 + 3.0  # one deadline, plus the healthy polls alongside it
    finally:
        emu.set_fault(M30S, "none")
    recovered = None
    for _ in range(10):
        recovered = {m.ip: m for m in (await d.observe()).miners}.get(M30S)
        if recovered is not None and recovered.state == "mining":
            break
        await asyncio.sleep(0.5)
    assert recovered is not None and recovered.state == "mining"


async def test_miners_that_hung_last_sweep_do_not_hold_the_healthy_ones_slots(
        emu: EmulatorProcess) -> None:
    deadline_s = 4.0
    cfg = FleetConfig(ranges=[f"{FIRST}-127.67.0.5"], poll_timeout_s=deadline_s,
                      discovery_timeout_s=8.0, rediscover_after_failures=10,
                      poll_concurrency=2, credentials=site_credentials())
    d = MinerDriver(cfg, poll_interval_s=1.0)
    await d.observe()
    hung = (S19, M30S)  # as many as there are poll slots
    for ip in hung:
        emu.set_fault(ip, "hang")
    try:
        await d.observe()  # they fail once: suspects from now on
        started = time.time()
        snap = await d.observe()
    finally:
        for ip in hung:
            emu.set_fault(ip, "none")
    r = {m.ip: m for m in snap.miners}
    assert all(r[ip].state == "unreachable" for ip in hung)
    # Healthy machines are polled at once, not after the suspects' deadline (with one shared
    # pool the two hung miners took both slots for the whole deadline first).
    for ip in (XP, LUX, AXE):
        assert r[ip].state == "mining", ip
        assert r[ip].observed_at - started < deadline_s / 2, (ip, r[ip].observed_at - started)


async def test_garbage_is_marked_and_retried_never_raised(emu: EmulatorProcess) -> None:
    d = driver()
    await d.observe()
    for ip in (S19, M30S, LUX, AXE):
        emu.set_fault(ip, "garbage")
    try:
        for _ in range(3):  # past rediscover_after_failures: re-discovery under garbage too
            r = {m.ip: m for m in (await d.observe()).miners}
            for ip in (S19, M30S, LUX, AXE):
                assert r[ip].state == "unreachable" and r[ip].error, ip
            assert r[XP].state == "mining"
    finally:
        for ip in (S19, M30S, LUX, AXE):
            emu.set_fault(ip, "none")
    states: dict[str, str] = {}
    for _ in range(20):
        states = {m.ip: m.state for m in (await d.observe()).miners}
        if all(s == "mining" for s in states.values()) and len(states) == 5:
            break
        await asyncio.sleep(0.5)
    assert states == dict.fromkeys((S19, M30S, XP, LUX, AXE), "mining")
    assert d.error_counts.get("garbage", 0) + d.error_counts.get("error", 0) > 0
