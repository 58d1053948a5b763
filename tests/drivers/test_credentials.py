"""The driver with changed firmware passwords: ``[fleet.credentials]`` reaches pyasic, a
refused password is its own error kind (``auth``), and nothing is sent -- or believed -- while
the firmware refuses us. Unmodified pyasic against the emulator, judged by its truth.

The case that matters most: with a wrong password a stock Antminer answers 401 and pyasic's
``stop_mining()`` still returns True, while its cgminer RPC (no password) keeps the readings
flowing. Without a credential check curtaild would log "ok" for sleeps that never happened.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pyasic import get_miner
from pyasic.miners.backends.braiins_os import BOSer
from pyasic.miners.backends.btminer import BTMinerV3
from pyasic.miners.backends.vnish import VNish
from pydantic import SecretStr

from curtaild.controller.config import FleetConfig
from curtaild.drivers import credentials as creds
from curtaild.drivers.credentials_config import CredentialsConfig
from curtaild.drivers.miners import CommandFailed, MinerDriver
from tests.support.driving import cmd
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

ANT_PW, ANT_OTHER, WM_PW, WM_OTHER, MAC_PW = ("ant-7Hq2", "ant-other-9", "wm-4kP", "wm-x8",
                                              "macpw-1")
FIRST = "127.157.2.1"
ANT_OK, ANT_WRONG, WM_OK, WM_WRONG, ANT_FACTORY, WM_BY_MAC = (f"127.157.2.{i}"
                                                              for i in range(1, 7))
FLEET = f"""
[[miner]]
model = "S19j Pro"
password = "{ANT_PW}"
[[miner]]
model = "S19j Pro"
password = "{ANT_OTHER}"
[[miner]]
model = "M50"
password = "{WM_PW}"
[[miner]]
model = "M50"
password = "{WM_OTHER}"
[[miner]]
model = "S19"
[[miner]]
model = "M30S"
password = "{MAC_PW}"
"""


@pytest.fixture(scope="module")
def emu():
    with EmulatorProcess(fleet_toml=FLEET, first_ip=FIRST, time_scale=0.01) as e:
        yield e


@pytest.fixture()
def secrets_dir(tmp_path: Path) -> Path:
    for name, value in (("ant", ANT_PW), ("ant-other", ANT_OTHER), ("wm", WM_PW),
                        ("root", "root"), ("mac", MAC_PW)):
        (tmp_path / name).write_text(value + "\n")
    return tmp_path


def credentials(d: Path, **extra: dict) -> CredentialsConfig:
    return CredentialsConfig.model_validate({
        "antminer": {"password_file": str(d / "ant")},
        "whatsminer": {"password_file": str(d / "wm")},
        "override": [
            {"match": [ANT_FACTORY], "password_file": str(d / "root")},
            {"match": [emu_mac(WM_BY_MAC)], "family": "whatsminer",
             "password_file": str(d / "mac")},
            *extra.get("override", []),
        ]})


def emu_mac(ip: str) -> str:
    """The emulator's MAC for an address (EmulatedMiner: 02:EC + the last three octets)."""
    o = [int(x) for x in ip.split(".")]
    return "02:EC:{:02X}:{:02X}:{:02X}:{:02X}".format(*o)


def fleet_config(cred: CredentialsConfig) -> FleetConfig:
    return FleetConfig(ranges=[f"{FIRST}-6"], poll_timeout_s=5.0, discovery_timeout_s=8.0,
                       rediscover_after_failures=2, credentials=cred)


async def readings(d: MinerDriver) -> dict:
    return {r.ip: r for r in (await d.observe()).miners}


def actions(emu: EmulatorProcess, ip: str) -> list:
    return list(emu.miner(ip)["changes"])


async def test_refused_credentials_read_as_auth_and_are_never_commanded(
        emu: EmulatorProcess, secrets_dir: Path) -> None:
    d = MinerDriver(fleet_config(credentials(secrets_dir)), poll_interval_s=1.0)
    got = await readings(d)
    assert set(got) == {ANT_OK, ANT_WRONG, WM_OK, WM_WRONG, ANT_FACTORY, WM_BY_MAC}
    for ip in (ANT_OK, WM_OK, ANT_FACTORY, WM_BY_MAC):
        assert got[ip].error is None, (ip, got[ip].error)
        assert got[ip].state == "mining"
    for ip in (ANT_WRONG, WM_WRONG):
        r = got[ip]
        assert r.error is not None and r.error.startswith("auth: "), (ip, r.error)
        assert r.state == "mining"  # it hashes (read over the password-less RPC) ...
        assert r.hashrate_ths > 0  # ... and is not called unreachable
    assert "HTTP 401" in got[ANT_WRONG].error
    assert d.error_counts.get("auth") == 2
    for ip in (ANT_WRONG, WM_WRONG):
        before = actions(emu, ip)
        with pytest.raises(CommandFailed, match=r"^auth: "):
            await d.execute(cmd(ip, "sleep"), observed_state="mining", timeout_s=10, attempts=2)
        assert emu.miner(ip)["state"] == "mining"
        assert actions(emu, ip) == before  # nothing was sent
    # No secret in anything the driver reports.
    text = repr(got) + repr(d.credentials) + repr(d.error_counts)
    for secret in (ANT_PW, ANT_OTHER, WM_PW, WM_OTHER, MAC_PW):
        assert secret not in text


async def test_right_credentials_sleep_and_wake(emu: EmulatorProcess, secrets_dir: Path) -> None:
    d = MinerDriver(fleet_config(credentials(secrets_dir)), poll_interval_s=1.0)
    await d.observe()
    for ip in (ANT_OK, WM_OK, ANT_FACTORY, WM_BY_MAC):
        await d.execute(cmd(ip, "sleep"), observed_state="mining", timeout_s=20, attempts=3)
        emu.wait_state(ip, "sleeping", 15)
    got = await readings(d)
    for ip in (ANT_OK, WM_OK, ANT_FACTORY, WM_BY_MAC):
        assert (got[ip].state, got[ip].error) == ("sleeping", None), ip
    assert got[WM_BY_MAC].key == emu_mac(WM_BY_MAC)  # the MAC override found it by its MAC
    for ip in (ANT_OK, WM_OK, ANT_FACTORY, WM_BY_MAC):
        await d.execute(cmd(ip, "run"), observed_state="sleeping", timeout_s=20, attempts=3)
        emu.wait_state(ip, "mining", 30)


async def test_a_sleeping_machine_that_refuses_us_is_not_read_as_mining(
        emu: EmulatorProcess, secrets_dir: Path) -> None:
    """pyasic's is_mining is None after a 401: the driver must not fall back to "mining"."""
    emu.action(ANT_WRONG, "sleep")  # the operator, at the machine
    try:
        d = MinerDriver(fleet_config(credentials(secrets_dir)), poll_interval_s=1.0)
        r = (await readings(d))[ANT_WRONG]
        assert r.state == "sleeping" and r.hashrate_ths == 0
        assert r.error is not None and r.error.startswith("auth: ")
        assert r.power_source == "idle_estimate"
    finally:
        emu.action(ANT_WRONG, "wake")
        emu.wait_state(ANT_WRONG, "mining", 30)


async def test_a_password_that_stops_working_is_caught_before_the_command(
        emu: EmulatorProcess, secrets_dir: Path) -> None:
    """The machine's password changes under us (or the file holds an old one): pyasic would
    report the stock Antminer's sleep as done; the driver refuses to send it and says why."""
    d = MinerDriver(fleet_config(credentials(secrets_dir)), poll_interval_s=1.0)
    assert (await readings(d))[ANT_OK].error is None
    d._tracked[ANT_OK].miner.web.pwd = "not-the-password-any-more"
    alone = await get_miner(ANT_OK)  # pyasic's own object (curtaild's is guarded)
    alone.web.pwd = "not-the-password-any-more"
    assert await alone.stop_mining() is True  # what pyasic alone believes
    with pytest.raises(CommandFailed, match=r"^auth: web UI refused"):
        await d.execute(cmd(ANT_OK, "sleep"), observed_state="mining", timeout_s=10, attempts=2)
    assert emu.miner(ANT_OK)["state"] == "mining"
    r = (await readings(d))[ANT_OK]
    assert r.error is not None and r.error.startswith("auth: ")


async def test_a_password_change_while_asleep_is_noticed_by_the_poll(
        emu: EmulatorProcess, secrets_dir: Path) -> None:
    """pyasic's get_data says is_mining True by default when the web UI refuses the password;
    the poll asks is_mining() itself, sees None and checks the credentials."""
    d = MinerDriver(fleet_config(credentials(secrets_dir)), poll_interval_s=1.0)
    assert (await readings(d))[ANT_OK].error is None
    emu.action(ANT_OK, "sleep")
    try:
        assert (await readings(d))[ANT_OK].state == "sleeping"
        d._tracked[ANT_OK].miner.web.pwd = "changed-at-the-machine"
        r = (await readings(d))[ANT_OK]
        assert (r.state, r.hashrate_ths) == ("sleeping", 0.0)
        assert r.error is not None and r.error.startswith("auth: ")
    finally:
        emu.action(ANT_OK, "wake")
        emu.wait_state(ANT_OK, "mining", 30)


async def test_reload_with_the_right_password_recovers(emu: EmulatorProcess,
                                                       secrets_dir: Path) -> None:
    d = MinerDriver(fleet_config(credentials(secrets_dir)), poll_interval_s=1.0)
    assert (await readings(d))[ANT_WRONG].error.startswith("auth: ")
    fixed = credentials(secrets_dir, override=[
        {"match": [ANT_WRONG], "password_file": str(secrets_dir / "ant-other")}])
    d.reconfigure(fleet_config(fixed))
    assert d._tracked[ANT_WRONG].credential_source == "fleet.credentials.override[2]"
    r = (await readings(d))[ANT_WRONG]
    assert r.error is None, r.error
    await d.execute(cmd(ANT_WRONG, "sleep"), observed_state="mining", timeout_s=20, attempts=3)
    emu.wait_state(ANT_WRONG, "sleeping", 15)
    await d.execute(cmd(ANT_WRONG, "run"), observed_state="sleeping", timeout_s=20, attempts=3)
    emu.wait_state(ANT_WRONG, "mining", 30)


async def test_unreadable_secret_on_reload_changes_nothing(emu: EmulatorProcess,
                                                           secrets_dir: Path) -> None:
    from curtaild.controller.config import ConfigError

    d = MinerDriver(fleet_config(credentials(secrets_dir)), poll_interval_s=1.0)
    await readings(d)
    broken = CredentialsConfig.model_validate(
        {"antminer": {"password_file": str(secrets_dir / "missing")}})
    with pytest.raises(ConfigError, match=r"^fleet.credentials.antminer.password_file: "):
        d.prepare_credentials(fleet_config(broken))
    assert (await readings(d))[ANT_OK].error is None  # the running passwords stay


# ------------------------------------------------------- pyasic objects of other families
@pytest.mark.parametrize(("cls", "family", "attr", "factory"), [
    (BOSer, "braiins", "web", "root"), (VNish, "vnish", "web", "admin"),
    (BTMinerV3, "whatsminer", "rpc", "super")])
def test_apply_sets_and_restores_the_password(cls, family: str, attr: str,
                                              factory: str) -> None:
    miner = cls("127.157.2.200")
    target = getattr(miner, attr)
    assert target.pwd == factory
    cred = creds.Credential(secret=SecretStr("site-pw"), source="x")
    if hasattr(target, "token"):
        target.token = "old-session"
    assert creds.apply(miner, family, cred) is True
    assert target.pwd == "site-pw"
    if hasattr(target, "token"):
        assert target.token is None  # a session made with the old password is dropped
    assert creds.apply(miner, family, cred) is False  # unchanged: nothing dropped
    assert creds.apply(miner, family, None) is True
    assert target.pwd == factory


# ---------------------------------------------------------- token economy (pure logic)
class _FakeV2Rpc:
    """Stands in for pyasic's BTMinerRPCAPI: counts tokens, answers every privileged request
    in clear (what firmware does when it cannot decrypt it)."""

    def __init__(self) -> None:
        self.token = None
        self.tokens_fetched = 0

    async def get_token(self):
        from pyasic.rpc.btminer import TokenData

        if self.token is None:
            self.tokens_fetched += 1
            self.token = TokenData(host_sign="s", host_passwd_md5="m")
        return self.token

    async def _send_bytes(self, data: bytes, **_kw: object) -> bytes:
        return b'{"STATUS":"E","When":1,"Code":23,"Msg":"invalid JSON message"}'


class _FakeMiner:
    def __init__(self) -> None:
        self.rpc = _FakeV2Rpc()


async def test_a_refused_whatsminer_is_rechecked_without_spending_tokens() -> None:
    miner = _FakeMiner()
    verdict, detail = await creds.probe(miner, "whatsminer", 2.0, trusted=True)
    assert verdict == "refused" and "code 23" in detail
    assert miner.rpc.tokens_fetched == 2  # trusted until now: one retry with a fresh token
    for _ in range(50):  # every poll while refused: the cached token, no new one
        assert (await creds.probe(miner, "whatsminer", 2.0, trusted=False))[0] == "refused"
    assert miner.rpc.tokens_fetched == 2
