"""The miner driver on Whatsminer API v3 firmware (pyasic's BTMinerV3), in the real emulator.

What real v3 firmware does to a controller, each judged by the emulator's truth: a powered-off
machine's status reads answer "btminer process is down err" (pyasic's get_data then fails
outright), a limit above the nameplate is refused while pyasic reports success, and every
salt the firmware hands out is a token -- 32 per client IP per 30 minutes -- so a driver that
rebuilds its pyasic objects runs out. The driver must read the first as "asleep, still this
machine", clamp limits to the nameplate and check the firmware's answer, and keep its salt.
"""

from __future__ import annotations

import pytest

from curtaild.core.models import MODELS
from curtaild.drivers.miners import CommandFailed
from tests.support.driving import cmd, reading, until
from tests.support.driving import driver_for as driver
from tests.support.emulator import SITE_WHATSMINER_PASSWORD, EmulatorProcess

pytestmark = pytest.mark.integration

POLL, SLEEP, LIMIT, ECON = (f"127.156.2.{i}" for i in range(1, 5))
#: set up as at a site: the admin password changed (driver_for gives curtaild the same)
FLEET = "".join(f'[[miner]]\nmodel = "M50"\nip = "{ip}"\napi = "v3"\n'
                f'password = "{SITE_WHATSMINER_PASSWORD}"\n'
                for ip in (POLL, SLEEP, LIMIT, ECON))
NAMEPLATE_W = MODELS["M50"].power_w
TIME_SCALE = 0.01


@pytest.fixture(scope="module")
def emu():
    with EmulatorProcess(fleet_toml=FLEET, first_ip=POLL, time_scale=TIME_SCALE) as e:
        yield e


async def test_reading_matches_the_truth(emu: EmulatorProcess) -> None:
    r = await reading(driver(POLL), POLL)
    t = emu.miner(POLL)
    assert r.state == "mining" and r.error is None
    assert r.make == "WhatsMiner" and r.firmware == "whatsminer"
    assert r.hashrate_ths == pytest.approx(t["hashrate_ths"], rel=0.05)
    assert r.power_source == "firmware"
    assert r.power_w == pytest.approx(t["power_w"], rel=0.05)
    assert r.power_limit_w == NAMEPLATE_W
    assert r.key == t["mac"].upper()
    assert r.temp_c is not None and r.temp_c > 30
    assert len(r.fan_rpm) == 2
    # v3 firmware refuses a limit above the nameplate: that, not the model table's 3600 W,
    # is the ceiling the loop plans with.
    assert r.supports_power_limit and r.max_power_limit_w == NAMEPLATE_W


async def test_sleep_is_read_as_asleep_and_wake_brings_it_back(emu: EmulatorProcess) -> None:
    d = driver(SLEEP)
    before = await reading(d, SLEEP)
    assert before.state == "mining"
    out = await d.execute(cmd(SLEEP, "sleep"), observed_state="mining", timeout_s=10,
                          attempts=2)
    assert out == "stop_mining"
    emu.wait_state(SLEEP, "sleeping", timeout=10)
    assert emu.miner(SLEEP)["process"] == "off"
    for _ in range(3):  # not once by luck: every poll of a powered-off v3 machine
        r = await reading(d, SLEEP)
        assert r.state == "sleeping", r.error
        assert r.error is None and r.key == before.key
        assert r.hashrate_ths == 0.0 and r.power_source == "idle_estimate"
    assert d.error_counts == {}
    out = await d.execute(cmd(SLEEP, "run"), observed_state="sleeping", timeout_s=10,
                          attempts=2)
    assert out == "resume_mining"
    emu.wait_state(SLEEP, "mining", timeout=20)
    r = await until(d, SLEEP, lambda r: r.state == "mining" and r.hashrate_ths > 50)
    assert r.key == before.key


async def test_limits_are_clamped_to_the_nameplate_and_checked(emu: EmulatorProcess) -> None:
    d = driver(LIMIT)
    await reading(d, LIMIT)
    out = await d.execute(cmd(LIMIT, "run", NAMEPLATE_W + 294), observed_state="mining",
                          timeout_s=10, attempts=2)
    assert out == "set_power_limit"
    assert emu.miner(LIMIT)["power_limit_w"] == NAMEPLATE_W  # clamped, so taken
    await until(d, LIMIT, lambda r: r.state == "mining" and r.error is None)
    await d.execute(cmd(LIMIT, "run", 2500), observed_state="mining", timeout_s=10, attempts=2)
    assert emu.miner(LIMIT)["power_limit_w"] == 2500
    r = await until(d, LIMIT, lambda r: r.error is None and r.power_limit_w == 2500
                    and r.power_w == pytest.approx(2500, rel=0.05))
    assert r.state == "mining"
    # Were the ceiling unknown, the firmware's refusal is reported, not believed (pyasic's
    # own set_power_limit says True whatever the firmware answered).
    d._tracked[LIMIT].preset_ceiling_w = None
    with pytest.raises(CommandFailed, match="refused"):
        await d.execute(cmd(LIMIT, "run", NAMEPLATE_W + 294), observed_state="mining",
                        timeout_s=4, attempts=1)
    assert emu.miner(LIMIT)["power_limit_w"] == 2500


async def test_a_thousand_ticks_spend_one_token(emu: EmulatorProcess) -> None:
    """1,000 poll cycles with a sleep or wake every 50 and two forced re-discoveries (a new
    pyasic object each): the firmware hands this client one salt, never refuses one."""
    d = driver(ECON)
    await reading(d, ECON)
    state = "mining"
    for tick in range(1000):
        r = await reading(d, ECON)
        if tick in (300, 700):  # the machine drops off the network: re-discovered after
            emu.set_fault(ECON, "refuse")
            await until(d, ECON, lambda r: d._tracked[ECON].miner is None)
            emu.set_fault(ECON, "none")
            r = await until(d, ECON, lambda r: r.error is None)
        if tick % 50 == 49:
            action = "sleep" if state == "mining" else "run"
            await d.execute(cmd(ECON, action), observed_state=r.state, timeout_s=10,
                            attempts=2)
            state = "sleeping" if action == "sleep" else "mining"
    tokens = emu.miner(ECON)["api_tokens"]
    assert tokens["issued"] == {"127.0.0.1": 1}
    assert tokens["refused"] == {}
    assert emu.miner(ECON)["state"] in ("mining", "booting") if state == "mining" else True
