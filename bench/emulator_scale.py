"""How the emulator scales: startup time, memory, and CPU while pyasic polls the fleet.

    python bench/emulator_scale.py                       # 2,000 and 10,000 miners
    python bench/emulator_scale.py --counts 2000 --poll 2000 --concurrency 200

For each fleet size it starts ``curtaild emulate --count N`` as a separate process (every model
in turn, so every family), and reports:

* startup: seconds from exec to the ``control:`` line (every listener bound);
* RSS after startup, and after polling;
* optionally a poll with unmodified pyasic: ``get_miner`` then ``get_data`` for the first
  ``--poll`` miners with ``--concurrency`` in flight, the wall time, and the CPU seconds the
  emulator and the pyasic client each used. An emulator CPU share well below the client's
  means the emulator is not what limits polling.

Runs as root (ports 80/4028 on 127.x.y.z). Uses 127.40.0.0/16 and up by default.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import addresses

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def start(count: int, first_ip: str) -> tuple[subprocess.Popen, float, str]:
    control = f"127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "curtaild.controller.cli", "emulate", "--count", str(count),
           "--first-ip", first_ip, "--control", control, "--time-scale", "1"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("control: "):
            return proc, time.monotonic() - t0, control
    raise RuntimeError(f"emulator did not start: {proc.stderr.read() if proc.stderr else ''}")


async def poll(ips: list[str], concurrency: int) -> tuple[int, int, float, float]:
    """get_miner + get_data for every ip; (detected, with hashrate, detect s, data s)."""
    import pyasic

    sem = asyncio.Semaphore(concurrency)

    async def detect(ip: str):
        async with sem:
            try:
                return await pyasic.get_miner(ip)
            except Exception:
                return None

    async def data(miner):
        async with sem:
            try:
                return await miner.get_data()
            except Exception:
                return None

    t0 = time.monotonic()
    miners = [m for m in await asyncio.gather(*(detect(ip) for ip in ips)) if m is not None]
    t1 = time.monotonic()
    results = await asyncio.gather(*(data(m) for m in miners))
    t2 = time.monotonic()
    with_hr = sum(1 for d in results if d is not None and d.hashrate is not None)
    return len(miners), with_hr, t1 - t0, t2 - t1


def run(count: int, first_ip: str, poll_n: int, concurrency: int) -> None:
    proc, startup, _ = start(count, first_ip)
    try:
        time.sleep(0.5)
        print(f"\n== {count} miners at {first_ip}+ ==")
        print(f"startup (exec -> every listener bound): {startup:6.2f} s")
        print(f"RSS after startup:                      {rss_mb(proc.pid):6.1f} MB")
        if poll_n:
            ips = addresses(first_ip, min(poll_n, count))
            e0, c0 = cpu_s(proc.pid), time.process_time()
            found, with_hr, t_detect, t_data = asyncio.run(poll(ips, concurrency))
            e1, c1 = cpu_s(proc.pid), time.process_time()
            wall = t_detect + t_data
            print(f"pyasic poll of {len(ips)} (concurrency {concurrency}): detected {found}, "
                  f"get_data with hashrate {with_hr}")
            print(f"  wall: get_miner {t_detect:6.1f} s, get_data {t_data:6.1f} s")
            print(f"  CPU:  emulator {e1 - e0:6.1f} s ({(e1 - e0) / wall:4.0%} of one core), "
                  f"pyasic client {c1 - c0:6.1f} s")
            print(f"RSS after polling:                      {rss_mb(proc.pid):6.1f} MB")
    finally:
        proc.terminate()
        code = proc.wait(60)
        print(f"exit code after SIGTERM: {code}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="2000,10000")
    parser.add_argument("--first-ip", default="127.40.0.1")
    parser.add_argument("--poll", type=int, default=2000,
                        help="poll this many miners with pyasic (0: skip); default 2000")
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    octet = int(args.first_ip.split(".")[1])
    for i, count in enumerate(int(c) for c in args.counts.split(",")):
        first = f"127.{octet + i}.{'.'.join(args.first_ip.split('.')[2:])}"
        run(count, first, args.poll, args.concurrency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
