"""Per-miner firmware passwords: each family refuses the wrong credentials and accepts the
right ones, driven by unmodified pyasic 0.79 against an emulator process started from a fleet
file; and the password never shows in the control API.

Real sites change the factory passwords (root/root on a stock Antminer's web UI, ``admin`` on
a Whatsminer's API, which is *required* before its write API works), so a controller that only
ever met factory passwords in tests has never been tested on a real site.
"""

from __future__ import annotations

import json
import urllib.request

import httpx
import pytest
from pyasic import get_miner
from pyasic.errors import APIError
from pyasic.rpc.btminer import BTMinerRPCAPI

from curtaild.emulator.fleet import FleetError, build_miners, plan_fleet_text
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

ANT_PW = "Ant-S3cret-7391"
WM_PW = "wm5ecr8"
FLEET = f"""
[[miner]]
model = "S19j Pro"
ip = "127.157.1.1"
password = "{ANT_PW}"
[[miner]]
model = "S19j Pro"
ip = "127.157.1.2"
[[miner]]
model = "M50"
ip = "127.157.1.3"
password = "{WM_PW}"
[[miner]]
model = "M50"
ip = "127.157.1.4"
[[miner]]
model = "S19 XP"
ip = "127.157.1.5"
[[miner]]
model = "BitAxe Gamma"
ip = "127.157.1.6"
"""
ANT, ANT_FACTORY, WM, WM_FACTORY, LUX, AXE = (f"127.157.1.{i}" for i in range(1, 7))


@pytest.fixture(scope="module")
def emu():
    with EmulatorProcess(fleet_toml=FLEET, first_ip="127.157.1.1", time_scale=0.01) as e:
        yield e


# ------------------------------------------------------------------------ stock Antminer
async def test_antminer_web_ui_takes_only_its_own_password(emu: EmulatorProcess) -> None:
    url = f"http://{ANT}/cgi-bin/get_system_info.cgi"
    async with httpx.AsyncClient() as client:
        factory = await client.get(url, auth=httpx.DigestAuth("root", "root"))
        assert factory.status_code == 401
        good = await client.get(url, auth=httpx.DigestAuth("root", ANT_PW))
        assert good.status_code == 200
        # A machine that kept its factory password still takes root/root, and only that.
        other = f"http://{ANT_FACTORY}/cgi-bin/get_system_info.cgi"
        assert (await client.get(other, auth=httpx.DigestAuth("root", "root"))).status_code == 200
        assert (await client.get(other, auth=httpx.DigestAuth("root", ANT_PW))).status_code == 401


async def test_antminer_through_pyasic_wrong_then_right_password(emu: EmulatorProcess) -> None:
    """The field behaviour the driver must cope with: with the factory password pyasic cannot
    tell whether the machine mines (None) and *still* says stop_mining() worked."""
    miner = await get_miner(ANT)
    assert miner is not None and type(miner).__name__ == "BMMinerS19jPro"
    assert miner.web.pwd == "root"  # pyasic's default
    assert await miner.is_mining() is None
    assert await miner.web.get_miner_conf() == {"success": False,
                                                "message": "Unknown error occurred"}
    assert await miner.stop_mining() is True  # believed by pyasic, never applied:
    assert emu.miner(ANT)["state"] == "mining"
    miner.web.pwd = ANT_PW
    assert await miner.is_mining() is True
    assert await miner.stop_mining() is True
    emu.wait_state(ANT, "sleeping", timeout=30)
    assert await miner.resume_mining() is True
    emu.wait_state(ANT, "mining", timeout=30)


# --------------------------------------------------------------------------- Whatsminer
async def test_whatsminer_write_api_refuses_factory_admin_once_changed(
        emu: EmulatorProcess) -> None:
    factory = BTMinerRPCAPI(WM)
    assert factory.pwd == "admin"
    with pytest.raises(APIError, match="invalid JSON message"):
        await factory.power_off()
    assert emu.miner(WM)["state"] == "mining"
    right = BTMinerRPCAPI(WM)
    right.pwd = WM_PW
    assert (await right.power_off())["Msg"] == "API command OK"
    emu.wait_state(WM, "sleeping", timeout=15)
    assert (await right.power_on())["Msg"] == "API command OK"
    emu.wait_state(WM, "mining", timeout=30)


async def test_whatsminer_pyasic_object_with_password(emu: EmulatorProcess) -> None:
    """Through the miner object curtaild keeps (``miner.rpc.pwd``), not only the raw API.

    pyasic caches the token *with the password hash in it* for 30 minutes: a password set
    after a refused write is not used until ``rpc.token`` is cleared (the driver must)."""
    miner = await get_miner(WM)
    assert miner is not None
    assert await miner.stop_mining() is False  # pyasic reports the refused write as failed
    assert emu.miner(WM)["state"] == "mining"
    miner.rpc.pwd = WM_PW
    assert await miner.stop_mining() is False  # still the cached factory-password token
    miner.rpc.token = None
    assert await miner.stop_mining() is True
    emu.wait_state(WM, "sleeping", timeout=15)
    assert await miner.resume_mining() is True
    emu.wait_state(WM, "mining", timeout=30)


async def test_whatsminer_with_factory_password_writes_nothing_but_reads(
        emu: EmulatorProcess) -> None:
    """A factory unit: its write API cannot be switched on before the admin password is
    changed, so every write is refused -- with the factory password and with any other --
    while every read answers (API v2.0.5 document)."""
    assert emu.miner(WM_FACTORY)["write_api"] is False
    for password in ("admin", WM_PW):
        rpc = BTMinerRPCAPI(WM_FACTORY)
        rpc.pwd = password
        with pytest.raises(APIError, match="can't access write cmd"):
            await rpc.set_led(auto=False)
    miner = await get_miner(WM_FACTORY)
    assert await miner.stop_mining() is False
    data = await miner.get_data()
    assert data.hashrate is not None and float(data.hashrate) > 0
    view = emu.miner(WM_FACTORY)
    assert view["state"] == "mining" and view["led_on"] is False


# ------------------------------------------------------------------ LuxOS, Bitaxe: no secret
async def test_luxos_and_bitaxe_have_no_password_and_still_work(emu: EmulatorProcess) -> None:
    """pyasic sends a bare ``logon`` (LuxOS sessions are "not a security feature", Luxor's
    docs) and AxeOS v2.4 has no authentication: there is nothing to refuse."""
    lux = await get_miner(LUX)
    assert lux is not None and await lux.stop_mining() is True
    emu.wait_state(LUX, "sleeping", timeout=15)
    assert await lux.resume_mining() is True
    axe = await get_miner(AXE)
    assert axe is not None and (await axe.get_data()).hashrate is not None


@pytest.mark.parametrize("model", ["S19 XP", "BitAxe Gamma"])
def test_fleet_file_refuses_a_password_a_family_cannot_have(model: str) -> None:
    text = f'[[miner]]\nmodel = "{model}"\npassword = "x"\n'
    with pytest.raises(FleetError, match=r"miner\[0\]\.password: .* has no password"):
        plan_fleet_text(text)


@pytest.mark.parametrize(("value", "why"), [('""', "non-empty"), ("3", "non-empty string"),
                                           ('"a\\nb"', "control characters")])
def test_fleet_file_password_errors_name_the_key_never_the_value(value: str, why: str) -> None:
    text = f'[[miner]]\nmodel = "S19"\n[[miner]]\nmodel = "M50"\npassword = {value}\n'
    with pytest.raises(FleetError, match=rf"miner\[1\]\.password: .*{why}") as err:
        plan_fleet_text(text)
    assert "a\nb" not in str(err.value)


# ---------------------------------------------------------------------- never disclosed
def test_control_api_and_reprs_never_show_passwords(emu: EmulatorProcess) -> None:
    with urllib.request.urlopen(f"{emu.control_url}/miners", timeout=10) as resp:
        body = resp.read().decode()
    assert json.loads(body)  # a real answer, with every miner
    assert ANT in body and WM in body
    for secret in (ANT_PW, WM_PW):
        assert secret not in body
        assert secret not in emu.stderr()
        assert secret not in "\n".join(emu.stdout_lines)
    plan = plan_fleet_text(FLEET)
    miners = build_miners(plan, time_scale=0.01)
    assert [m.password for m in miners[:4]] == [ANT_PW, None, WM_PW, None]
    for secret in (ANT_PW, WM_PW):
        assert secret not in repr(plan) and secret not in repr(miners)
        assert all(secret not in json.dumps(m.truth()) for m in miners)
