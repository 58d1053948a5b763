"""`curtaild run` against the emulator, separate processes, judged by the emulator's truth.

A fixed hash price and a flat tariff split the fleet: machines whose marginal margin is
negative must end up asleep in the emulator's physical truth (GET /miners), the others mining;
raising the hash price brings them back, staggered within the ramp limit; kill -9 mid-ramp and
a restart converge with no machine lost.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, journal_rows, wait_for, write_config
from tests.support.emulator import SITE_WHATSMINER_PASSWORD, EmulatorProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# 0.045 USD/TH/day, 2 % pool fee, 0.07 USD/kWh: breakeven efficiency 26.25 J/TH.
# S21 (17.5 J/TH) and S19 XP on LuxOS (21.3) earn; S19j Pro stock (29.5, cannot power-limit)
# and M30S (38.0; even at its lowest power limit it loses more than asleep) lose.
FLEET = f"""
[[miner]]
model = "S21"
count = 2
[[miner]]
model = "S19 XP"
[[miner]]
model = "S19j Pro"
count = 3
[[miner]]
model = "M30S"
password = "{SITE_WHATSMINER_PASSWORD}"
"""
FIRST = "127.20.0.1"
RANGE = "127.20.0.1-127.20.0.7"
LOSERS = {"127.20.0.4", "127.20.0.5", "127.20.0.6", "127.20.0.7"}
RAMP_W_PER_MIN = 60000.0


def _states(emu: EmulatorProcess) -> dict[str, str]:
    return {m["ip"]: m["state"] for m in emu.miners()}


def _split_reached(emu: EmulatorProcess) -> dict[str, str] | None:
    states = _states(emu)
    ok = all((states[ip] == "sleeping") == (ip in LOSERS) for ip in states)
    ok = ok and all(states[ip] == "mining" for ip in states if ip not in LOSERS)
    return states if ok else None


def _all_mining(emu: EmulatorProcess) -> dict[str, str] | None:
    states = _states(emu)
    return states if all(s == "mining" for s in states.values()) else None


def test_run_splits_fleet_then_restores_staggered(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    guards = {"ramp_w_per_min": RAMP_W_PER_MIN}
    with EmulatorProcess(fleet_toml=FLEET, first_ip=FIRST, time_scale=0.01) as emu:
        write_config(cfg, ranges=[RANGE], hashprice=0.045, tariff=0.07, state_dir=state,
                     guards=guards)
        with DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
            wait_for(lambda: _split_reached(emu), 90, what="losers asleep, winners mining")
            curtailed = {r[0] for r in journal_rows(state, "SELECT ip FROM curtailed")}
            assert curtailed == LOSERS
            # Raise the hash price: every machine earns again; SIGHUP reloads the config.
            write_config(cfg, ranges=[RANGE], hashprice=0.09, tariff=0.07, state_dir=state,
                         guards=guards)
            daemon.proc.send_signal(1)
            wait_for(lambda: _all_mining(emu), 120, what="all machines mining again")
            wait_for(lambda: not journal_rows(state, "SELECT * FROM curtailed"), 30,
                     what="ownership released once observed running")
            assert daemon.alive()
            assert daemon.stop() == 0
        _assert_within_ramp(state, "run")
        _assert_within_ramp(state, "sleep")
        assert "reloaded" in daemon.log()


def _assert_within_ramp(state: Path, action: str) -> None:
    """Sent commands never move more power than the ramp allows in any window."""
    rows = journal_rows(
        state,
        "SELECT e.ts, e.miner FROM events e WHERE e.kind='intent' AND e.action=? ORDER BY e.id",
        (action,),
    )
    assert rows, f"no {action} commands journaled"
    # Each machine here moves at most ~3.5 kW; the bucket holds at most one minute's worth or
    # one machine's step. Over any window, moved <= capacity + rate * window.
    step_w = 3600.0
    capacity = max(RAMP_W_PER_MIN, step_w)
    times = [r[0] for r in rows]
    for i, t0 in enumerate(times):
        for j in range(i, len(times)):
            moved = (j - i + 1) * 3000.0  # every machine here moves more than 3 kW
            window = times[j] - t0
            assert moved <= capacity + RAMP_W_PER_MIN / 60.0 * window + step_w, (
                f"{action}: {moved} W in {window:.1f}s exceeds the ramp")


def test_kill9_mid_ramp_then_restart_converges(tmp_path: Path) -> None:
    """A slow ramp so the daemon is killed with only part of the curtailment done."""
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    guards = {"ramp_w_per_min": 9000.0}
    with EmulatorProcess(fleet_toml=FLEET, first_ip="127.20.1.1", time_scale=0.01) as emu:
        rng = "127.20.1.1-127.20.1.7"
        losers = {ip.replace("127.20.0.", "127.20.1.") for ip in LOSERS}
        write_config(cfg, ranges=[rng], hashprice=0.045, tariff=0.07, state_dir=state,
                     guards=guards)
        first = DaemonProcess(cfg, tmp_path / "daemon1.log").start()
        try:
            wait_for(lambda: any(s == "sleeping" for s in _states(emu).values()), 60,
                     what="the first machine asleep")
            first.kill9()
        finally:
            if first.alive():
                first.kill9()
        asleep = {ip for ip, s in _states(emu).items() if s == "sleeping"}
        assert asleep and asleep < losers, f"not mid-ramp: {asleep}"
        # Meanwhile an operator sleeps a profitable machine by hand: never to be woken.
        emu.action("127.20.1.1", "sleep")
        with DaemonProcess(cfg, tmp_path / "daemon2.log") as second:
            def converged() -> dict[str, str] | None:
                s = _states(emu)
                want = {ip: ("sleeping" if ip in losers or ip == "127.20.1.1" else "mining")
                        for ip in s}
                return s if s == want else None

            wait_for(converged, 120, what="losers asleep after restart")
            # Now the margin says run: everything curtaild slept wakes; the operator's stays.
            write_config(cfg, ranges=[rng], hashprice=0.09, tariff=0.07, state_dir=state,
                         guards={"ramp_w_per_min": 60000.0})
            second.proc.send_signal(1)

            def restored() -> dict[str, str] | None:
                s = _states(emu)
                want = {ip: ("sleeping" if ip == "127.20.1.1" else "mining") for ip in s}
                return s if s == want else None

            wait_for(restored, 120, what="curtaild's machines awake, operator's asleep")
            time.sleep(3)
            assert _states(emu)["127.20.1.1"] == "sleeping"
            assert second.stop() == 0
        woken = {r[0] for r in journal_rows(
            state, "SELECT ip FROM events WHERE kind='intent' AND action='run'")}
        assert "127.20.1.1" not in woken
        assert losers <= woken
