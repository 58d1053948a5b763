"""Client CPU per poll of a stock Antminer, by firmware generation.

    python bench/antminer_poll.py                 # 200 miners per generation, 5 sweeps
    python bench/antminer_poll.py --miners 500 --sweeps 3

Dec-2022 stock firmware refuses joined RPC commands (``summary+stats``: "Invalid command"),
2025 firmware answers them. The driver polls a stock Antminer with one joined request; on
firmware that refuses it, pyasic's own fallback (``multicommand``) sends the joined request a
second time and then the two commands one by one, on every poll. The driver remembers the
refusal per machine and asks one by one from then on. Measured here, in this process
(``time.process_time()``), per successful reading, after discovery:

* ``2025-10``: joined, one connection per poll;
* ``2022-12``: one by one, remembered (two connections per poll);
* ``2022-12 no memory``: the refused joined request again on every poll, then one by one
  (three connections per poll; before the memory, pyasic's fallback sent the joined request
  twice: four).

Uses 127.158.20.1 upwards (loopback); the emulator runs in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import print_machine, raise_nofile, table

from curtaild.controller.config import FleetConfig
from curtaild.drivers.miners import MinerDriver
from tests.support.emulator import EmulatorProcess

FIRST = "127.158.20.1"


def fleet(n: int) -> str:
    return (f'[[miner]]\nmodel = "S19j Pro"\nfirmware_version = "2025-10"\ncount = {n}\n'
            f'[[miner]]\nmodel = "S19j Pro"\nfirmware_version = "2022-12"\ncount = {n}\n')


async def measure(ips: list[str], sweeps: int, forget: bool) -> tuple[float, int]:
    """CPU ms per successful reading over ``sweeps`` sweeps, after a discovery sweep."""
    d = MinerDriver(FleetConfig(hosts=ips, poll_timeout_s=10.0, discovery_timeout_s=15.0),
                    poll_interval_s=30.0)
    await d.observe()  # discovery (and the first refusal, remembered)
    ok = 0
    cpu = 0.0
    for _ in range(sweeps):
        if forget:
            for t in d._tracked.values():
                if t.miner is not None:
                    t.miner.__dict__.pop("_curtaild_split_rpc", None)
        start = time.process_time()
        snap = await d.observe()
        cpu += time.process_time() - start
        ok += sum(1 for r in snap.miners if r.error is None)
    return 1000.0 * cpu / max(ok, 1), ok


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--miners", type=int, default=200, help="miners per generation")
    ap.add_argument("--sweeps", type=int, default=5)
    args = ap.parse_args()
    raise_nofile()
    print_machine()
    with EmulatorProcess(fleet_toml=fleet(args.miners), first_ip=FIRST, time_scale=1.0) as emu:
        by_gen: dict[str, list[str]] = {}
        for m in emu.miners():
            by_gen.setdefault(m["firmware_generation"], []).append(m["ip"])
        rows = []
        for label, gen, forget in (("2025-10 (joined)", "2025-10", False),
                                   ("2022-12 (one by one, remembered)", "2022-12", False),
                                   ("2022-12 refused joined first, each poll", "2022-12", True)):
            ms, ok = await measure(by_gen[gen], args.sweeps, forget)
            rows.append((label, len(by_gen[gen]), ok, f"{ms:.2f}"))
    table(("generation / way", "miners", "readings", "client CPU ms/reading"), rows)


if __name__ == "__main__":
    asyncio.run(main())
