"""Restart to first decision and first command, with and without the identity cache (issue 19,
warm start).

    python bench/warm_start.py                    # 1,000 emulated miners
    python bench/warm_start.py --miners 10000     # ~4 min on 2 cores
    python bench/warm_start.py --miners 10000 --then-ticks 9   # + the warm start's next ticks
    python bench/warm_start.py --miners 10000 --restart        # + a restart with its journal

A real ``curtaild run`` against ``curtaild emulate --count N`` (every model in turn), a fixed
hash price and tariff at which part of the fleet loses money, so the first tick sleeps some
machines. Two starts, each on a freshly started emulator (common.EmulatorFleet: processes of
5,000 miners; every machine mining):

* cold: an empty state directory: every address is discovered (``pyasic.get_miner``) first;
* warm: the state directory holds only ``identities.json`` from the cold start: every miner
  object is built from it and the first sweep is an ordinary poll.

Reported, in seconds from exec: the first decision (the first command's intent in the journal:
written once the first sweep is done, the policy and the guards have decided, just before the
command leaves), the first command acknowledged by a miner (its log line is written on the
acknowledgement) and the end of the first tick (every command of it answered); and the
daemon's CPU seconds at the first acknowledgement. With ``--then-ticks K`` the warm start runs
K more ticks (every ``--poll-interval`` s), whose durations are listed: the reads a warm start
owes (drivers/miners.py SETTLE_SWEEPS) are made in them. Uses 127.195.0.1 upwards (loopback;
ports 80 and 4028 need root).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import EmulatorFleet, cpu_s, print_machine, raise_nofile, table, ticks

from tests.support.daemon import write_config

REPO = Path(__file__).resolve().parents[1]
FIRST = "127.195.0.1"
#: a command's log line, written when the miner acknowledged it
ACK = re.compile(r" curtaild\.loop: (sleep|limit) ")
LOG_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _ts(line: str) -> float | None:
    m = LOG_TS.match(line)
    if not m:
        return None
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _first_intent(state: Path) -> float | None:
    db = state / "journal.sqlite"
    if not db.exists():
        return None
    con = sqlite3.connect(db, timeout=10)
    try:
        return con.execute("SELECT MIN(ts) FROM events WHERE kind='intent'").fetchone()[0]
    finally:
        con.close()


def _config(emu: EmulatorFleet, state: Path, poll_s: float, commands_per_tick: int = 50
            ) -> Path:
    cfg = write_config(state.parent / "config.toml", ranges=emu.ranges(),
                       hashprice=0.045, tariff=0.07, state_dir=state,
                       poll_interval_s=poll_s,
                       guards={"ramp_w_per_min": 1e9,
                               "max_commands_per_tick": commands_per_tick},
                       controller={"verify_grace_s": 120.0, "command_timeout_s": 10.0})
    text = cfg.read_text().replace('poll_timeout_s = 5.0', 'poll_timeout_s = 10.0')
    cfg.write_text(text.replace('discovery_timeout_s = 8.0', 'discovery_timeout_s = 30.0'))
    return cfg


def _run_until_tick(cfg: Path, log_path: Path, timeout_s: float
                    ) -> tuple[float, float, float]:
    """Start ``curtaild run``; (s from exec to its first tick's end, daemon CPU s then, the
    exec's unix time)."""
    with open(log_path, "wb") as out:
        started = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "curtaild.controller.cli",
                                 "--config", str(cfg), "run"], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                time.sleep(0.2)
                done = ticks(log_path)
                if done:
                    return done[0][0] - started, cpu_s(proc.pid), started
            raise RuntimeError(f"no tick within {timeout_s}s; see {log_path}")
        finally:
            proc.terminate()
            proc.wait(60)


def restart(n: int, tmp: Path, timeout_s: float, per_process: int
            ) -> tuple[int, float | None, float, float]:
    """A daemon restarted on the fleet it left, its whole state directory kept (journal and
    identities.json): (machines the journal holds rows for, s from exec to its first decision
    (its first command's intent; None if it sent none), to the first tick's end -- which
    waits for that tick's commands --, daemon CPU s then). The machines curtaild slept or
    limited are read in full in the first sweep (drivers/miners.py _from_cache); the rest is a
    known machine's poll. The first
    run may send 1,000 commands in its tick (not 50), so the journal holds what a site well into
    a curtailment holds. (Unbounded, the first tick of 10,000 did not end within 600 s.)"""
    state = tmp / "restart" / "state"
    state.mkdir(parents=True)
    with EmulatorFleet(n, FIRST, per_process) as emu:
        cfg = _config(emu, state, 60.0, commands_per_tick=1000)
        log_path = state.parent / "run.log"
        _run_until_tick(cfg, log_path, timeout_s)  # discovers; its first tick commands
        time.sleep(5.0)  # the first tick's commands are answered before the stop
        con = sqlite3.connect(state / "journal.sqlite", timeout=10)
        try:
            owned = con.execute("SELECT COUNT(*) FROM (SELECT miner FROM curtailed UNION "
                                "SELECT miner FROM expectations)").fetchone()[0]
        finally:
            con.close()
        took, cpu, started = _run_until_tick(cfg, state.parent / "restart.log", timeout_s)
        con = sqlite3.connect(state / "journal.sqlite", timeout=10)
        try:
            first = con.execute("SELECT MIN(ts) FROM events WHERE kind='intent' AND ts >= ?",
                                (started,)).fetchone()[0]
        finally:
            con.close()
    return owned, None if first is None else first - started, took, cpu


def one_start(n: int, state: Path, log_path: Path, timeout_s: float, per_process: int,
              then_ticks: int = 0, poll_s: float = 60.0
              ) -> tuple[float, float, float, float, list[tuple[float, float]]]:
    """(s to the first decision, to the first command acknowledged, to the end of the first
    tick, daemon CPU s at the first acknowledgement, [(duration s, daemon CPU s) of each of the
    ``then_ticks`` ticks after the first]) on a fresh fleet."""
    with EmulatorFleet(n, FIRST, per_process) as emu:
        cfg = _config(emu, state, poll_s)
        with open(log_path, "wb") as out:
            started = time.time()
            proc = subprocess.Popen([sys.executable, "-m", "curtaild.controller.cli",
                                     "--config", str(cfg), "run"], cwd=REPO, stdout=out,
                                    stderr=subprocess.STDOUT)
            commanded = ticked = None
            cpu = float("nan")
            deadline = time.monotonic() + timeout_s
            try:
                while time.monotonic() < deadline and ticked is None:
                    time.sleep(0.2)
                    for line in log_path.read_text(errors="replace").splitlines():
                        if commanded is None and ACK.search(line):
                            commanded = _ts(line)
                            cpu = cpu_s(proc.pid)
                        if commanded is not None and " curtaild: tick " in line:
                            ticked = _ts(line)
                            break
                decided = _first_intent(state)
                later: list[tuple[float, float]] = []
                cpu_before = cpu
                while time.monotonic() < deadline + then_ticks * poll_s * 2 \
                        and len(later) < then_ticks:
                    time.sleep(0.5)
                    done = ticks(log_path)[1:]
                    if len(done) > len(later):
                        now_cpu = cpu_s(proc.pid)
                        later.append((done[len(later)][1], now_cpu - cpu_before))
                        cpu_before = now_cpu
            finally:
                proc.terminate()
                proc.wait(60)
        if commanded is None or ticked is None or decided is None:
            raise RuntimeError(f"no command within {timeout_s}s; see {log_path}")
        return decided - started, commanded - started, ticked - started, cpu, later


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--miners", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--per-emulator", type=int, default=5000,
                    help="miners per emulator process (common.EmulatorFleet: descriptors)")
    ap.add_argument("--then-ticks", type=int, default=0,
                    help="after the warm start's first tick, time this many more")
    ap.add_argument("--poll-interval", type=float, default=60.0,
                    help="poll_interval_s of the daemon (the ticks after the first)")
    ap.add_argument("--restart", action="store_true",
                    help="also: a restart on the fleet it left, journal kept (to its first tick)")
    args = ap.parse_args()
    raise_nofile()
    print_machine()
    load = os.getloadavg()
    print(f"load before   {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    rows = []
    later: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="curtaild-warm-") as tmp:
        cold_state = Path(tmp) / "cold" / "state"
        warm_state = Path(tmp) / "warm" / "state"
        cold_state.parent.mkdir()
        warm_state.mkdir(parents=True)
        for name, state in (("cold (discovery)", cold_state),
                            ("warm (identities.json)", warm_state)):
            if state is warm_state:
                shutil.copy(cold_state / "identities.json", warm_state / "identities.json")
            warm = state is warm_state
            d, c, t, cpu, after = one_start(args.miners, state, state.parent / "run.log",
                                            args.timeout, args.per_emulator,
                                            args.then_ticks if warm else 0, args.poll_interval)
            if warm:
                later = after
            rows.append((name, f"{d:.1f}", f"{c:.1f}", f"{t:.1f}", f"{cpu:.1f}"))
            print(f"{name}: first decision {d:.1f} s", flush=True)
    load = os.getloadavg()
    print(f"\n{args.miners} emulated miners, `curtaild run` from exec (load after: "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}):")
    table(("start", "first decision s", "first command acked s", "first tick done s",
           "daemon CPU s at the first ack"), rows)
    if args.restart:
        with tempfile.TemporaryDirectory(prefix="curtaild-restart-") as tmp:
            owned, decided, took, cpu = restart(args.miners, Path(tmp), args.timeout,
                                                args.per_emulator)
        first = "none sent" if decided is None else f"{decided:.1f} s"
        print(f"\nrestart on the fleet it left, journal and identities.json kept: first "
              f"decision {first}, first tick done {took:.1f} s after exec, daemon CPU "
              f"{cpu:.1f} s; the journal held rows for {owned} machines (read in full in the "
              f"first sweep)")
    if later:
        print(f"\nthe warm start's next {len(later)} ticks (poll_interval_s = "
              f"{args.poll_interval:g}; the owed reads are made in them, a share a sweep):")
        table(("tick", "duration s", "daemon CPU s"),
              [(i + 2, f"{d:.1f}", f"{c:.1f}") for i, (d, c) in enumerate(later)])


if __name__ == "__main__":
    main()
