"""The miner driver on Whatsminer API v2 firmware as it is in the field, in the real emulator.

Legacy firmware (before 2023) stops btminer on ``power_off``: every read pyasic's ``get_data``
makes then fails, and only the API daemon's ``status`` answers -- the driver must read that as
"asleep, still this machine", not as unreachable (which would end in re-discovery, and pyasic
cannot discover such a machine at all). A machine whose write API is off answers every write
"can't access write cmd": reported as such (error kind ``auth``, with what to do), not
commanded again and again. A limit above the nameplate is refused by the firmware, so the
nameplate is the ceiling the loop plans with; and a re-discovered object keeps the token the
firmware counts (32 per client IP per 30 minutes).
"""

from __future__ import annotations

import asyncio

import pytest

from curtaild.core.models import MODELS
from curtaild.drivers.miners import CommandFailed
from tests.support.driving import cmd, reading, until
from tests.support.driving import driver_for as driver
from tests.support.emulator import SITE_WHATSMINER_PASSWORD, EmulatorProcess

pytestmark = pytest.mark.integration

LEGACY, NOWRITE, LIMIT, TOKENS = (f"127.161.2.{i}" for i in range(1, 5))
PW = SITE_WHATSMINER_PASSWORD  # the site's: driver_for gives curtaild the same
FLEET = f"""
[[miner]]
model = "M30S"
ip = "{LEGACY}"
password = "{PW}"
firmware_version = "20220919.15.REL"
[[miner]]
model = "M30S"
ip = "{NOWRITE}"
password = "{PW}"
write_api = false
[[miner]]
model = "M50"
ip = "{LIMIT}"
password = "{PW}"
api = "v2"
[[miner]]
model = "M30S"
ip = "{TOKENS}"
password = "{PW}"
"""
TIME_SCALE = 0.01


@pytest.fixture(scope="module")
def emu():
    with EmulatorProcess(fleet_toml=FLEET, first_ip=LEGACY, time_scale=TIME_SCALE) as e:
        yield e


async def test_legacy_firmware_powered_off_reads_asleep_and_stays_ours(emu) -> None:
    d = driver(LEGACY)
    first = await reading(d, LEGACY)
    assert first.state == "mining" and first.error is None
    key, pyasic_object = first.key, d._tracked[LEGACY].miner
    await d.execute(cmd(LEGACY, "sleep"), observed_state="mining", timeout_s=10, attempts=2)
    assert emu.miner(LEGACY)["process"] == "off"  # btminer stopped: its reads fail
    # MHS 1m lags the sleep by up to a minute (0.6 s here); then, every poll: asleep
    await asyncio.sleep(60 * TIME_SCALE + 0.1)
    for _ in range(4):  # more than rediscover_after_failures polls
        r = await reading(d, LEGACY)
        assert r.state == "sleeping" and r.error is None, r
        assert r.key == key and r.hashrate_ths == 0.0
        assert r.power_source == "idle_estimate"
    t = d._tracked[LEGACY]
    assert t.failures == 0 and t.miner is pyasic_object  # never re-discovered
    assert d.error_counts == {}
    await d.execute(cmd(LEGACY, "wake"), observed_state="sleeping", timeout_s=10, attempts=2)
    r = await until(d, LEGACY, lambda r: r.state == "mining" and r.hashrate_ths > 1.0)
    assert r.key == key


async def test_write_api_off_is_reported_and_not_commanded(emu) -> None:
    d = driver(NOWRITE)
    r = await reading(d, NOWRITE)
    assert r.error is not None and r.error.startswith("auth: write API disabled on the miner")
    assert "WhatsMinerTool" in r.error
    assert r.hashrate_ths > 1.0  # still read: the readings need no write access
    with pytest.raises(CommandFailed, match="auth: write API disabled"):
        await d.execute(cmd(NOWRITE, "sleep"), observed_state="mining", timeout_s=10,
                        attempts=3)
    t = emu.miner(NOWRITE)
    assert t["state"] == "mining" and t["changes"] == []
    assert d.error_counts.get("auth", 0) >= 1


async def test_the_nameplate_is_the_ceiling_and_a_limit_within_it_applies(emu) -> None:
    d = driver(LIMIT)
    plate = MODELS["M50"].power_w
    r = await reading(d, LIMIT)
    assert r.supports_power_limit and r.max_power_limit_w == plate  # not the table's 3600 W
    await d.execute(cmd(LIMIT, "run", plate + 200), observed_state="mining", timeout_s=10,
                    attempts=2)  # clamped to the nameplate: the firmware takes it
    assert emu.miner(LIMIT)["power_limit_w"] == plate


async def test_a_rediscovered_object_keeps_its_token(emu) -> None:
    d = driver(TOKENS)
    await reading(d, TOKENS)  # discovery checks the credentials: one token
    issued = emu.miner(TOKENS)["api_tokens"]["issued"]
    assert sum(issued.values()) == 1
    for _ in range(3):  # the object is dropped and rebuilt, as after repeated failures
        t = d._tracked[TOKENS]
        t.miner, t.next_discovery_at = None, 0.0
        assert await d._discover(t)
        assert t.auth_refused is None
    await d.execute(cmd(TOKENS, "run", 3000), observed_state="mining", timeout_s=10,
                    attempts=2)
    assert emu.miner(TOKENS)["power_limit_w"] == 3000
    assert sum(emu.miner(TOKENS)["api_tokens"]["issued"].values()) == 1
