"""The shipped demo: ``config.toml``'s ``[fleet.credentials]`` against a ``--count`` fleet.

An emulated ``--count`` fleet is set up as a site that commands its Whatsminers: their admin
password changed (so the factory ``admin`` writes nothing) and the write API on. The shipped
config names the demo's password file (``demo/whatsminer-api-password``, beside it), so the
demo commands them; without credentials the driver reports those machines as refusing its
password (error kind ``auth``) and sends them nothing. Unmodified pyasic, the real emulator.
"""

from __future__ import annotations

import pytest

from curtaild.controller.config import FleetConfig, load_config
from curtaild.drivers.credentials_config import CredentialsConfig
from curtaild.drivers.miners import CommandFailed, MinerDriver
from curtaild.emulator.fleet import COUNT_PASSWORDS
from tests.support.daemon import DEMO_WHATSMINER_PASSWORD_FILE, REPO
from tests.support.driving import cmd, reading
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

FIRST = "127.171.1.1"
M30S, M50 = "127.171.1.4", "127.171.1.5"  # --count's fourth and fifth models


@pytest.fixture(scope="module")
def emu():
    with EmulatorProcess(count=5, first_ip=FIRST, time_scale=0.01) as e:
        yield e


def test_the_demo_password_file_is_the_count_fleets_password() -> None:
    assert DEMO_WHATSMINER_PASSWORD_FILE.read_text().strip("\n") == COUNT_PASSWORDS["whatsminer"]
    shipped = load_config(REPO / "config.toml").fleet.credentials
    assert shipped is not None and shipped.whatsminer is not None
    # a relative password_file resolves beside the config file
    assert shipped.whatsminer.password_file == str(DEMO_WHATSMINER_PASSWORD_FILE)


def _driver(credentials: CredentialsConfig) -> MinerDriver:
    return MinerDriver(FleetConfig(ranges=[f"{FIRST}-5"], poll_timeout_s=5.0,
                                   discovery_timeout_s=8.0, credentials=credentials),
                       poll_interval_s=0.2)


async def test_the_shipped_config_commands_the_count_fleets_whatsminers(emu) -> None:
    d = _driver(load_config(REPO / "config.toml").fleet.credentials)
    for ip in (M30S, M50):
        r = await reading(d, ip)
        assert (r.state, r.error) == ("mining", None), ip
        await d.execute(cmd(ip, "sleep"), observed_state="mining", timeout_s=20, attempts=3)
        emu.wait_state(ip, "sleeping", 15)
        await d.execute(cmd(ip, "run"), observed_state="sleeping", timeout_s=20, attempts=3)
        emu.wait_state(ip, "mining", 60)
    assert COUNT_PASSWORDS["whatsminer"] not in repr((await d.observe()).miners)


async def test_without_credentials_the_factory_password_is_refused_as_auth(emu) -> None:
    d = _driver(CredentialsConfig())  # pyasic's factory defaults
    for ip in (M30S, M50):
        r = await reading(d, ip)
        assert r.state == "mining" and r.hashrate_ths > 0, ip  # still read
        assert r.error is not None and r.error.startswith("auth: "), (ip, r.error)
        before = list(emu.miner(ip)["changes"])
        with pytest.raises(CommandFailed, match=r"^auth: "):
            await d.execute(cmd(ip, "sleep"), observed_state="mining", timeout_s=10,
                            attempts=2)
        assert emu.miner(ip)["changes"] == before and emu.miner(ip)["state"] == "mining"
