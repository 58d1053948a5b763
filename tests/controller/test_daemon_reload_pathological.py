"""SIGHUP with a pathological file against a running `curtaild run`: the file is rejected like
any other invalid one and the daemon keeps steering the fleet on the config it had.

A 5,000-deep nested array made the parser raise RecursionError, which the reload did not
treat as a config problem: the daemon died (and systemd restarted it into the same file).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, ticks, wait_for, write_config
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

# One S21 (earns at 0.045) and one stock S19j Pro (loses at 0.045 USD/TH/day and 0.07
# USD/kWh, earns at 0.09): which of them mines tells which config is in force.
FLEET = """
[[miner]]
model = "S21"
[[miner]]
model = "S19j Pro"
"""
FIRST = "127.155.0.1"
RANGE = "127.155.0.1-127.155.0.2"
LOSER = "127.155.0.2"
DEEP = "\n[site]\nnotes = " + "[" * 5000 + "]" * 5000 + "\n"


def test_sighup_with_a_5000_deep_array_keeps_the_daemon_on_its_config(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    with EmulatorProcess(fleet_toml=FLEET, first_ip=FIRST, time_scale=0.01) as emu:
        write_config(cfg, ranges=[RANGE], hashprice=0.045, tariff=0.07, state_dir=state)
        with DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
            wait_for(lambda: emu.miner(LOSER)["state"] == "sleeping", 60, what="loser asleep")
            # The pathological file would also wake the loser (a profitable hash price).
            write_config(cfg, ranges=[RANGE], hashprice=0.09, tariff=0.07, state_dir=state,
                         extra=DEEP)
            daemon.proc.send_signal(1)
            wait_for(lambda: "reload rejected, keeping the running config" in daemon.log(),
                     20, what="the reload rejected")
            assert daemon.alive(), daemon.log()[-3000:]
            assert f"{cfg}: not valid TOML: nested too deeply" in daemon.log()
            assert "Traceback" not in daemon.log()
            # Still ticking, on the old config: the loser stays asleep.
            before = ticks(daemon)
            wait_for(lambda: ticks(daemon) >= before + 3, 30, what="three more ticks")
            time.sleep(1)
            assert emu.miner(LOSER)["state"] == "sleeping"
            assert daemon.alive()
            assert daemon.stop() == 0


def test_start_with_a_5000_deep_array_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    write_config(cfg, ranges=[RANGE], hashprice=0.045, tariff=0.07,
                 state_dir=tmp_path / "state", extra=DEEP)
    with DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
        assert daemon.proc is not None
        assert daemon.proc.wait(timeout=60) == 2, daemon.log()[-3000:]
        assert "Traceback" not in daemon.log()
        assert (f"refusing to start, invalid configuration {cfg}: {cfg}: not valid TOML: "
                "nested too deeply") in daemon.log()
