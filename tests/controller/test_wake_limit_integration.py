"""A machine curtaild wakes gets the power curtaild wants, never a stale limit (issue 16, item 1).

Real emulator, real ``curtaild run``, real ``curtaild adopt``. A Whatsminer M50 sits asleep
under a 2000 W limit nobody recorded: put to sleep at the machine, limit set in the fleet file
(as after a lost journal, where curtaild had limited, then slept it). curtaild, starting on a
new journal, reports it as of unknown owner; ``adopt`` hands it to curtaild, whose restore
limit is therefore unknown. At an earning price curtaild wakes it. Before the fix the wake was
a plain resume: the machine came back at 2000 W, the wake released ownership, and the limit
passed for the operator's for good. Now the wake carries nameplate (3306 W) and curtaild keeps
ownership until the machine is seen there.

Addresses: 127.163.0.0/16 only.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.daemon import REPO, DaemonProcess, journal_rows, ticks, wait_for, write_config
from tests.support.emulator import SITE_WHATSMINER_PASSWORD, EmulatorProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IP = "127.163.0.1"
FLEET = (f'[[miner]]\nmodel = "M50"\nip = "{IP}"\npower_limit_w = 2000\n'
         f'password = "{SITE_WHATSMINER_PASSWORD}"\n')  # set up as at a site
NAMEPLATE_W = 3306.0


def _cli(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curtaild.controller.cli", "--config", str(cfg),
                           *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_adopted_limited_sleeper_wakes_at_nameplate_not_its_stale_limit(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "config.toml", ranges=[f"{IP}-{IP}"], hashprice=0.2,
                       tariff=0.03, state_dir=state)
    with EmulatorProcess(fleet_toml=FLEET, first_ip=IP, time_scale=0.02) as emu:
        emu.action(IP, "sleep")
        emu.wait_state(IP, "sleeping")
        assert emu.miner(IP)["power_limit_w"] == 2000
        with DaemonProcess(cfg, tmp_path / "daemon.log") as d:
            wait_for(lambda: f"unknown owner: {IP} " in d.log(), 60,
                     what="the sleeper reported as of unknown owner")
            done = _cli(cfg, "adopt", IP)
            assert done.returncode == 0 and f"adopted: {IP}" in done.stdout, done.stderr
            emu.wait_state(IP, "mining", timeout=60)
            wait_for(lambda: emu.miner(IP)["power_limit_w"] == NAMEPLATE_W, 60,
                     what=f"woken at nameplate (limit now {emu.miner(IP)['power_limit_w']})")
            wait_for(lambda: not journal_rows(state, "SELECT * FROM curtailed"), 60,
                     what="ownership released once the machine is back at nameplate")
            start = ticks(d)
            wait_for(lambda: ticks(d) >= start + 3, 60, what="three more ticks")
            time.sleep(0.5)
            m = emu.miner(IP)
            assert (m["state"], m["power_limit_w"]) == ("mining", NAMEPLATE_W)
            assert d.stop() == 0
    wakes = journal_rows(state, "SELECT power_limit_w FROM events WHERE kind='intent'"
                                " AND action='run'")
    assert wakes == [(NAMEPLATE_W,)], wakes
