"""Signal to command: from a demand-response event on MQTT to every required command sent.

    python bench/dr_latency.py                 # 1,000 miners, 3 events
    python bench/dr_latency.py --count 2000 --events 5

Everything is real: ``curtaild emulate`` (its own process), the shipped mosquitto config and
ACL (password auth) on a free port, and ``curtaild run`` (its own process) with the bridge on.
Every machine earns, so only the event can shed them. Once the daemon has published its first
state, an EMS client publishes ``<prefix>/cmd/curtail`` with a target of half the fleet's
power; the clock starts just before the publish. Reported per event, from the journal (an
intent row is written immediately before its command goes out) and the emulator's truth:

* first / last command: the first and the last shed intent after the publish -- the last one
  is "every required command sent" (target: under 2 s for 1,000 miners);
* all acknowledged: the last outcome row (the miners answered);
* under target: when the emulator's true fleet power first reads below the target.

Between events the event is cancelled and the fleet restored (the ramp-limited restore is not
timed). Runs as root (ports 80/4028 on 127.x.y.z); uses 127.140.0.1 upwards.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Emulator, print_machine, raise_nofile, table

from tests.support.daemon import wait_for, write_config
from tests.support.mosquitto import PREFIX, Client, MosquittoProcess

REPO = Path(__file__).resolve().parents[1]


def _rows(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(db, timeout=5)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def _true_power_w(emu: Emulator) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://{emu.control}/miners", timeout=30) as resp:
        return sum(m["power_w"] for m in json.loads(resp.read()))


def run_events(count: int, events: int, first_ip: str) -> list[list[object]]:
    rows: list[list[object]] = []
    tmp = Path(tempfile.mkdtemp(prefix="curtaild-dr-"))
    state = tmp / "state"
    with Emulator(count, first_ip) as emu, MosquittoProcess() as broker:
        ips = emu.ips()
        cfg = write_config(
            tmp / "config.toml", ranges=[f"{ips[0]}-{ips[-1]}"], hashprice=0.09, tariff=0.03,
            state_dir=state, poll_interval_s=30.0,
            guards={"min_dwell_s": 0.0, "ramp_w_per_min": 1e9, "max_commands_per_tick": 5000},
            # verify_grace_s as shipped (240 s): a Whatsminer restarts btminer for
            # every new power limit (120 s of boot), and a shorter grace would re-command it
            # while it boots
            controller={"command_concurrency": 200, "verify_grace_s": 240.0},
            extra=broker.mqtt_toml(state, publish_miners=False))
        log = open(tmp / "daemon.log", "wb")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "curtaild.controller.cli", "--config", str(cfg), "run"],
             cwd=REPO,
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            with Client(broker) as ems:
                def mining() -> bool:
                    raw = ems.last(f"{PREFIX}/state")
                    return bool(raw) and json.loads(raw).get("states", {}).get("mining") == count
                wait_for(mining, 600, what="the first tick with every miner mining")
                db = state / "journal.sqlite"
                for n in range(1, events + 1):
                    full_w = _true_power_w(emu)
                    target = round(full_w * 0.5)
                    event_id = f"bench-{n}-{time.time_ns()}"
                    t0 = time.time()
                    ems.publish(f"{PREFIX}/cmd/curtail",
                                json.dumps({"id": event_id, "target_power_w": target}))
                    seen: list[float] = []

                    def under_target(t: float = target, seen: list[float] = seen) -> float | None:
                        seen.append(_true_power_w(emu))
                        return time.time() if seen[-1] < t else None

                    try:
                        under = wait_for(under_target, 60, interval=0.02,
                                         what="true power under target")
                    except AssertionError:
                        raise SystemExit(f"true power never under {target} W in 60 s: "
                                         f"{[round(w) for w in seen[::max(1, len(seen) // 20)]]}"
                                         ) from None
                    # Every required command: wait until no new intent for 3 s.
                    last_n, stable_since = -1, time.monotonic()
                    while time.monotonic() - stable_since < 3.0:
                        got = _rows(db, "SELECT COUNT(*) FROM events WHERE kind='intent' "
                                        "AND ts >= ?", (t0,))[0][0]
                        if got != last_n:
                            last_n, stable_since = got, time.monotonic()
                        time.sleep(0.1)
                    intents = _rows(db, "SELECT MIN(ts), MAX(ts), COUNT(*) FROM events WHERE "
                                        "kind='intent' AND action IN ('sleep', 'limit') AND "
                                        "ts >= ?", (t0,))[0]
                    acked = _rows(db, "SELECT MAX(ts), SUM(result != 'ok') FROM events WHERE "
                                      "kind='outcome' AND ts >= ?", (t0,))[0]
                    rows.append([count, n, intents[2], f"{full_w / 1000:.1f}",
                                 f"{target / 1000:.1f}", f"{intents[0] - t0:.3f}",
                                 f"{intents[1] - t0:.3f}", f"{acked[0] - t0:.3f}",
                                 f"{under - t0:.3f}", int(acked[1] or 0)])
                    cancelled = datetime.now(UTC).isoformat(timespec="seconds")[:19] + "Z"
                    ems.publish(f"{PREFIX}/cmd/curtail/cancel", json.dumps({"id": event_id}))

                    def restored(after: str = cancelled) -> bool:
                        raw = ems.last(f"{PREFIX}/state")
                        s = json.loads(raw) if raw else {}
                        return (s.get("mode") == "normal" and s.get("observed_at", "") > after
                                and s.get("states", {}).get("mining") == count)
                    wait_for(restored, 900, what="the fleet restored after the event")
        finally:
            daemon.terminate()
            daemon.wait(60)
            log.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--events", type=int, default=3)
    ap.add_argument("--first-ip", default="127.140.0.1")
    args = ap.parse_args()
    raise_nofile()
    print_machine()
    rows = run_events(args.count, args.events, args.first_ip)
    print()
    table(["miners", "event", "sheds", "fleet kW", "target kW", "first cmd s", "last cmd s",
           "all acked s", "under target s", "failed"], rows)
    worst = max(float(r[6]) for r in rows)
    print(f"\nevery required command sent within {worst:.3f} s of the MQTT publish "
          f"(target < 2 s): {'met' if worst < 2.0 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
