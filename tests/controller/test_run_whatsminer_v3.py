"""`curtaild run` on a Whatsminer with API v3 firmware (pyasic's BTMinerV3), in separate
processes, judged by the emulator's truth: slept when it loses money, read as asleep (not
unreachable) and still owned while btminer is down, woken when it earns again, and on one
salt -- the firmware's token -- for the whole run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, journal_rows, wait_for, write_config
from tests.support.emulator import SITE_WHATSMINER_PASSWORD, EmulatorProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

V3 = "127.156.3.1"
FLEET = (f'[[miner]]\nmodel = "M50"\nip = "{V3}"\napi = "v3"\n'
         f'password = "{SITE_WHATSMINER_PASSWORD}"\n')  # set up as at a site
# 0.02 USD/TH/day at 0.07 USD/kWh: breakeven 11.7 J/TH, the M50 (29 J/TH) loses even at its
# lowest limit; at 0.09 it earns at full power.
LOSING, EARNING = 0.02, 0.09


def _status_of(state: Path) -> tuple[float, dict] | None:
    """(when the tick ran, the M50's entry) from the daemon's status.json."""
    try:
        status = json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        return None
    m = next((m for m in status.get("miners", []) if m["ip"] == V3), None)
    return (status["at"], m) if m else None


def _asleep_after(state: Path, after: float) -> tuple[float, dict] | None:
    s = _status_of(state)
    if s and s[0] > after and s[1]["state"] == "sleeping" and s[1]["error"] is None:
        return s
    return None


def test_run_sleeps_and_wakes_a_v3_whatsminer(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    with EmulatorProcess(fleet_toml=FLEET, first_ip=V3, time_scale=0.01) as emu:
        write_config(cfg, ranges=[f"{V3}-{V3}"], hashprice=LOSING, tariff=0.07,
                     state_dir=state)
        with DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
            wait_for(lambda: emu.miner(V3)["state"] == "sleeping", 60, what="M50 asleep")
            assert emu.miner(V3)["process"] == "off"
            # Several ticks later it is still read as asleep -- btminer down is not
            # "unreachable" -- and still curtaild's.
            at, _ = wait_for(lambda: _asleep_after(state, 0.0), 30, what="status: asleep")
            for _ in range(3):
                at, _ = wait_for(lambda: _asleep_after(state, at), 30,  # noqa: B023
                                 what="a later tick still reads it asleep")
            assert [r[0] for r in journal_rows(state, "SELECT ip FROM curtailed")] == [V3]
            write_config(cfg, ranges=[f"{V3}-{V3}"], hashprice=EARNING, tariff=0.07,
                         state_dir=state)
            daemon.proc.send_signal(1)
            wait_for(lambda: emu.miner(V3)["state"] == "mining", 60, what="M50 woken")
            wait_for(lambda: not journal_rows(state, "SELECT * FROM curtailed"), 60,
                     what="ownership released once observed running")
            assert daemon.alive()
            assert daemon.stop() == 0
        tokens = emu.miner(V3)["api_tokens"]
        assert tokens["issued"] == {"127.0.0.1": 1} and tokens["refused"] == {}
        actions = [c[1] for c in emu.miner(V3)["changes"]]
        assert "sleep" in actions and "wake" in actions
    log = daemon.log()
    assert "Traceback" not in log
