"""SIGHUP against a running `curtaild run`: a valid file is swapped in, an invalid one is
rejected with the reason and the running configuration keeps steering the fleet.

Judged by the emulator's truth and the daemon's own metrics, not by log lines alone: a
rejected reload that raises the hash price must not wake a machine, the accepted one must.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, wait_for, write_config
from tests.support.emulator import EmulatorProcess, free_port

pytestmark = pytest.mark.integration

# One S21 (earns at 0.045) and one stock S19j Pro (29.5 J/TH: loses at 0.045 USD/TH/day and
# 0.07 USD/kWh, earns at 0.09).
FLEET = """
[[miner]]
model = "S21"
[[miner]]
model = "S19j Pro"
"""
FIRST = "127.21.0.1"
RANGE = "127.21.0.1-127.21.0.2"
LOSER = "127.21.0.2"


def _metric(port: int, name: str, label: str) -> float | None:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + "{") and label in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_sighup_invalid_files_keep_running_config_valid_one_applies(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    port = free_port()
    metrics = f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
    with EmulatorProcess(fleet_toml=FLEET, first_ip=FIRST, time_scale=0.01) as emu:
        write_config(cfg, ranges=[RANGE], hashprice=0.045, tariff=0.07, state_dir=state,
                     extra=metrics)
        with DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
            wait_for(lambda: emu.miner(LOSER)["state"] == "sleeping", 60, what="loser asleep")

            bad_files = {
                "toml": "[fleet\nranges = 1\n",
                "key": None,  # a profitable hash price plus one invalid guard value
                "policy": None,  # a profitable hash price plus an unknown policy
            }
            write_config(cfg, ranges=[RANGE], hashprice=0.09, tariff=0.07, state_dir=state,
                         guards={"hysteresis_usd_per_day": -1.0}, extra=metrics)
            bad_files["key"] = cfg.read_text()
            write_config(cfg, ranges=[RANGE], hashprice=0.09, tariff=0.07, state_dir=state,
                         policy={"name": "no_such_policy"}, extra=metrics)
            bad_files["policy"] = cfg.read_text()
            expected_reason = {
                "toml": "not valid TOML",
                "key": "guards.hysteresis_usd_per_day",
                "policy": "unknown policy 'no_such_policy'",
            }
            for n, (kind, text) in enumerate(bad_files.items(), start=1):
                cfg.write_text(text)
                daemon.proc.send_signal(1)
                wait_for(lambda n=n: _metric(port, "curtaild_config_reloads_total",
                                             'result="failed"') == n,
                         20, what=f"reload #{n} ({kind}) counted as failed")
                assert expected_reason[kind] in daemon.log(), kind
            # Several ticks under the rejected files: the loser stays asleep, nothing crashed.
            time.sleep(4)
            assert emu.miner(LOSER)["state"] == "sleeping"
            assert daemon.alive()
            assert "reload rejected, keeping the running config" in daemon.log()
            assert _metric(port, "curtaild_config_reloads_total", 'result="ok"') == 0

            write_config(cfg, ranges=[RANGE], hashprice=0.09, tariff=0.07, state_dir=state,
                         extra=metrics)
            daemon.proc.send_signal(1)
            wait_for(lambda: _metric(port, "curtaild_config_reloads_total",
                                     'result="ok"') == 1, 20, what="valid reload counted")
            wait_for(lambda: emu.miner(LOSER)["state"] == "mining", 60,
                     what="the valid reload's hash price wakes the loser")
            assert daemon.stop() == 0


def test_sighup_while_starting_reloads_instead_of_killing(tmp_path: Path) -> None:
    """SIGHUP's default action is to terminate: one sent while the daemon is still importing
    and building its drivers must be held and turned into a reload once the loop is up."""
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    with EmulatorProcess(fleet_toml=FLEET, first_ip="127.21.1.1", time_scale=0.01) as emu:
        write_config(cfg, ranges=["127.21.1.1-127.21.1.2"], hashprice=0.045, tariff=0.07,
                     state_dir=state)
        with DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
            time.sleep(0.4)  # past interpreter start-up, long before the event loop exists
            assert "curtaild starting" not in daemon.log()
            daemon.proc.send_signal(1)
            wait_for(lambda: "reloaded" in daemon.log(), 30, what="the held reload")
            assert daemon.alive()
            assert "SIGHUP arrived while starting" in daemon.log()
            wait_for(lambda: emu.miner("127.21.1.2")["state"] == "sleeping", 60,
                     what="the daemon still controls the fleet")
            assert daemon.stop() == 0
