"""RSS of a real ``curtaild run`` at 10,000 miners, and its /metrics scrape time and size.

    python bench/memory.py                        # 10,000 miners, 3 ticks
    python bench/memory.py --count 2000 --ticks 2

Starts ``curtaild emulate --count N`` and then the daemon itself (``python -m controller.cli
--config ... run``, the shipped entry point, in its own process) with a config listing every
emulated address, the shipped prices (so the margin policy sleeps the loss-making models, 50
commands per tick at most) and the Prometheus exporter on. After ``--ticks`` full reconcile
ticks (observe, decide, guard, act, journal, publish) it reports the daemon's RSS and peak RSS
(VmHWM) from /proc, the tick durations from its log, and scrapes /metrics over HTTP the way
Prometheus does (gzip), cold (first scrape after a tick) and cached. Target: RSS under 300 MB.

Uses 127.120.0.1 upwards.
"""

from __future__ import annotations

import argparse
import gzip
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO,
    Emulator,
    cpu_s,
    free_port,
    hwm_mb,
    print_machine,
    raise_nofile,
    rss_mb,
    table,
)
from metrics_scrape import scrape

TICK = re.compile(r"tick (\d+(?:\.\d+)?)s: (.*)")


def config_text(ips: list[str], state_dir: Path, metrics: str, poll_interval_s: float) -> str:
    hosts = ", ".join(f'"{ip}"' for ip in ips)
    return f"""[fleet]
hosts = [{hosts}]

[hashprice]
source = "fixed"
usd_per_th_day = 0.045

[tariff]
kind = "flat"
usd_per_kwh = 0.07

[policy]
name = "margin"
pool_fee = 0.02

[controller]
state_dir = "{state_dir}"
poll_interval_s = {poll_interval_s}

[metrics]
listen = "{metrics}"
"""


def ticks_in(log: Path) -> list[tuple[float, str]]:
    return [(float(m.group(1)), m.group(2)) for m in TICK.finditer(log.read_text("utf-8",
                                                                                "replace"))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--ticks", type=int, default=3, help="full ticks before measuring")
    ap.add_argument("--poll-interval", type=float, default=30.0,
                    help="controller.poll_interval_s (default 30, the default)")
    ap.add_argument("--scrapes", type=int, default=10)
    ap.add_argument("--first-ip", default="127.120.0.1")
    ap.add_argument("--timeout", type=float, default=1800.0,
                    help="give up waiting for the ticks after this many seconds")
    args = ap.parse_args()
    raise_nofile()
    print_machine()
    with Emulator(args.count, args.first_ip) as emu, \
            tempfile.TemporaryDirectory(prefix="curtaild-bench-") as tmp:
        metrics = f"127.0.0.1:{free_port()}"
        cfg = Path(tmp) / "config.toml"
        cfg.write_text(config_text(emu.ips(), Path(tmp) / "state", metrics, args.poll_interval))
        log = Path(tmp) / "daemon.log"
        print(f"\n== curtaild run with {args.count} miners at {args.first_ip}+ ==")
        with open(log, "wb") as out:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "curtaild.controller.cli", "--config", str(cfg), "run"],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        try:
            rss_first = 0.0
            t0 = time.monotonic()
            while len(ticks_in(log)) < args.ticks:
                if daemon.poll() is not None or time.monotonic() - t0 > args.timeout:
                    sys.stdout.write(log.read_text("utf-8", "replace")[-3000:])
                    raise SystemExit(f"daemon exited ({daemon.returncode}) or timed out "
                                     f"before {args.ticks} ticks")
                if not rss_first and ticks_in(log):
                    rss_first = rss_mb(daemon.pid)
                time.sleep(0.5)
            rss, hwm, cpu = rss_mb(daemon.pid), hwm_mb(daemon.pid), cpu_s(daemon.pid)
            ticks = ticks_in(log)
            url = f"http://{metrics}/metrics"
            cold_s, gz_body = scrape(url)
            warm = [scrape(url)[0] for _ in range(args.scrapes)]
            _, plain = scrape(url, gzip_ok=False)
            rss_after, hwm_after = rss_mb(daemon.pid), hwm_mb(daemon.pid)
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                code = daemon.wait(120)
            except subprocess.TimeoutExpired:
                daemon.kill()
                code = daemon.wait(10)
    text = gzip.decompress(gz_body) if gz_body[:2] == b"\x1f\x8b" else gz_body
    samples = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    table(["tick", "duration s", "summary"],
          [[i + 1, f"{d:.2f}", s[:90]] for i, (d, s) in enumerate(ticks)])
    print()
    table(["figure", "value"], [
        ["RSS after the first tick", f"{rss_first:.0f} MB"],
        [f"RSS after {len(ticks)} ticks", f"{rss:.0f} MB"],
        ["peak RSS (VmHWM)", f"{hwm:.0f} MB"],
        ["RSS after the scrapes", f"{rss_after:.0f} MB"],
        ["peak RSS after the scrapes", f"{hwm_after:.0f} MB"],
        ["daemon CPU so far", f"{cpu:.1f} s"],
        ["/metrics samples", f"{samples:,}"],
        ["/metrics size, text", f"{len(plain) / 1e6:.2f} MB"],
        ["/metrics size, gzip", f"{len(gz_body) / 1e6:.2f} MB"],
        ["scrape after a tick (cold)", f"{cold_s:.3f} s"],
        [f"scrape cached (median of {len(warm)})", f"{statistics.median(warm):.3f} s"],
        ["daemon exit code on SIGTERM", str(code)],
    ])
    target = 300.0
    print(f"\nRSS target < {target:.0f} MB at {args.count} miners: "
          f"{'met' if hwm_after < target else 'MISSED'} (peak {hwm_after:.0f} MB, "
          f"{hwm:.0f} MB before the first scrape)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
