"""A LuxOS machine with ATM on, limited by the real `curtaild run`, keeps its limit (issue 14).

The real emulator (LuxOS ships with ATM on: on a cool machine it walks a hand-set profile back
up to the default, and pyasic's set_power_limit turns ATM back on after every profileset) and
a real daemon whose site power cap forces a power limit on an S19 XP:

1. the limit holds: curtaild turns ATM off before it sets the profile, so nothing moves it --
   one client profile change, no ATM step, well past ATM's PostRampMinutes;
2. someone turns ATM back on: the profile drifts, curtaild sees a limit off its target and
   re-sets it (ATM off again) at most once per ``verify_grace_s``, not every tick;
3. the cap is lifted: the limit is released and the operator's ATM setting (on) comes back.

Judged by the emulator's truth (GET /miners: profile, ATM, the actor log of changes).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pyasic.rpc.luxminer import LUXMinerRPCAPI

from curtaild.core.models import MODELS
from curtaild.emulator.families.luxos import profiles_for
from tests.support.daemon import DaemonProcess, journal_rows, wait_for, write_config
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

TIME_SCALE = 0.01  # ATM acts 9 s after a profile change, then one step per 0.6 s
XP = "127.159.5.1"
FLEET = f'[[miner]]\nmodel = "S19 XP"\nip = "{XP}"\n'
CAP_W = 2300.0
GRACE_S = 5.0
LADDER = profiles_for(MODELS["S19 XP"])
POST_RAMP_S = 15 * 60 * TIME_SCALE


class Toml:
    """A TOML literal for write_config (an inline table)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def config(path: Path, state: Path, cap_w: float | None) -> Path:
    extra = f"\n[policy.power_cap]\ncap_w = {cap_w}\nheadroom_w = 0\n" if cap_w else ""
    return write_config(path, ranges=[f"{XP}-{XP}"], hashprice=0.09, tariff=0.07,
                        state_dir=state, policy={"use_power_limits": False},
                        guards={"confirm_grace_s": Toml(f"{{ luxos = {GRACE_S} }}"),
                                "limit_dwell_s": 1.0, "limit_restart_s": Toml("{ luxos = 0 }")},
                        controller={"verify_grace_s": GRACE_S}, extra=extra)


def client_limits(view: dict, since: float = 0.0) -> list[float]:
    return [c[0] for c in view["changes"]
            if c[1] == "limit" and c[2] == "client" and c[0] >= since]


def atm_meta(state: Path) -> dict | None:
    rows = journal_rows(state, "SELECT value FROM meta WHERE key='luxos_atm_operator'")
    return json.loads(rows[0][0]) if rows else None


async def _atm_on(ip: str) -> None:
    rpc = LUXMinerRPCAPI(ip)
    await rpc.auth()
    await rpc.atmset(enabled=True)
    await rpc.send_command("logoff", rpc.session_token)


def test_a_limited_luxos_machine_keeps_its_limit_and_gets_its_atm_back(tmp_path: Path) -> None:
    import asyncio

    state, cfg = tmp_path / "state", tmp_path / "config.toml"
    with EmulatorProcess(fleet_toml=FLEET, first_ip=XP, time_scale=TIME_SCALE) as emu:
        assert emu.miner(XP)["atm"] is True
        config(cfg, state, CAP_W)
        with DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
            # 1. limited under the cap, ATM off, and it stays there past ATM's PostRampMinutes
            v = wait_for(lambda: (m := emu.miner(XP))["profile_w"] <= CAP_W and m, 60,
                         what="the XP limited under the cap")
            target = v["profile"]
            assert v["atm"] is False and v["profile_w"] <= CAP_W
            assert atm_meta(state) == {XP: True}  # journaled before ATM was touched
            time.sleep(POST_RAMP_S + 6.0)
            v = emu.miner(XP)
            assert v["profile"] == target and v["atm_steps"] == 0, v["changes"][-5:]
            assert len(client_limits(v)) == 1  # one profile change, nothing fought

            # 2. ATM turned back on by someone else: it drifts, curtaild re-sets it once a grace
            since = time.time()
            asyncio.run(_atm_on(XP))
            wait_for(lambda: emu.miner(XP)["atm_steps"] > 0, 30, what="ATM drifting the profile")
            v = wait_for(lambda: (m := emu.miner(XP))["atm"] is False
                         and m["profile"] == target and m, 60, what="the profile re-set")
            time.sleep(2 * GRACE_S)
            v = emu.miner(XP)
            window = time.time() - since
            resets = client_limits(v, since)
            assert 1 <= len(resets) <= 1 + window / GRACE_S, (resets, window)
            assert v["profile"] == target and v["atm"] is False
            assert atm_meta(state) == {XP: True}  # still the operator's, not "off"

            # 3. the cap is lifted: the limit is released and the operator's ATM is back on
            config(cfg, state, None)
            daemon.proc.send_signal(1)
            v = wait_for(lambda: (m := emu.miner(XP))["profile"] == "default"
                         and m["atm"] is True and m, 60, what="released, ATM restored")
            assert atm_meta(state) == {}
            assert daemon.alive()
            assert daemon.stop() == 0
        assert "flagged" not in " ".join(r[0] for r in journal_rows(
            state, "SELECT kind FROM events"))
