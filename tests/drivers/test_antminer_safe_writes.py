"""Stock Antminer sleep and wake through the driver: safe config writes on realistic firmware.

The driver (drivers/miners.py + drivers/antminer_writes.py) against the emulator's field
behaviour, judged by the emulator's truth: a config is only ever posted right after it was
read whole, never without a pool; the key each firmware generation obeys is used and the
result read back; a lying firmware is reported, not believed; the silence of the miner process
restarting after our own write is "transitioning", and the miner object is kept through it.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from curtaild.controller.config import FleetConfig
from curtaild.drivers import antminer_writes as amw
from curtaild.drivers.miners import CommandFailed, MinerDriver
from curtaild.emulator.families.antminer import CGI_S, GENERATIONS
from tests.support.driving import cmd
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

SCALE = 0.05  # the 20 s CGI takes 1 s, bmminer is silent 1.5 s, the boards boot 4.5 s
FLEET = """
[[miner]]
model = "S19j Pro"
firmware_version = "2022-12"
[[miner]]
model = "S21"
firmware_version = "2025-10"
[[miner]]
model = "S21"
firmware_version = "2025-02"
[[miner]]
model = "S19"
count = 2
"""
FIRST = "127.158.3.1"
OLD, NEW, LIAR, WIPE, HEM = (f"127.158.3.{i}" for i in range(1, 6))
ALL = [OLD, NEW, LIAR, WIPE, HEM]


@pytest.fixture(scope="module")
def emu():
    with EmulatorProcess(fleet_toml=FLEET, first_ip=FIRST, time_scale=SCALE) as e:
        yield e


def driver() -> MinerDriver:
    cfg = FleetConfig(hosts=ALL, poll_timeout_s=5.0, discovery_timeout_s=8.0,
                      rediscover_after_failures=2)
    return MinerDriver(cfg, poll_interval_s=1.0)


async def readings(d: MinerDriver) -> dict:
    return {r.ip: r for r in (await d.observe()).miners}


def client_actions(view: dict) -> list[str]:
    return [c[1] for c in view["changes"] if c[2] == "client"]


async def test_failed_config_read_then_sleep_posts_nothing(emu: EmulatorProcess) -> None:
    d = driver()
    assert (await readings(d))[WIPE].state == "mining"
    pools = emu.miner(WIPE)["pools"]
    emu.set_fault(WIPE, "wipe_pools_on_failed_read")
    try:
        with pytest.raises(CommandFailed, match=r"refused \(read_failed\)"):
            await d.execute(cmd(WIPE, "sleep"), observed_state="mining", timeout_s=5,
                            attempts=2)
        assert d.config_writes.get("refused_read_failed", 0) >= 1
        # pyasic's own paths on curtaild's object are guarded too: no empty pools posted
        miner = d._tracked[WIPE].miner
        for call in (miner.stop_mining, miner.resume_mining):
            with pytest.raises(CommandFailed, match="read_failed"):
                await call()
        with pytest.raises(amw.WriteRefused, match="no_pool"):
            await miner.send_config(await miner.get_config())  # read failed: empty pools
        view = emu.miner(WIPE)
        assert view["pools_ok"] is True and view["pools"] == pools
        assert view["state"] == "mining" and client_actions(view) == []
    finally:
        emu.set_fault(WIPE, "none")


async def test_asleep_with_a_failing_mode_read_is_unknown_not_mining(
        emu: EmulatorProcess) -> None:
    """A slept machine whose config read fails does not hash and cannot say why: read as
    mining at 0 TH/s, the loop "woke" it with nothing to send and gave it to the operator
    (soak seeds 11 and 88). It must read as unknown, then asleep once the firmware answers."""
    d = driver()
    await readings(d)
    await d.execute(cmd(WIPE, "sleep"), observed_state="mining", timeout_s=5, attempts=3)
    emu.wait_state(WIPE, "sleeping", timeout=30)
    await until_state(d, WIPE, "sleeping")
    emu.set_fault(WIPE, "wipe_pools_on_failed_read")
    try:
        r = (await readings(d))[WIPE]
        assert r.state == "unreachable", (r.state, r.error)
        assert "did not say whether it is asleep" in (r.error or "")
    finally:
        emu.set_fault(WIPE, "none")
    await until_state(d, WIPE, "sleeping")
    await d.execute(cmd(WIPE, "run"), observed_state="sleeping", timeout_s=5, attempts=3)
    emu.wait_state(WIPE, "mining", timeout=30)


async def until_state(d: MinerDriver, ip: str, state: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        seen = (await readings(d))[ip]
        if seen.state == state:
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"{ip} never read {state}: last {seen}")


async def test_each_generation_slept_and_woken_by_its_key_with_pools_intact(
        emu: EmulatorProcess) -> None:
    d = driver()
    await readings(d)
    pools = {ip: emu.miner(ip)["pools"] for ip in (OLD, NEW)}
    for ip, key in ((OLD, "miner-mode"), (NEW, "bitmain-work-mode")):
        start = time.monotonic()
        out = await d.execute(cmd(ip, "sleep"), observed_state="mining", timeout_s=5,
                              attempts=3)
        assert out == f"sleep: {key} 0->1, read back"
        assert time.monotonic() - start >= CGI_S * SCALE * 0.9  # waited for the slow CGI
        assert d._tracked[ip].write_key == key
        assert d._tracked[ip].fw_ver == GENERATIONS[emu.miner(ip)["firmware_generation"]] \
            .compile_time
    for ip in (OLD, NEW):
        emu.wait_state(ip, "sleeping", timeout=30)
    for ip in (OLD, NEW):
        out = await d.execute(cmd(ip, "run"), observed_state="sleeping", timeout_s=5,
                              attempts=3)
        assert out.startswith("wake: ") and out.endswith("1->0, read back")
    for ip in (OLD, NEW):
        view = emu.wait_state(ip, "mining", timeout=30)
        assert view["pools"] == pools[ip] and view["pools_ok"] is True
        assert [a for a in client_actions(view) if a in ("sleep", "wake", "pools")] == \
            ["sleep", "wake"]
    assert d.config_writes["applied"] == 4


async def test_the_write_waits_for_a_cgi_slower_than_the_command_timeout(
        emu: EmulatorProcess) -> None:
    """The real CGI answers in about 21 s; command_timeout_s (here 5 s) must not cut it off,
    nor may a retry post again while the first write is still being applied."""
    d = driver()
    await readings(d)
    sleeps = client_actions(emu.miner(OLD)).count("sleep")
    emu.set_fault(OLD, "slow_write", delay_s=6.0)
    try:
        start = time.monotonic()
        out = await d.execute(cmd(OLD, "sleep"), observed_state="mining", timeout_s=5,
                              attempts=3)
        assert out == "sleep: miner-mode 0->1, read back"
        assert time.monotonic() - start >= 6.0
    finally:
        emu.set_fault(OLD, "none")
    view = emu.wait_state(OLD, "sleeping", timeout=30)
    assert client_actions(view).count("sleep") == sleeps + 1  # posted once
    await d.execute(cmd(OLD, "run"), observed_state="sleeping", timeout_s=5, attempts=3)
    emu.wait_state(OLD, "mining", timeout=30)


async def test_slow_restarting_miner_is_transitioning_not_rediscovered(
        emu: EmulatorProcess) -> None:
    """Slept and woken within its grace: the silences after our own writes are expected, the
    miner object is kept (no re-discovery), and telemetry confirms each state."""
    d = driver()
    await readings(d)
    miner = d._tracked[NEW].miner
    await d.execute(cmd(NEW, "sleep"), observed_state="mining", timeout_s=5, attempts=3)
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = (await readings(d))[NEW]
        seen.append(r.state if r.error is None else r.error.split(":")[0])
        if r.state == "sleeping":
            break
        await asyncio.sleep(0.2)
    assert seen[-1] == "sleeping", seen
    assert seen.count("transitioning") >= 3 > d.cfg.rediscover_after_failures, seen
    assert d._tracked[NEW].miner is miner and d._tracked[NEW].failures == 0
    assert d._tracked[NEW].transition_until == 0.0  # confirmed by telemetry
    assert d.error_counts.get("transitioning", 0) >= 3
    assert not {"error", "timeout", "refused", "garbage"} & set(d.error_counts)

    await d.execute(cmd(NEW, "run"), observed_state="sleeping", timeout_s=5, attempts=3)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = (await readings(d))[NEW]
        if r.state == "mining" and r.hashrate_ths > 100:
            break
        await asyncio.sleep(0.2)
    assert r.state == "mining" and r.hashrate_ths > 100
    assert d._tracked[NEW].miner is miner and d._tracked[NEW].transition_until == 0.0
    assert emu.miner(NEW)["pools_ok"] is True


async def test_silence_without_our_command_is_still_a_fault(emu: EmulatorProcess) -> None:
    d = driver()
    await readings(d)
    emu.set_fault(OLD, "refuse")
    try:
        for _ in range(2):
            r = (await readings(d))[OLD]
            assert r.state == "unreachable" and not r.error.startswith("transitioning")
        assert d._tracked[OLD].miner is None  # re-discovered, as before
    finally:
        emu.set_fault(OLD, "none")


async def test_a_lying_firmware_is_reported_once_not_retried(emu: EmulatorProcess) -> None:
    d = driver()
    await readings(d)
    restarts = [c for c in emu.miner(LIAR)["changes"] if c[1] == "restart"]
    with pytest.raises(CommandFailed, match="not applied") as err:
        await d.execute(cmd(LIAR, "sleep"), observed_state="mining", timeout_s=5, attempts=3)
    assert err.value.retryable is False
    assert d.config_writes == {"not_applied": 1}
    await asyncio.sleep(2 * CGI_S * SCALE)
    view = emu.miner(LIAR)
    after = [c for c in view["changes"] if c[1] == "restart"]
    assert len(after) == len(restarts) + 1  # one write, one restart: no retry storm
    assert view["state"] in ("mining", "booting") and view["work_mode"] == 0


async def test_wake_restores_the_mode_it_ran_in(emu: EmulatorProcess) -> None:
    """A machine in a power mode of its own (HEM) wakes into it, not into normal."""
    d = driver()
    await readings(d)
    miner = d._tracked[HEM].miner
    conf = await miner.web.get_miner_conf()
    await miner.web.set_miner_conf({**conf, "miner-mode": 3})  # the operator's low power
    emu.wait_view(HEM, "low power", lambda m: m["work_mode"] == 3 and m["process"] == "running"
                  and m["state"] == "mining", timeout=30)
    assert (await d.execute(cmd(HEM, "sleep"), observed_state="mining", timeout_s=5,
                            attempts=3)) == "sleep: miner-mode 3->1, read back"
    emu.wait_state(HEM, "sleeping", timeout=30)
    assert (await d.execute(cmd(HEM, "run"), observed_state="sleeping", timeout_s=5,
                            attempts=3)) == "wake: miner-mode 1->3, read back"
    assert emu.wait_state(HEM, "mining", timeout=30)["work_mode"] == 3


@pytest.mark.parametrize(("compile_time", "keys"), [
    ("Mon Dec 26 17:10:01 CST 2022", ("miner-mode",)),  # asic-rs#245
    ("Tue Dec  6 16:12:30 CST 2022", ("miner-mode",)),
    ("Fri Feb  7 11:15:49 CST 2025", ("bitmain-work-mode",)),  # asic-rs#310
    ("Thu Oct  9 18:55:45 CST 2025", ("bitmain-work-mode",)),
    ("Wed Jun 14 10:00:00 CST 2023", ("miner-mode", "bitmain-work-mode")),
    (None, ("miner-mode", "bitmain-work-mode")),
])
def test_write_keys_by_firmware(compile_time: str | None, keys: tuple[str, ...]) -> None:
    assert amw.write_keys(compile_time) == keys


@pytest.mark.parametrize(("conf", "reason"), [
    ({"success": False, "message": "HTTP error occurred"}, "read_failed"),
    ({}, "read_failed"),
    ({"pools": [{"url": "stratum+tcp://a:3333"}]}, "read_failed"),  # no work mode: not whole
    ({"pools": [{"url": "", "user": "", "pass": ""}] * 3, "bitmain-work-mode": "0"},
     "no_pool"),
])
def test_unsafe_reads_are_refused(conf: dict, reason: str) -> None:
    with pytest.raises(amw.WriteRefused) as err:
        amw.check_read(conf)
    assert err.value.reason == reason
