"""SIGHUP with a broken policy layer keeps the running policy; a valid layer is picked up.

A real `curtaild run` against real emulated miners on 127.52.1.x, judged by the emulator's
physical truth: under the rejected file (a profitable hash price plus ``[policy.thermal]
max_temp_c = "hot"``) the losing machine must stay asleep; the accepted file adds thermal
protection at 60 C, below the S21's running temperature, so the S21 is put to sleep.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, wait_for, write_config
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

FLEET = """
[[miner]]
model = "S21"
[[miner]]
model = "S19j Pro"
"""
FIRST, RANGE = "127.52.1.1", "127.52.1.1-127.52.1.2"
WINNER, LOSER = "127.52.1.1", "127.52.1.2"


def test_sighup_broken_policy_keeps_old_one_valid_layer_applies(tmp_path: Path) -> None:
    state, cfg = tmp_path / "state", tmp_path / "config.toml"
    with EmulatorProcess(fleet_toml=FLEET, first_ip=FIRST, time_scale=0.01) as emu:
        write_config(cfg, ranges=[RANGE], hashprice=0.045, tariff=0.07, state_dir=state)
        with DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
            wait_for(lambda: emu.miner(LOSER)["state"] == "sleeping", 60, what="loser asleep")
            assert emu.miner(WINNER)["state"] == "mining"

            write_config(cfg, ranges=[RANGE], hashprice=0.09, tariff=0.07, state_dir=state,
                         extra='\n[policy.thermal]\nmax_temp_c = "hot"\n')
            daemon.proc.send_signal(1)
            wait_for(lambda: "policy.thermal.max_temp_c" in daemon.log(), 20,
                     what="the rejection naming the key")
            assert "reload rejected, keeping the running config" in daemon.log()
            time.sleep(4)  # several ticks under the rejected file
            assert emu.miner(LOSER)["state"] == "sleeping"
            assert emu.miner(WINNER)["state"] == "mining"

            write_config(cfg, ranges=[RANGE], hashprice=0.045, tariff=0.07, state_dir=state,
                         extra="\n[policy.thermal]\nmax_temp_c = 60\nsleep_temp_c = 70\n")
            daemon.proc.send_signal(1)
            wait_for(lambda: "reloaded" in daemon.log(), 20, what="the reload")
            wait_for(lambda: emu.miner(WINNER)["state"] == "sleeping", 60,
                     what="the S21 slept by thermal")
            assert "thermal:" in daemon.log()
            assert daemon.alive()
            assert daemon.stop() == 0
