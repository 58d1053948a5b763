"""Restart to first command, with and without the identity cache (issue 19, warm start).

    python bench/warm_start.py                    # 1,000 emulated miners
    python bench/warm_start.py --miners 2000

A real ``curtaild run`` against ``curtaild emulate --count N`` (every model in turn), a fixed
hash price and tariff at which part of the fleet loses money, so the first tick sleeps some
machines. Two starts, each on a freshly started emulator (every machine mining):

* cold: an empty state directory: every address is discovered (``pyasic.get_miner``) first;
* warm: the state directory holds only ``identities.json`` from the cold start: every miner
  object is built from it and the first sweep is an ordinary poll.

Reported: seconds from exec to the first command acknowledged by a miner (its log line is
written on the acknowledgement, so this includes the first sweep, the decision and one command
round trip), and the daemon's CPU seconds at that moment. Uses 127.195.0.1 upwards
(loopback; ports 80 and 4028 need root).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Emulator, cpu_s, print_machine, raise_nofile, table

from tests.support.daemon import write_config

REPO = Path(__file__).resolve().parents[1]
FIRST = "127.195.0.1"
LOG_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _ts(line: str) -> float | None:
    m = LOG_TS.match(line)
    if not m:
        return None
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def one_start(n: int, state: Path, log_path: Path, timeout_s: float) -> tuple[float, float]:
    """(s to the first command, daemon CPU s by then) on a fresh fleet."""
    with Emulator(n, FIRST) as emu:
        ips = emu.ips()
        cfg = write_config(state.parent / "config.toml", ranges=[f"{ips[0]}-{ips[-1]}"],
                           hashprice=0.045, tariff=0.07, state_dir=state,
                           poll_interval_s=60.0, guards={"ramp_w_per_min": 1e9},
                           controller={"verify_grace_s": 120.0, "command_timeout_s": 10.0})
        text = cfg.read_text().replace('poll_timeout_s = 5.0', 'poll_timeout_s = 10.0')
        cfg.write_text(text.replace('discovery_timeout_s = 8.0', 'discovery_timeout_s = 30.0'))
        with open(log_path, "wb") as out:
            started = time.time()
            proc = subprocess.Popen([sys.executable, "-m", "curtaild.controller.cli",
                                     "--config", str(cfg), "run"], cwd=REPO, stdout=out,
                                    stderr=subprocess.STDOUT)
            commanded = None
            cpu = float("nan")
            deadline = time.monotonic() + timeout_s
            try:
                while time.monotonic() < deadline and commanded is None:
                    time.sleep(0.2)
                    for line in log_path.read_text(errors="replace").splitlines():
                        if commanded is None and " curtaild.loop: sleep " in line:
                            commanded = _ts(line)
                            cpu = cpu_s(proc.pid)
                            break
            finally:
                proc.terminate()
                proc.wait(60)
        if commanded is None:
            raise RuntimeError(f"no command within {timeout_s}s; see {log_path}")
        return commanded - started, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--miners", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    raise_nofile()
    print_machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="curtaild-warm-") as tmp:
        cold_state = Path(tmp) / "cold" / "state"
        warm_state = Path(tmp) / "warm" / "state"
        cold_state.parent.mkdir()
        warm_state.mkdir(parents=True)
        c, cpu = one_start(args.miners, cold_state, Path(tmp) / "cold.log", args.timeout)
        rows.append(("cold (discovery)", f"{c:.1f}", f"{cpu:.1f}"))
        shutil.copy(cold_state / "identities.json", warm_state / "identities.json")
        c, cpu = one_start(args.miners, warm_state, Path(tmp) / "warm.log", args.timeout)
        rows.append(("warm (identities.json)", f"{c:.1f}", f"{cpu:.1f}"))
    print(f"\n{args.miners} emulated miners, `curtaild run` from exec:")
    table(("start", "first command s", "daemon CPU s by then"), rows)


if __name__ == "__main__":
    main()
