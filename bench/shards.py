"""One shard vs two shards on one box (issue 19): polls per second of the whole site.

    python bench/shards.py                       # 20,000 miners, ~10 min on 2 cores
    python bench/shards.py --miners 4000 --window 60

One emulated fleet (common.EmulatorFleet: ``--miners`` in processes of 5,000, every model in
turn), a real single-member etcd, and real ``curtaild run`` instances with ``[cluster]``, in
turn on the same emulator processes:

* one shard: one instance over the whole fleet (``shard = "all"``);
* two shards: two instances at once, each over half the fleet (``shard = "s1"``/``"s2"``).

Every instance starts with ``identities.json`` (common.seed_identities) so no discovery is
timed, every machine earns (0.09 USD/TH/day, 0.03 USD/kWh: nothing to command), and the poll
interval (1 s, the least allowed) is shorter than a sweep, so each instance sweeps back to
back. After ``--warmup`` ticks of every instance (the first builds the miner objects and reads
MACs), ticks are counted for ``--window`` seconds: an instance's rate is the miners it read
(not unreachable) over its ticks ending in the window, divided by the time those ticks took
(end of the last minus end of the one before the first); the site's rate is the sum over
instances. Also reported: each instance's CPU per poll, the emulators' CPU, the load average.
Uses 127.197.0.1 upwards for the miners and 127.197.255.1 for etcd (root: ports 80, 4028).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (
    EmulatorFleet,
    FdWatch,
    cpu_s,
    print_machine,
    raise_nofile,
    seed_identities,
    table,
    ticks,
    wait,
)

from tests.support.daemon import write_config
from tests.support.etcd import EtcdCluster

REPO = Path(__file__).resolve().parents[1]
FIRST = "127.197.0.1"
ETCD = "127.197.255.1"


class Instance:
    def __init__(self, tmp: Path, name: str, shard: str, ranges: list[str], etcd: EtcdCluster,
                 poll_s: float, poll_concurrency: int):
        self.name, self.shard = name, shard
        tmp.mkdir(parents=True, exist_ok=True)
        self.state = tmp / name
        self.log = tmp / f"{name}.log"
        extra = (f'[cluster]\nendpoints = ["{etcd.endpoints[0]}"]\nsite_id = "bench"\n'
                 f'instance_id = "{name}"\nlease_ttl_s = 10\nshard = "{shard}"\n')
        self.config = write_config(
            tmp / f"{name}.toml", ranges=ranges, hashprice=0.09, tariff=0.03,
            state_dir=self.state, poll_interval_s=poll_s, extra=extra)
        text = self.config.read_text().replace(
            "[fleet]\n", f"[fleet]\npoll_concurrency = {poll_concurrency}\n")
        self.config.write_text(text)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "curtaild.controller.cli", "--config", str(self.config),
                 "run"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def measure(insts: list[Instance], emu: EmulatorFleet, warmup: int, window_s: float,
            timeout_s: float) -> dict:
    """Start ``insts`` together; after ``warmup`` ticks each, count ``window_s`` seconds."""
    for i in insts:
        i.start()
    try:
        wait("the warm-up ticks", lambda: all(len(ticks(i.log)) >= warmup for i in insts),
             timeout_s, 1.0)
        t0 = time.time()
        cpu0 = {i.name: cpu_s(i.proc.pid) for i in insts}  # type: ignore[union-attr]
        emu0, load0 = emu.cpu_s(), os.getloadavg()[0]
        time.sleep(window_s)
        t1 = time.time()
        cpu1 = {i.name: cpu_s(i.proc.pid) for i in insts}  # type: ignore[union-attr]
        emu1, load1 = emu.cpu_s(), os.getloadavg()[0]
        wait("one more tick of each", lambda: all(ticks(i.log)[-1][0] > t1 for i in insts),
             timeout_s, 1.0)
        errors = [line for i in insts for line in i.log.read_text(errors="replace")
                  .splitlines() if " ERROR " in line]
    finally:
        for i in insts:
            i.stop()
    rows, total = [], 0.0
    for i in insts:
        all_ticks = ticks(i.log)
        k = [n for n, (end, _d, _r) in enumerate(all_ticks) if t0 <= end <= t1]
        if not k:
            raise RuntimeError(f"{i.name}: no tick ended in the window; raise --window")
        before = k[0] - 1  # the tick ending just before the first one counted
        span = all_ticks[k[-1]][0] - all_ticks[before][0]
        read = sum(all_ticks[n][2] for n in k)
        rate = read / span
        total += rate
        cpu = cpu1[i.name] - cpu0[i.name]
        rows.append([i.name, i.shard, len(k), f"{sum(all_ticks[n][1] for n in k) / len(k):.1f}",
                     read, f"{rate:.0f}", f"{cpu / (t1 - t0):.2f}",
                     f"{1000 * cpu / max(1, rate * (t1 - t0)):.2f}"])
    return {"rows": rows, "site_rate": total, "emu_cores": (emu1 - emu0) / (t1 - t0),
            "load": (load0, load1), "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--miners", type=int, default=20000)
    ap.add_argument("--per-emulator", type=int, default=5000)
    ap.add_argument("--poll", type=float, default=1.0, help="poll_interval_s (below a sweep)")
    ap.add_argument("--poll-concurrency", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=2, help="ticks of each instance first")
    ap.add_argument("--window", type=float, default=150.0, help="seconds counted")
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args()
    raise_nofile()
    print_machine()
    load = os.getloadavg()
    print(f"load before   {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="curtaild-shards-") as tmp_name, \
            EtcdCluster([ETCD]) as etcd, \
            EmulatorFleet(args.miners, FIRST, args.per_emulator) as emu, FdWatch(emu) as fds:
        tmp = Path(tmp_name)
        ips = emu.ips()
        mid = len(ips) // 2
        layouts = {  # the emulators number on consecutively: one range per half
            "one shard": [("all", "all", emu.ranges())],
            "two shards": [("s1", "s1", [f"{ips[0]}-{ips[mid - 1]}"]),
                           ("s2", "s2", [f"{ips[mid]}-{ips[-1]}"])],
        }
        for layout, members in layouts.items():
            insts = [Instance(tmp / layout.replace(" ", "-"), name, shard, r, etcd, args.poll,
                              args.poll_concurrency)
                     for name, shard, r in members]
            t0 = time.time()
            seed_identities(emu.parts, [i.state for i in insts])
            print(f"{layout}: identities seeded in {time.time() - t0:.1f} s", flush=True)
            results[layout] = measure(insts, emu, args.warmup, args.window, args.timeout)
            r = results[layout]
            print(f"{layout}: {r['site_rate']:.0f} polls/s of the site", flush=True)
    for layout, r in results.items():
        print(f"\n{layout}, {args.miners} emulated miners in {len(emu.parts)} emulator "
              f"processes; {args.window:g} s window; emulators used {r['emu_cores']:.2f} "
              f"cores; load {r['load'][0]:.2f} -> {r['load'][1]:.2f}:")
        table(["instance", "shard", "ticks", "mean tick s", "miners read", "polls/s",
               "cores used", "CPU ms/poll"], r["rows"])
        for line in r["errors"][:5]:
            print("  ERROR in a log:", line[:200])
    one, two = results["one shard"]["site_rate"], results["two shards"]["site_rate"]
    print(f"\nsite polls/s: one shard {one:.0f}, two shards {two:.0f} ({two / one:.2f}x); "
          f"peak descriptors in one emulator process {fds.peak}")


if __name__ == "__main__":
    main()
