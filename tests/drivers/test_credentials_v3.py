"""Firmware passwords on Whatsminer API v3 (port 4433, pyasic's BTMinerV3): the site's admin
password from ``[fleet.credentials]`` signs every ``set.`` command; a refused one is reported
``auth`` and nothing is sent. Unmodified pyasic against the emulator, judged by its truth."""

from __future__ import annotations

from pathlib import Path

import pytest

from curtaild.controller.config import FleetConfig
from curtaild.drivers.credentials_config import CredentialsConfig
from curtaild.drivers.miners import CommandFailed, MinerDriver
from tests.support.driving import cmd
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

V3_PW = "v3-site-pw"
FIRST = "127.157.4.1"
RIGHT, WRONG, FACTORY = (f"127.157.4.{i}" for i in range(1, 4))
FLEET = f"""
[[miner]]
model = "M50"
api = "v3"
password = "{V3_PW}"
[[miner]]
model = "M50"
api = "v3"
password = "not-what-curtaild-has"
[[miner]]
model = "M50"
api = "v3"
"""


@pytest.fixture(scope="module")
def emu():
    with EmulatorProcess(fleet_toml=FLEET, first_ip=FIRST, time_scale=0.01) as e:
        yield e


def driver(tmp_path: Path) -> MinerDriver:
    (tmp_path / "wm").write_text(V3_PW)
    cred = CredentialsConfig.model_validate({
        "whatsminer": {"password_file": str(tmp_path / "wm")},
        "override": [{"match": [FACTORY], "password_file": str(tmp_path / "factory")}]})
    (tmp_path / "factory").write_text("admin")
    return MinerDriver(FleetConfig(ranges=[f"{FIRST}-3"], poll_timeout_s=5.0,
                                   discovery_timeout_s=8.0, credentials=cred),
                       poll_interval_s=1.0)


async def test_v3_password_reaches_the_firmware_and_a_wrong_one_is_auth(
        emu: EmulatorProcess, tmp_path: Path) -> None:
    """The site's password writes; a wrong one is ``auth``; so is a factory unit, given its
    factory password: its write API is off (it cannot be switched on before the password is
    changed), which the driver reports as such. Both are still read, never commanded."""
    d = driver(tmp_path)
    got = {r.ip: r for r in (await d.observe()).miners}
    assert emu.miner(RIGHT)["api"] == "v3"
    assert got[RIGHT].error is None
    assert got[WRONG].error is not None and got[WRONG].error.startswith("auth: API v3 refused")
    assert got[FACTORY].error is not None
    assert got[FACTORY].error.startswith("auth: write API disabled"), got[FACTORY].error
    assert emu.miner(FACTORY)["write_api"] is False
    for ip in (WRONG, FACTORY):
        assert got[ip].state == "mining" and got[ip].hashrate_ths > 0
    assert d.error_counts.get("auth") == 2
    for ip in (WRONG, FACTORY):
        before = list(emu.miner(ip)["changes"])
        with pytest.raises(CommandFailed, match=r"^auth: "):
            await d.execute(cmd(ip, "sleep"), observed_state="mining", timeout_s=10,
                            attempts=2)
        assert emu.miner(ip)["state"] == "mining" and emu.miner(ip)["changes"] == before
    await d.execute(cmd(RIGHT, "sleep"), observed_state="mining", timeout_s=20, attempts=3)
    emu.wait_state(RIGHT, "sleeping", 15)
    await d.execute(cmd(RIGHT, "run"), observed_state="sleeping", timeout_s=20, attempts=3)
    emu.wait_state(RIGHT, "mining", 60)
    assert V3_PW not in repr((await d.observe()).miners)
