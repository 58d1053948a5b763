"""What the firmware-password check costs (drivers/credentials.probe), per family.

    python bench/credential_check.py              # 400 miners
    python bench/credential_check.py --count 1000

Starts ``curtaild emulate --count N`` (the default family mix) on 127.157.10.1 upwards, lets
``MinerDriver`` discover the fleet, then checks every miner's credentials three times, all
miners of a family at once, and prints the controller CPU per check. The check runs after each
discovery, before every command and at each poll while a miner refuses: never on a healthy
miner's regular poll, so steady sweeps do not pay it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import raise_nofile

from curtaild.controller.config import FleetConfig
from curtaild.drivers import credentials as creds
from curtaild.drivers.miners import MinerDriver
from tests.support.driving import site_credentials
from tests.support.emulator import EmulatorProcess

FIRST = "127.157.10.1"


def last_address(n: int) -> str:
    """The n-th address from FIRST, skipping .0 and .255 as the emulator does."""
    return f"127.157.{10 + (n - 1) // 254}.{(n - 1) % 254 + 1}"


async def measure(n: int, rounds: int) -> None:
    # the demo's Whatsminer password, as every --count Whatsminer has it (write API on)
    d = MinerDriver(FleetConfig(ranges=[f"{FIRST}-{last_address(n)}"],
                                credentials=site_credentials()), poll_interval_s=30)
    c0 = time.process_time()
    snap = await d.observe()
    print(f"discovery of {n} miners (checks included): {time.process_time() - c0:.2f} s CPU, "
          f"{sum(m.state != 'unreachable' for m in snap.miners)} answered")
    by: dict[str, list] = collections.defaultdict(list)
    for t in d._tracked.values():
        if t.miner is not None and creds.has_probe(t.miner, t.family):
            v3 = t.family == "whatsminer" and hasattr(t.miner.rpc, "get_salt")
            by[t.family + (" API v3" if v3 else "")].append(t)
    for kind, tracked in sorted(by.items()):
        c0 = time.process_time()
        verdicts: collections.Counter = collections.Counter()
        for _ in range(rounds):
            results = await asyncio.gather(*(creds.probe(t.miner, t.family, 10.0)
                                             for t in tracked))
            verdicts.update(v for v, _ in results)
        per = (time.process_time() - c0) / (rounds * len(tracked)) * 1000
        print(f"{kind:<18} {len(tracked):>5} miners  {per:6.2f} ms CPU per check  "
              f"{dict(verdicts)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    raise_nofile()
    with EmulatorProcess(count=args.count, first_ip=FIRST, time_scale=0.01):
        asyncio.run(measure(args.count, args.rounds))


if __name__ == "__main__":
    main()
