"""The driver on LuxOS as it is in the field (issue 14): ATM, sessions, curtailment state.

The real emulator (LuxOS with ATM on, as it ships) and unmodified pyasic 0.79 through
``drivers/miners.py``, judged by the emulator's truth (GET /miners: profile, ATM, changes):

- a limit turns ATM off first (the operator's setting journaled), so neither ATM nor pyasic's
  ``set_power_limit`` (which turns ATM back on after every profileset) can undo it; the release
  puts the operator's setting back, also after a restart (a new driver on the same journal);
- a profile that drifts anyway (someone turned ATM on again) reads as a limit off its target;
- "Another session is active" (another tool logged on between our ``session`` and our
  ``logon``) is retried, and a session curtaild opened is closed after the command;
- a machine that does not hash reads asleep only when the firmware says it is curtailed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from curtaild.controller.config import FleetConfig
from curtaild.controller.journal import Journal
from curtaild.core.models import MODELS
from curtaild.drivers import luxos
from curtaild.drivers.miners import CommandFailed, MinerDriver
from curtaild.emulator.families.luxos import LuxosFamily, profiles_for
from curtaild.emulator.physics import EmulatedMiner
from tests.emulator.loopback_family import FamilyServer
from tests.support.driving import cmd, reading, truth
from tests.support.emulator import EmulatorProcess

TIME_SCALE = 0.002  # ATM acts 1.8 s after a profile change, then one step per 0.12 s
ON, OFF, DRIFT = (f"127.159.4.{i}" for i in range(1, 4))
FLEET = f"""
[[miner]]
model = "S19 XP"
ip = "{ON}"
[[miner]]
model = "S19 XP"
ip = "{OFF}"
atm = false
[[miner]]
model = "S19 XP"
ip = "{DRIFT}"
"""
LADDER = profiles_for(MODELS["S19 XP"])
POST_RAMP_S = 15 * 60 * TIME_SCALE


def profile_w(target: float) -> int:
    return max(p.watts for p in LADDER if p.watts <= target)


@pytest.fixture(scope="module")
def emu():
    with EmulatorProcess(fleet_toml=FLEET, first_ip=ON, time_scale=TIME_SCALE) as proc:
        yield proc


def driver(journal: Journal | None = None, ip: str = ON) -> MinerDriver:
    cfg = FleetConfig(hosts=[ip], poll_timeout_s=5.0, discovery_timeout_s=8.0)
    d = MinerDriver(cfg, poll_interval_s=1.0)
    if journal is not None:
        d.attach_journal(journal)
    return d


@pytest.mark.integration
async def test_limit_holds_atm_off_and_release_restores_it_across_a_restart(
        emu, tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    d = driver(journal)
    await reading(d, ON)
    assert (await truth(emu, ON))["atm"] is True
    out = await d.execute(cmd(ON, "limit", 2000.0), observed_state="mining", timeout_s=20,
                          attempts=2)
    assert "atm: atm off" in out and "set_power_limit" in out
    t = await truth(emu, ON)
    assert t["atm"] is False and t["power_limit_w"] == profile_w(2000)
    assert journal.get_meta(luxos.ATM_META_KEY) == {ON: True}  # written before ATM was touched
    assert t["session_active"] is False  # curtaild logged off the session it opened
    # Well past PostRampMinutes: nothing moved the profile (pyasic did not turn ATM back on)
    await asyncio.sleep(POST_RAMP_S + 1.0)
    t = await truth(emu, ON)
    assert t["profile_w"] == profile_w(2000) and t["atm_steps"] == 0
    r = await reading(d, ON)
    assert r.power_limit_w == 2000.0  # the profile picked for the target stands for it
    # curtaild restarts: a new driver, the same journal, knows whose ATM it was
    d2 = driver(Journal(tmp_path))
    await reading(d2, ON)
    out = await d2.execute(cmd(ON, "run", 3010.0), observed_state="mining", timeout_s=20,
                           attempts=2)
    assert "atm: atm restored on" in out
    t = await truth(emu, ON)
    assert t["atm"] is True and t["profile"] == "default"
    assert journal.get_meta(luxos.ATM_META_KEY) == {}


@pytest.mark.integration
async def test_an_operator_who_keeps_atm_off_gets_it_back_off(emu, tmp_path: Path) -> None:
    d = driver(Journal(tmp_path), OFF)
    await reading(d, OFF)
    out = await d.execute(cmd(OFF, "limit", 2500.0), observed_state="mining", timeout_s=20,
                          attempts=2)
    assert "atm: atm already off" in out
    out = await d.execute(cmd(OFF, "run", 3010.0), observed_state="mining", timeout_s=20,
                          attempts=2)
    assert "atm left off (operator's setting)" in out
    assert (await truth(emu, OFF))["atm"] is False


@pytest.mark.integration
async def test_a_drifting_profile_reads_off_its_target(emu, tmp_path: Path) -> None:
    from pyasic.rpc.luxminer import LUXMinerRPCAPI

    d = driver(Journal(tmp_path), DRIFT)
    await reading(d, DRIFT)
    await d.execute(cmd(DRIFT, "limit", 2000.0), observed_state="mining", timeout_s=20,
                    attempts=2)
    assert (await reading(d, DRIFT)).power_limit_w == 2000.0
    # someone turns ATM back on (a script, the web UI): ATM walks the cool machine up
    operator = LUXMinerRPCAPI(DRIFT)
    await operator.auth()
    await operator.atmset(enabled=True)
    await operator.send_command("logoff", operator.session_token)
    t = await asyncio.to_thread(emu.wait_view, DRIFT, "drifted by ATM",
                                lambda m: m["profile_w"] > profile_w(2000), 20.0)
    r = await reading(d, DRIFT)
    assert r.power_limit_w is not None and r.power_limit_w > 2000.0  # the loop sees it
    # the re-command (the loop's, after its grace) turns ATM off again and re-sets the profile
    out = await d.execute(cmd(DRIFT, "limit", 2000.0), observed_state="mining", timeout_s=20,
                          attempts=2)
    assert "atm: atm off" in out
    t = await truth(emu, DRIFT)
    assert t["atm"] is False and t["profile_w"] == profile_w(2000)
    assert (await reading(d, DRIFT)).power_limit_w == 2000.0


async def test_not_hashing_reads_asleep_only_when_curtailed() -> None:
    """pyasic has no is_mining for LuxOS: a machine booting or ramping after a wakeup (or a
    power cut) hashes nothing yet and is not asleep; CurtailMode tells them apart."""
    ip = "127.159.4.54"
    miner = EmulatedMiner(ip=ip, spec=MODELS["S19 XP"], time_scale=0.05)  # boots in 3 s
    async with FamilyServer(LuxosFamily(), miner):
        d = driver(ip=ip)
        await reading(d, ip)
        await d.execute(cmd(ip, "sleep"), observed_state="mining", timeout_s=20, attempts=2)
        r = await reading(d, ip)
        assert r.state == "sleeping" and r.power_source == "idle_estimate"
        await d.execute(cmd(ip, "run"), observed_state="sleeping", timeout_s=20, attempts=2)
        r = await reading(d, ip)
        assert miner.read().state == "booting" and r.hashrate_ths == 0.0
        assert r.state == "mining"  # woken, not hashing yet


class RacedLuxos(LuxosFamily):
    """LuxOS where another tool logs on right after a ``session`` answered "" (the race a
    real fleet has when LuxOS Commander or a script acts on the machine too): ``races``
    times, then it holds that session and stops."""

    def __init__(self, races: int) -> None:
        super().__init__()
        self.races = races
        self.other: list[str] = []

    def handle_rpc(self, miner: EmulatedMiner, request: bytes) -> bytes:
        reply = super().handle_rpc(miner, request)
        if b'"session"' in request and b'"SessionID": ""' in reply and self.races > 0:
            self.races -= 1
            other = super().handle_rpc(miner, b'{"command": "logon"}')
            self.other.append(other.decode())
        return reply


async def test_another_session_is_retried_and_ours_is_closed() -> None:
    ip = "127.159.4.50"
    miner = EmulatedMiner(ip=ip, spec=MODELS["S19 XP"], time_scale=0.001)
    family = RacedLuxos(races=1)
    async with FamilyServer(family, miner):
        d = driver(ip=ip)
        await reading(d, ip)
        out = await d.execute(cmd(ip, "sleep"), observed_state="mining", timeout_s=20,
                              attempts=3)
        assert out == "stop_mining"
        assert miner.read().state == "sleeping"
        assert len(family.other) == 1 and "Session created" in family.other[0]
        # the other tool's session (taken over, as pyasic does) is not ours to close
        assert family._state(miner).session_id != ""


async def test_a_session_that_stays_busy_fails_with_the_reason() -> None:
    ip = "127.159.4.51"
    miner = EmulatedMiner(ip=ip, spec=MODELS["S19 XP"], time_scale=0.001)

    class Hogged(RacedLuxos):
        """The other tool logs off and on again around every one of our requests."""

        def handle_rpc(self, miner: EmulatedMiner, request: bytes) -> bytes:
            st = self._state(miner)
            if b'"session"' in request:
                st.session_id = ""  # it just logged off...
            return super().handle_rpc(miner, request)  # ...and logs on again

    family = Hogged(races=100)
    async with FamilyServer(family, miner):
        d = driver(ip=ip)
        await reading(d, ip)
        with pytest.raises(CommandFailed, match="another session is active"):
            await d.execute(cmd(ip, "sleep"), observed_state="mining", timeout_s=10,
                            attempts=2)
        assert miner.read().state == "mining"


async def test_curtaild_logs_off_the_session_it_opened() -> None:
    ip = "127.159.4.52"
    miner = EmulatedMiner(ip=ip, spec=MODELS["S19 XP"], time_scale=0.001)
    family = LuxosFamily()
    async with FamilyServer(family, miner):
        d = driver(ip=ip)
        await reading(d, ip)
        await d.execute(cmd(ip, "sleep"), observed_state="mining", timeout_s=20, attempts=2)
        assert miner.read().state == "sleeping"
        assert family._state(miner).session_id == ""  # the next actor can log on at once


async def test_an_atm_setting_that_cannot_be_journaled_changes_nothing() -> None:
    ip = "127.159.4.53"
    miner = EmulatedMiner(ip=ip, spec=MODELS["S19 XP"], time_scale=0.001)
    family = LuxosFamily()
    async with FamilyServer(family, miner):
        d = driver(ip=ip)
        d.luxos_atm.attach(FakeStore(fail=True))
        await reading(d, ip)
        with pytest.raises(CommandFailed, match="ATM setting not journaled"):
            await d.execute(cmd(ip, "limit", 2000.0), observed_state="mining", timeout_s=10,
                            attempts=3)
        st = family._state(miner)
        assert st.atm["Enabled"] is True and st.profile == "default"
        assert miner.power_limit_w is None


class FakeStore:
    def __init__(self, fail: bool = False) -> None:
        self.meta: dict[str, object] = {}
        self.fail = fail

    def get_meta(self, key: str) -> object | None:
        return self.meta.get(key)

    def set_meta(self, key: str, value: object) -> None:
        if self.fail:
            raise OSError("disk full")
        self.meta[key] = value


def test_atm_memory_keeps_the_first_setting_it_saw() -> None:
    mem = luxos.AtmMemory()
    store = FakeStore()
    mem.attach(store)
    mem.remember("A", True)
    mem.remember("A", False)  # ATM off now is curtaild's own doing: the operator's stays
    assert mem.get("A") is True and store.meta[luxos.ATM_META_KEY] == {"A": True}
    mem.forget("A")
    assert mem.get("A") is None and mem.keys() == set()


def test_profile_for_picks_what_pyasic_picks() -> None:
    steps = tuple(float(p.watts) for p in LADDER)
    assert luxos.profile_for(2000.0, steps) == profile_w(2000)
    assert luxos.profile_for(LADDER[0].watts - 1.0, steps) is None
