"""Garbage-collector thresholds A/B: the same driver, alternating sweeps, default vs the daemon's.

    python bench/gc_ab.py                  # 10,000 miners, 4 sweeps each way
    python bench/gc_ab.py --count 2000 --pairs 3

Prints wall, controller CPU and time inside the collector for each sweep. Sweeps alternate in
one process against one emulator, so the host's noise (CPU steal on a VM) falls on both sides
alike. The daemon applies ``controller.limits.GC_THRESHOLDS`` at start; this shows why.
Uses 127.120.0.1 upwards.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Emulator, print_machine, raise_nofile, table
from sweep import fleet_config

from curtaild.controller.limits import GC_THRESHOLDS
from curtaild.drivers.miners import MinerDriver


class GcClock:
    """CPU seconds spent inside the collector, from gc.callbacks."""

    def __init__(self) -> None:
        self.total_s = 0.0
        self.collections = 0
        self._start = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, _info: dict) -> None:
        if phase == "start":
            self._start = time.process_time()
        else:
            self.total_s += time.process_time() - self._start
            self.collections += 1


async def run(ips: list[str], pairs: int) -> list[list[object]]:
    clock = GcClock()
    driver = MinerDriver(fleet_config(ips), poll_interval_s=30.0)
    await driver.observe()  # discovery, not measured
    default = gc.get_threshold()
    rows: list[list[object]] = []
    for i in range(2 * pairs):
        thresholds = default if i % 2 == 0 else GC_THRESHOLDS
        gc.set_threshold(*thresholds)
        g0, n0 = clock.total_s, clock.collections
        c0, w0 = time.process_time(), time.monotonic()
        snap = await driver.observe()
        rows.append([str(thresholds), len(snap.miners), f"{time.monotonic() - w0:.2f}",
                     f"{time.process_time() - c0:.2f}", f"{clock.total_s - g0:.2f}",
                     clock.collections - n0])
    gc.set_threshold(*default)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--pairs", type=int, default=4, help="sweeps each way")
    ap.add_argument("--first-ip", default="127.120.0.1")
    args = ap.parse_args()
    raise_nofile()
    print_machine()
    with Emulator(args.count, args.first_ip) as emu:
        rows = asyncio.run(run(emu.ips(), args.pairs))
    table(["gc thresholds", "miners", "wall s", "ctl CPU s", "gc CPU s", "collections"], rows)
    for label, sel in (("default", rows[0::2]), ("daemon", rows[1::2])):
        print(f"{label:8} mean ctl CPU {statistics.mean(float(r[3]) for r in sel):.2f} s, "
              f"gc {statistics.mean(float(r[4]) for r in sel):.2f} s per sweep")
    return 0


if __name__ == "__main__":
    sys.exit(main())
