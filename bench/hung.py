"""curtaild's sweep with 0 % and then 5 % of the fleet hung (accepts, never answers).

    python bench/hung.py                          # 10,000 miners, 5 % hung, 10 s deadline
    python bench/hung.py --count 1000 --hung-pct 5 --poll-timeout 5

Target: a sweep with hung miners takes at most one per-miner deadline
(``fleet.poll_timeout_s``) longer than without. A hung miner holds its concurrency slot for at
most that deadline; after ``rediscover_after_failures`` failed sweeps its miner object is
dropped and re-discovered in the background, so the later sweeps (``--hung-sweeps``, default one
more than that threshold) show that re-discovery does not stall a sweep either.

Starts ``curtaild emulate`` in its own process and sets the emulator's ``hang`` fault on every
``100 / pct``-th miner through its control API. Uses 127.110.0.1 upwards.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Emulator, print_machine, raise_nofile, table
from sweep import HEADER, Phase, fleet_config, measure

from curtaild.controller.limits import tune_gc
from curtaild.drivers.miners import MinerDriver


async def phases(emu: Emulator, hung: list[str], clean_sweeps: int, hung_sweeps: int,
                 poll_timeout_s: float) -> tuple[list[Phase], list[Phase], MinerDriver]:
    ips = emu.ips()
    cfg = fleet_config(ips, poll_timeout_s=poll_timeout_s)
    driver = MinerDriver(cfg, poll_interval_s=30.0)

    async def observe():
        snap = await driver.observe()
        return snap, sum(1 for r in snap.miners if r.state != "unreachable")

    clean = [(await measure("discovery+sweep, 0 % hung", emu.pid, len(ips), observe))[0]]
    for i in range(clean_sweeps):
        clean.append((await measure(f"sweep {i + 1}, 0 % hung", emu.pid, len(ips),
                                    observe))[0])
    await asyncio.to_thread(emu.set_faults, hung, "hang")
    with_hung = []
    for i in range(hung_sweeps):
        with_hung.append((await measure(f"sweep {i + 1}, {len(hung)} hung", emu.pid, len(ips),
                                        observe))[0])
    await asyncio.to_thread(emu.set_faults, hung, "none")
    return clean, with_hung, driver


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--hung-pct", type=float, default=5.0, help="percent of the fleet hung")
    ap.add_argument("--poll-timeout", type=float, default=10.0,
                    help="fleet.poll_timeout_s, the per-miner deadline (default 10, the default)")
    ap.add_argument("--clean-sweeps", type=int, default=2)
    ap.add_argument("--hung-sweeps", type=int, default=None,
                    help="sweeps with hung miners (default rediscover_after_failures + 1)")
    ap.add_argument("--first-ip", default="127.110.0.1")
    args = ap.parse_args()
    raise_nofile()
    print_machine()
    hung_sweeps = args.hung_sweeps or fleet_config([]).rediscover_after_failures + 1
    with Emulator(args.count, args.first_ip) as emu:
        ips = emu.ips()
        step = max(1, round(100.0 / args.hung_pct)) if args.hung_pct > 0 else 0
        hung = ips[step - 1::step] if step else []
        print(f"\n== {args.count} miners at {args.first_ip}+, {len(hung)} hung "
              f"({len(hung) / len(ips):.1%}), per-miner deadline {args.poll_timeout:g} s ==")
        tune_gc()  # as `curtaild run` does
        clean, with_hung, driver = asyncio.run(
            phases(emu, hung, args.clean_sweeps, hung_sweeps, args.poll_timeout))
    table(HEADER, [p.row() for p in clean + with_hung])
    base = max(p.wall_s for p in clean[1:])
    worst = max(p.wall_s for p in with_hung)
    extra = worst - base
    print(f"\nslowest clean sweep {base:.2f} s, slowest sweep with hung miners {worst:.2f} s: "
          f"+{extra:.2f} s against a budget of one deadline ({args.poll_timeout:g} s): "
          f"{'met' if extra <= args.poll_timeout else 'MISSED'}")
    print(f"poll errors counted by the driver: {dict(sorted(driver.error_counts.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
