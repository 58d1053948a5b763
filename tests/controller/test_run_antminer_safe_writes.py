"""`curtaild run` against stock Antminers that behave like the field: slow, restarting, picky.

The emulator runs each machine on realistic firmware (the config CGI answers late, bmminer
restarts after every write, each generation obeys its own key) at a time scale where the
restart silence spans several poll intervals. curtaild must sleep the losers and wake them
again within their grace with their pools intact, and must refuse to write to a machine whose
config it cannot read (the read that makes pyasic post empty pools): nothing posted, the
failure journaled with its reason, the pools still there. Judged by the emulator's truth.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, journal_rows, wait_for, write_config
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

# 0.045 USD/TH/day, 2 % pool fee, 0.07 USD/kWh: S19j Pro stock (29.5 J/TH) loses, S21 earns.
FLEET = """
[[miner]]
model = "S19j Pro"
firmware_version = "2022-12"
[[miner]]
model = "S19j Pro"
firmware_version = "2025-10"
[[miner]]
model = "S19j Pro"
fault = "wipe_pools_on_failed_read"
[[miner]]
model = "S21"
firmware_version = "2025-10"
"""
FIRST = "127.158.4.1"
RANGE = "127.158.4.1-127.158.4.4"
OLD, NEW, UNREADABLE, WINNER = (f"127.158.4.{i}" for i in range(1, 5))
SCALE = 0.05  # CGI 1 s, bmminer silent 1.5 s, boards boot 4.5 s: several 1 s ticks


def _truth(emu: EmulatorProcess) -> dict[str, dict]:
    return {m["ip"]: m for m in emu.miners()}


def test_run_sleeps_and_wakes_slow_antminers_and_never_writes_blind(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    with EmulatorProcess(fleet_toml=FLEET, first_ip=FIRST, time_scale=SCALE) as emu:
        pools = {ip: m["pools"] for ip, m in _truth(emu).items()}
        write_config(cfg, ranges=[RANGE], hashprice=0.045, tariff=0.07, state_dir=state)
        with DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
            def losers_asleep() -> dict | None:
                t = _truth(emu)
                ok = all(t[ip]["state"] == "sleeping" for ip in (OLD, NEW))
                return t if ok and t[WINNER]["state"] == "mining" else None

            wait_for(losers_asleep, 90, what="both readable losers asleep")

            def refused_journaled() -> list | None:
                rows = journal_rows(state, "SELECT reason FROM events WHERE ip=? AND "
                                           "kind='outcome' AND result='failed'", (UNREADABLE,))
                return rows or None

            rows = wait_for(refused_journaled, 60, what="the unreadable miner's refusal")
            assert all("refused (read_failed)" in r[0] for r in rows), rows
            t = _truth(emu)[UNREADABLE]
            assert t["state"] == "mining" and t["pools_ok"] and t["pools"] == pools[UNREADABLE]
            assert [c for c in t["changes"] if c[2] == "client"] == []  # nothing was posted

            # The margin turns: the slept machines wake, within their grace, pools intact.
            write_config(cfg, ranges=[RANGE], hashprice=0.09, tariff=0.07, state_dir=state)
            daemon.proc.send_signal(1)

            def awake() -> dict | None:
                t = _truth(emu)
                return t if all(t[ip]["state"] == "mining" and t[ip]["hashrate_ths"] > 50
                                for ip in (OLD, NEW)) else None

            truth = wait_for(awake, 120, what="the slept machines hashing again")
            assert daemon.alive()
            log = daemon.log()
        for ip, m in truth.items():
            assert m["pools_ok"] and m["pools"] == pools[ip], ip
            assert "pools" not in [c[1] for c in m["changes"]], ip
        for ip in (OLD, NEW):
            actions = [c[1] for c in truth[ip]["changes"] if c[2] == "client"]
            assert actions.count("sleep") == 1 and actions.count("wake") == 1, (ip, actions)
        # the restart silences after curtaild's own writes were expected, not faults
        assert "transitioning" in log
        assert f"{OLD}: re-discovery" not in log and f"{NEW}: re-discovery" not in log
        assert "confirmed by telemetry" in log
