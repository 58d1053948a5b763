"""RSS, CPU and tick time of a real ``curtaild run`` with hostile devices in the fleet.

    python bench/hostile.py                         # 200 miners, 60 s of hostile polls
    python bench/hostile.py --count 1000 --seconds 120

Issue 15 (High-2): an address streaming an endless reply grew the daemon to 3 GB in 60 s.
This starts ``curtaild emulate --count N`` and the daemon (the shipped entry point, its own
process) with every emulated address in its fleet. One address per hostile fault kind
(endless, huge 50 MB, nested, accept_close, drip) is hostile from the start (discovery and
background re-discovery meet it); after the first tick and ``--clean-ticks`` clean ones, one
more discovered machine per kind turns hostile and stays in the poll path
(``rediscover_after_failures = 1000``: the worst case, every sweep polls it). The daemon's RSS
is sampled every second; at the end: peak RSS (VmHWM), CPU, tick durations clean and hostile,
and the time from SIGTERM (sent mid-sweep) to exit. Targets: peak RSS under 400 MB at 200
miners, the loop keeps ticking, SIGTERM exits within the unit's TimeoutStopSec (90 s).

Uses 127.151.20.1 upwards.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, Emulator, cpu_s, hwm_mb, print_machine, raise_nofile, rss_mb, table

TICK = re.compile(r"tick (\d+(?:\.\d+)?)s: (.*)")
KINDS = ("endless", "huge", "nested", "accept_close", "drip")
PARAMS = {"drip": {"delay_s": 0.05}}
RSS_TARGET_MB = 400.0


def config_text(ips: list[str], state_dir: Path, poll_interval_s: float,
                poll_timeout_s: float) -> str:
    hosts = ", ".join(f'"{ip}"' for ip in ips)
    return f"""[fleet]
hosts = [{hosts}]
poll_timeout_s = {poll_timeout_s}
discovery_timeout_s = 8.0
rediscover_after_failures = 1000

[hashprice]
source = "fixed"
usd_per_th_day = 0.09

[tariff]
kind = "flat"
usd_per_kwh = 0.05

[policy]
name = "margin"
pool_fee = 0.02

[controller]
state_dir = "{state_dir}"
poll_interval_s = {poll_interval_s}
"""


def set_fault(emu: Emulator, ip: str, kind: str) -> None:
    req = urllib.request.Request(f"http://{emu.control}/miners/{ip}/fault",
                                 data=json.dumps({"kind": kind, **PARAMS.get(kind, {})}).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()


def ticks_in(log: Path) -> list[float]:
    return [float(m.group(1)) for m in TICK.finditer(log.read_text("utf-8", "replace"))]


def stop_timeout_s() -> float:
    unit = (REPO / "deploy/systemd/curtaild.service").read_text()
    m = re.search(r"^TimeoutStopSec=(\d+)s?$", unit, re.M)
    return float(m.group(1)) if m else 90.0


def wait_ticks(daemon: subprocess.Popen, log: Path, n: int, timeout_s: float) -> None:
    t0 = time.monotonic()
    while len(ticks_in(log)) < n:
        if daemon.poll() is not None or time.monotonic() - t0 > timeout_s:
            sys.stdout.write(log.read_text("utf-8", "replace")[-3000:])
            raise SystemExit(f"daemon exited ({daemon.returncode}) or timed out before "
                             f"{n} ticks")
        time.sleep(0.2)


def summary(durations: list[float]) -> str:
    if not durations:
        return "-"
    return (f"{len(durations)} ticks, median {statistics.median(durations):.2f} s, "
            f"max {max(durations):.2f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60.0, help="hostile phase length")
    ap.add_argument("--clean-ticks", type=int, default=2)
    ap.add_argument("--poll-interval", type=float, default=5.0,
                    help="controller.poll_interval_s (default 5)")
    ap.add_argument("--poll-timeout", type=float, default=5.0,
                    help="fleet.poll_timeout_s: the drip miner's poll lasts this long")
    ap.add_argument("--first-ip", default="127.151.20.1")
    args = ap.parse_args()
    if args.count < 2 * len(KINDS) + 1:
        raise SystemExit(f"--count: at least {2 * len(KINDS) + 1} miners")
    raise_nofile()
    print_machine()
    with Emulator(args.count, args.first_ip) as emu, \
            tempfile.TemporaryDirectory(prefix="curtaild-bench-") as tmp:
        ips = emu.ips()
        from_start, later = ips[-len(KINDS):], ips[:len(KINDS)]
        for ip, kind in zip(from_start, KINDS, strict=True):
            set_fault(emu, ip, kind)
        cfg = Path(tmp) / "config.toml"
        cfg.write_text(config_text(ips, Path(tmp) / "state", args.poll_interval,
                                   args.poll_timeout))
        log = Path(tmp) / "daemon.log"
        print(f"\n== curtaild run, {args.count} miners at {args.first_ip}+: hostile from the "
              f"start {', '.join(f'{k} {ip}' for k, ip in zip(KINDS, from_start, strict=True))}")
        with open(log, "wb") as out:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "curtaild.controller.cli", "--config", str(cfg), "run"],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        code, stop_s = None, float("nan")
        try:
            wait_ticks(daemon, log, 1 + args.clean_ticks, 600)
            clean = ticks_in(log)
            rss_clean, cpu_clean = rss_mb(daemon.pid), cpu_s(daemon.pid)
            for ip, kind in zip(later, KINDS, strict=True):
                set_fault(emu, ip, kind)
            print(f"== then hostile after discovery: "
                  f"{', '.join(f'{k} {ip}' for k, ip in zip(KINDS, later, strict=True))}")
            t0 = time.monotonic()
            samples = []
            while time.monotonic() - t0 < args.seconds and daemon.poll() is None:
                samples.append(rss_mb(daemon.pid))
                time.sleep(1.0)
            alive = daemon.poll() is None
            hostile = ticks_in(log)[len(clean):]
            hwm, cpu = hwm_mb(daemon.pid), cpu_s(daemon.pid) - cpu_clean
            started = time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            try:
                code = daemon.wait(stop_timeout_s() + 60)
            except subprocess.TimeoutExpired:
                pass
            stop_s = time.monotonic() - started
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(10)
        text = log.read_text("utf-8", "replace")
    print()
    table(["figure", "value"], [
        ["first tick (discovery, 5 hostile)", f"{clean[0]:.2f} s"],
        ["clean ticks", summary(clean[1:])],
        [f"hostile ticks ({args.seconds:.0f} s)", summary(hostile)],
        ["RSS before the hostile phase", f"{rss_clean:.0f} MB"],
        ["RSS during it, median / max", f"{statistics.median(samples):.0f} / "
                                        f"{max(samples):.0f} MB" if samples else "-"],
        ["peak RSS (VmHWM)", f"{hwm:.0f} MB"],
        ["daemon CPU in the hostile phase", f"{cpu:.1f} s ({cpu / args.seconds:.0%} of a core)"],
        ["daemon alive at the end", "yes" if alive else "NO"],
        ["SIGTERM to exit", f"{stop_s:.2f} s" if code is not None else
                            f"did not exit in {stop_s:.0f} s (killed)"],
        ["exit code", str(code)],
        ["sweep abandoned on SIGTERM", "yes" if "sweep in progress was abandoned" in text
                                       else "no"],
    ])
    ok_rss, ok_stop = hwm < RSS_TARGET_MB, code is not None and stop_s < stop_timeout_s()
    print(f"\nRSS target < {RSS_TARGET_MB:.0f} MB: {'met' if ok_rss else 'MISSED'}; "
          f"ticking under attack: {'met' if alive and hostile else 'MISSED'}; SIGTERM within "
          f"TimeoutStopSec ({stop_timeout_s():.0f} s): {'met' if ok_stop else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
