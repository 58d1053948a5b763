"""What knowing where each command stands costs a tick (issue 14), at fleet scale.

    python bench/command_states.py                 # 10,000 miners, half with a command out
    python bench/command_states.py --count 2000 --outstanding 0.9

Every tick the loop reads the journal's expectations and sets ``command_state`` on each
reading before deciding (``Reconciler._with_command_states``), and once more after sending
when it sent anything; a verified command is written once (``mark_verified``). This times the
annotation on an on-disk journal (WAL, synchronous=FULL, as the daemon runs it) with
``outstanding`` x ``count`` expectations in every journal state, and the power cap deciding on
the annotated fleet, so the figure can be set against a tick's sweep (docs/benchmarks.md).
No miner, no network: readings are made up on 127.161.0.0/16.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curtaild.controller.journal import Journal
from curtaild.controller.loop import command_states
from curtaild.core.snapshot import Command, Directives, FleetSnapshot, MinerReading
from curtaild.policies.layer import everything_runs
from curtaild.policies.power_cap import PowerCapConfig, PowerCapPolicy


def reading(i: int) -> MinerReading:
    ip = f"127.161.{i // 250}.{i % 250 + 1}"
    return MinerReading(key=f"02:00:00:00:{i // 256:02X}:{i % 256:02X}", ip=ip,
                        make="AntMiner", model="S19j Pro", firmware="antminer",
                        state="mining", hashrate_ths=104.0, power_w=3068.0,
                        power_source="nameplate", power_limit_w=None, temp_c=70.0,
                        nameplate_hashrate_ths=104.0, nameplate_power_w=3068.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--outstanding", type=float, default=0.5,
                    help="share of the fleet with a command outstanding")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()

    miners = [reading(i) for i in range(args.count)]
    n = int(args.count * args.outstanding)
    with tempfile.TemporaryDirectory(prefix="curtaild-bench-") as tmp:
        j = Journal(Path(tmp))
        t0 = time.perf_counter()
        for i, m in enumerate(miners[:n]):
            c = Command(key=m.key, ip=m.ip, action="sleep", power_limit_w=None, reason="bench",
                        delta_power_w=-3028.0)
            j.record_intent(c, observed_limit_w=None, dry_run=False, now=1000.0)
            if i % 4:
                j.record_outcome(c, "ok" if i % 4 != 3 else "failed", now=1001.0)
            if i % 4 == 2:
                j.mark_verified(m.key, m.ip, "sleep", now=1002.0)
        setup_s = time.perf_counter() - t0
        fleet = FleetSnapshot(tuple(miners), 1000.0)
        read, annotate = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            expectations = j.expectations()
            t1 = time.perf_counter()
            states = command_states(fleet, expectations, {})
            annotated = FleetSnapshot(tuple(
                replace(m, command_state=states[m.key], commanded_action="sleep")
                if m.key in states else m for m in fleet.miners), fleet.taken_at)
            t2 = time.perf_counter()
            read.append(t1 - t0)
            annotate.append(t2 - t1)
        cap = PowerCapPolicy(PowerCapConfig(cap_w=0.6 * 3068.0 * args.count))
        t0 = time.perf_counter()
        out = cap.apply(everything_runs(annotated), annotated, None, Directives(), 1000.0)
        cap_s = time.perf_counter() - t0
        j.close()
    shed = sum(1 for d in out.values() if d.action == "sleep")
    print(f"{args.count} miners, {n} with a command outstanding "
          f"({', '.join(f'{k} {v}' for k, v in sorted(_count(states).items()))})")
    print(f"journal setup (intents, outcomes, confirmations): {setup_s:.2f} s")
    print(f"expectations read     median {1000 * statistics.median(read):7.2f} ms")
    print(f"states + annotation   median {1000 * statistics.median(annotate):7.2f} ms")
    print(f"power cap on it       {1000 * cap_s:7.2f} ms ({shed} sheds to 60 % of full power)")


def _count(states: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in states.values():
        out[s] = out.get(s, 0) + 1
    return out


if __name__ == "__main__":
    main()
