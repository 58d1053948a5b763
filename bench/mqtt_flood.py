"""A command flood over MQTT: N commands in N/rate seconds at a running curtaild.

    python bench/mqtt_flood.py                       # 10,000 commands in 10 s, 20 miners
    python bench/mqtt_flood.py --commands 30000 --rate 3000

Everything is real: ``curtaild emulate`` (its own process), the shipped mosquitto config and
ACL (password auth) on a free port, and ``curtaild run`` with the bridge on (shipped [mqtt]
limits unless overridden). An EMS client publishes the mix of tests/support/flood.py (new
events, cancels, overrides, pause/resume, heartbeats; every id unique) at a fixed rate, QoS 1.
Reported: answers by status (and how many were "busy"), unanswered commands, the daemon's
MQTT connections during the flood (1 = the session never dropped), its RSS before and peak,
what it wrote to storage (``/proc/<pid>/io`` write_bytes, of which its log file), and its
tick durations meanwhile. Uses 127.154.0.1 (broker) and 127.154.1.1 upwards (miners) unless
``--broker-ip`` / ``--first-ip`` say otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import addresses, print_machine, table

from tests.support.daemon import DaemonProcess, wait_for, write_config
from tests.support.emulator import EmulatorProcess
from tests.support.flood import commands, flood
from tests.support.mosquitto import PREFIX, Client, MosquittoProcess

BROKER_IP, FIRST_MINER_IP = "127.154.0.1", "127.154.1.1"


def run(n: int, rate: float, miners: int, mqtt_extra: dict, *, broker_ip: str = BROKER_IP,
        first_ip: str = FIRST_MINER_IP) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="curtaild-flood-"))
    state = tmp / "state"
    ips = addresses(first_ip, miners)
    with EmulatorProcess(count=miners, first_ip=first_ip, time_scale=0.01), \
            MosquittoProcess(host=broker_ip) as broker:
        cfg = write_config(tmp / "config.toml", ranges=[f"{ips[0]}-{ips[-1]}"], hashprice=0.09,
                           tariff=0.03, state_dir=state, poll_interval_s=5.0,
                           extra=broker.mqtt_toml(state, **mqtt_extra))
        with DaemonProcess(cfg, tmp / "daemon.log") as d, \
                Client(broker, user="dashboard", subscribe=f"{PREFIX}/miners/+") as watch:
            wait_for(lambda: len({t for t, _p, _r in watch.messages}) >= miners, 120,
                     what="every miner published")
            keys = sorted({json.loads(p)["id"] for _t, p, _r in watch.messages})
            cmds = commands(n, keys)
            res = flood(broker, PREFIX, cmds, rate_per_s=rate, daemon_pid=d.proc.pid,
                        daemon_log=d.log_path)
            time.sleep(1.0)
            alive = d.alive()
            journal = sum(p.stat().st_size for p in state.glob("journal.sqlite*"))
            d.stop()
    print_machine()
    print(f"\nflood: {res.sent} commands ({res.expected} to answer) published in "
          f"{res.publish_s:.1f} s; last answer at {res.last_answer_s:.1f} s")
    table(["figure", "value"], [
        ["answered", f"{res.answered} of {res.expected}"],
        ["unanswered", len(res.missing)],
        ["answers by status", ", ".join(f"{k} {v}" for k, v in sorted(res.by_status.items()))],
        ["of which busy", res.busy],
        ["answered twice", res.duplicate_answers],
        ["broker 'dropping' warnings", "; ".join(x.split(": ", 1)[-1] for x in res.broker_drops)
         or "none"],
        ["daemon MQTT connections during the flood", res.daemon_connects],
        ["daemon alive after", alive],
        ["RSS before / peak (MB)", f"{res.rss_before_mb:.0f} / {res.rss_peak_mb:.0f}"],
        ["storage writes (MB), of which log", f"{res.write_bytes / 1e6:.1f}, "
                                              f"{res.log_bytes / 1e6:.1f}"],
        ["storage writes per command (B)", f"{res.write_bytes / max(1, res.sent):.0f}"],
        ["journal files after (MB)", f"{journal / 1e6:.2f}"],
        ["ticks during the flood", res.tick_summary()],
        ["CPU during the flood (s): daemon, broker, EMS client",
         f"{res.cpu_s:.1f}, {res.broker_cpu_s:.1f}, {res.sender_cpu_s:.1f}"],
    ])
    print("\nrejections by reason:")
    for reason, k in sorted(res.reasons.items(), key=lambda x: -x[1]):
        print(f"  {k:6d}  {reason}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--commands", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=1000.0, help="commands per second")
    ap.add_argument("--miners", type=int, default=20)
    ap.add_argument("--broker-ip", default=BROKER_IP)
    ap.add_argument("--first-ip", default=FIRST_MINER_IP, help="the first miner's address")
    ap.add_argument("--mqtt", action="append", default=[], metavar="KEY=VALUE",
                    help="an [mqtt] setting for the daemon (TOML value), e.g. max_active_events=50")
    args = ap.parse_args()
    extra: dict = {}
    for kv in args.mqtt:
        k, v = kv.split("=", 1)
        extra[k] = json.loads(v) if v[:1] in "0123456789-[{tf\"" else v
    run(args.commands, args.rate, args.miners, extra, broker_ip=args.broker_ip,
        first_ip=args.first_ip)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
