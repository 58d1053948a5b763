"""Failover time of a hot-standby pair (issue 19): leader kill -9 -> the successor commands,
and -> the site under a demand-response target.

    python bench/failover.py                       # 1,000 miners, TTL 10 s, poll 30 s: ~7 min
    python bench/failover.py --miners 10000 --command-concurrency 1000              # ~12 min
    python bench/failover.py --miners 10000 --command-concurrency 1000 --scenarios dr

Two real ``curtaild run`` (a, b) with ``[cluster]`` and ``[mqtt]`` on one ``curtaild emulate
--count N`` fleet, a real single-member etcd and a real mosquitto (the shipped config and
ACL). Both start with ``identities.json`` as after a day of running (common.seed_identities:
one discovery per emulated kind; ``--discover`` makes each instance discover every address
instead), so the figures are the failover's, not a first discovery's. Two scenarios, in turn:

* ``wake``: a leads and sleeps the machines that lose money at 0.045 USD/TH/day; the margin
  returns (both configs reloaded with 0.09) at the moment a is killed with SIGKILL, so only b
  can wake them. From the kill: b leads (its log), b's first command acknowledged (its log),
  every machine a slept mining again (emulator truth).
* ``dr``: the killed instance is started again (now the standby) and every machine earns. A
  demand-response event (half the site's true power, over MQTT to the leader b) is published
  to *start* a few seconds later; once the leader has shared it through etcd, b is killed
  half a second before the start, with nothing shed. From the kill: a leads, a's first and
  last shed decided (their intents journaled: a leader journals a batch's intents, shares
  them through etcd, then sends), its first shed acknowledged (log), and the site's true
  power (the emulated meters, ``GET /meter`` of each emulator process, read every 0.5 s)
  under the target.

Uses 127.196.0.1 upwards for the miners and 127.196.255.1 for etcd (loopback; root for port 80
and 4028). Run it inside ``unshare --net`` (README: benchmarks).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (
    EmulatorFleet,
    FdWatch,
    log_first,
    log_times,
    print_machine,
    raise_nofile,
    seed_identities,
    table,
    wait,
)

from tests.support.daemon import write_config
from tests.support.etcd import EtcdCluster
from tests.support.mosquitto import PREFIX, Client, MosquittoProcess

REPO = Path(__file__).resolve().parents[1]
FIRST = "127.196.0.1"
ETCD = "127.196.255.1"
SITE = "bench"
#: a command's log line (written when the miner acknowledged it)
SHED_LOG = ("curtaild.loop: sleep ", "curtaild.loop: limit ")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _rows(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(db, timeout=10)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


class Pair:
    """The two instances: configs, processes, logs, state directories."""

    def __init__(self, tmp: Path, args: argparse.Namespace, etcd: EtcdCluster,
                 broker: MosquittoProcess, ranges: list[str]):
        self.tmp, self.args, self.etcd, self.broker, self.ranges = tmp, args, etcd, broker, ranges
        self.procs: dict[str, subprocess.Popen] = {}

    def state(self, name: str) -> Path:
        return self.tmp / name

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def config(self, name: str, hashprice: float) -> Path:
        a = self.args
        state = self.state(name)
        state.mkdir(exist_ok=True)
        extra = self.broker.mqtt_toml(state, publish_miners=False) + (
            f'[cluster]\nendpoints = ["{self.etcd.endpoints[0]}"]\nsite_id = "{SITE}"\n'
            f'instance_id = "{name}"\nlease_ttl_s = {a.ttl}\n')
        return write_config(
            self.tmp / f"{name}.toml", ranges=self.ranges,
            hashprice=hashprice, tariff=0.07, state_dir=state, poll_interval_s=a.poll,
            guards={"ramp_w_per_min": 1e9, "max_commands_per_tick": 100000},
            # verify_grace_s as dr_latency.py: a Whatsminer restarts btminer for a new limit
            controller={"verify_grace_s": 240.0,
                        "command_concurrency": a.command_concurrency}, extra=extra)

    def start(self, name: str, hashprice: float) -> float:
        path = self.config(name, hashprice)
        log = open(self.log(name), "ab")  # the child holds it
        started = time.time()
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "curtaild.controller.cli", "--config", str(path), "run"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        return started

    def ticked(self, name: str, after: float, timeout_s: float) -> float:
        """The end of ``name``'s first tick after ``after``."""
        return wait(f"{name}'s tick", lambda: log_first(self.log(name), "curtaild: tick ",
                                                      after), timeout_s)

    def kill(self, name: str) -> float:
        self.procs[name].kill()
        killed = time.time()
        self.procs[name].wait(30)
        return killed

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(90)
            except subprocess.TimeoutExpired:
                p.kill()


def _states(emu: EmulatorFleet) -> dict[str, str]:
    return {m["ip"]: m["state"] for m in emu.get("/miners", 120.0)}


def scenario_wake(pair: Pair, emu: EmulatorFleet, leader: str, standby: str) -> list[object]:
    """The leader sleeps the losers; the margin returns as it is killed."""
    lj = pair.state(leader) / "journal.sqlite"
    wait(f"{leader} slept the losers", lambda: log_first(pair.log(leader),
                                                         "curtaild.loop: sleep "), 900, 1.0)

    def asleep() -> bool:
        ok = {r[0] for r in _rows(lj, "SELECT DISTINCT e.ip FROM events e WHERE e.kind="
                                      "'outcome' AND e.action='sleep' AND e.result='ok'")}
        now = _states(emu)
        return bool(ok) and all(now[ip] == "sleeping" for ip in ok)

    wait("every acknowledged sleep asleep", asleep, 900, 2.0)
    # settled: a tick of the leader with nothing to send (its sleeps verified and shared)
    after = time.time()
    wait(f"a quiet tick of {leader}", lambda: log_first(pair.log(leader),
                                                        re.compile(r"curtaild: tick .*\| 0 "
                                                                   r"commands$"), after), 900)
    slept = {ip for ip, s in _states(emu).items() if s == "sleeping"}
    for name in (leader, standby):
        pair.config(name, 0.09)
    pair.procs[standby].send_signal(signal.SIGHUP)
    killed = pair.kill(leader)
    slog = pair.log(standby)
    leads = wait(f"{standby} leads", lambda: log_first(slog, f"{standby} leads", killed), 900)
    cmd = wait(f"{standby} commands", lambda: log_first(slog, "curtaild.loop: run ", killed),
               900)
    sent = _rows(pair.state(standby) / "journal.sqlite", "SELECT MIN(ts) FROM events WHERE "
                 "kind='intent' AND dry_run=0 AND ts >= ?", (killed,))[0][0]
    done = wait("every machine the leader slept mining",
                lambda: all(s == "mining" for ip, s in _states(emu).items() if ip in slept)
                and time.time(), 900, 2.0)
    return [len(slept), f"{leads - killed:.1f}", f"{sent - killed:.1f}", f"{cmd - killed:.1f}",
            f"{done - killed:.1f}"]


def scenario_dr(pair: Pair, emu: EmulatorFleet, leader: str, standby: str,
                lead_s: float) -> tuple[list[object], dict]:
    """A demand-response event the leader shared; it is killed as the event starts."""
    wait("every machine mining", lambda: all(s == "mining" for s in _states(emu).values()),
         900, 2.0)
    full_w = emu.site_power_w()
    target = round(full_w * 0.5)
    event = f"bench-dr-{time.time_ns()}"
    start = time.time() + lead_s
    key = f"/curtaild/{SITE}/_site/state/mqtt_directives/"
    with Client(pair.broker) as ems:
        # the leader's bridge is up: a live (not retained) state message (commands are not
        # retained: one published before it subscribed would be lost)
        wait("the leader's MQTT bridge", lambda: any(
            t == f"{PREFIX}/state" and not r for t, _p, r in list(ems.messages)), 600, 0.5)
        published = time.time()
        ems.publish(f"{PREFIX}/cmd/curtail", json.dumps(
            {"id": event, "target_power_w": target, "start": _iso(start),
             "end": _iso(start + 900)}))
        shared = wait("the event shared through etcd",
                      lambda: any(event in k for k in pair.etcd.get_prefix(key)) and time.time(),
                      max(lead_s - 1.0, 1.0), 0.25)
    time.sleep(max(0.0, start - 0.5 - time.time()))
    killed = pair.kill(leader)
    at_kill_w = emu.site_power_w()
    lj = pair.state(leader) / "journal.sqlite"
    leader_sheds = _rows(lj, "SELECT COUNT(*) FROM events WHERE kind='intent' AND dry_run=0 "
                             "AND action IN ('sleep','limit') AND ts >= ?", (published,))[0][0]
    slog, sj = pair.log(standby), pair.state(standby) / "journal.sqlite"
    leads = wait(f"{standby} leads", lambda: log_first(slog, f"{standby} leads", killed), 900)
    under = wait("site power under target",
                 lambda: emu.site_power_w() < target and time.time(), 900, 0.5)
    acked = wait("a shed acknowledged", lambda: min(
        (t for t in (log_first(slog, s, killed) for s in SHED_LOG) if t is not None),
        default=None), 120)
    time.sleep(3.0)  # the batch's last intents
    first, last, sheds = _rows(sj, "SELECT MIN(ts), MAX(ts), COUNT(*) FROM events WHERE "
                                   "kind='intent' AND dry_run=0 AND action IN ('sleep','limit') "
                                   "AND ts >= ?", (killed,))[0]
    failed = _rows(sj, "SELECT COUNT(*) FROM events WHERE kind='outcome' AND result!='ok' "
                       "AND ts >= ?", (killed,))[0][0]
    extra = {"full_w": full_w, "target_w": target, "at_kill_w": at_kill_w,
             "leader_sheds": leader_sheds, "shared_s": shared - published, "failed": failed}
    return [sheds, f"{leads - killed:.1f}", f"{first - killed:.1f}", f"{last - killed:.1f}",
            f"{acked - killed:.1f}", f"{under - killed:.1f}"], extra


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--miners", type=int, default=1000)
    ap.add_argument("--ttl", type=int, default=10, help="lease_ttl_s (default: as shipped)")
    ap.add_argument("--poll", type=float, default=30.0,
                    help="poll_interval_s (default: as shipped)")
    ap.add_argument("--scenarios", default="wake,dr", help="wake, dr or both (in that order)")
    ap.add_argument("--lead", type=float, default=0.0,
                    help="the demand-response event starts this long after its publish "
                         "(default: a poll interval + 15 s: the leader shares it after the "
                         "tick in progress)")
    ap.add_argument("--command-concurrency", type=int, default=200,
                    help="[controller] command_concurrency of both instances (a stock Antminer "
                         "takes ~21 s to write a sleep: 3,750 of them at 200 take 7 min)")
    ap.add_argument("--discover", action="store_true",
                    help="no identities.json: each instance discovers every address first")
    ap.add_argument("--per-emulator", type=int, default=5000,
                    help="miners per emulator process (common.EmulatorFleet: descriptors)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the logs, configs and state directories (path printed)")
    args = ap.parse_args()
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not scenarios or set(scenarios) - {"wake", "dr"}:
        ap.error("--scenarios: wake, dr or wake,dr")
    lead_s = args.lead or args.poll + 15.0
    raise_nofile()
    print_machine()
    print(f"load before   {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f}")
    wake_row = dr_row = None
    dr_extra: dict = {}
    prefix = "curtaild-failover-"
    workdir = (contextlib.nullcontext(tempfile.mkdtemp(prefix=prefix)) if args.keep
               else tempfile.TemporaryDirectory(prefix=prefix))
    with workdir as tmp_name, EtcdCluster([ETCD]) as etcd, MosquittoProcess() as broker, \
            EmulatorFleet(args.miners, FIRST, args.per_emulator) as emu, FdWatch(emu) as fds:
        tmp = Path(tmp_name)
        if args.keep:
            print(f"logs and state in {tmp}")
        pair = Pair(tmp, args, etcd, broker, emu.ranges())
        t0 = time.time()
        if not args.discover:
            kinds = seed_identities(emu.parts, [pair.state("a"), pair.state("b")])
            print(f"identities.json seeded in {time.time() - t0:.1f} s: "
                  f"{sum(kinds.values())} miners, {len(kinds)} classes")
        try:
            price = 0.045 if scenarios[0] == "wake" else 0.09
            started = pair.start("a", price)
            wait("a leads", lambda: log_first(pair.log("a"), "a leads"), 120)
            a_tick = pair.ticked("a", started, 900)
            pair.start("b", price)
            b_tick = pair.ticked("b", started, 900)
            print(f"first tick done: a {a_tick - started:.1f} s, b {b_tick - started:.1f} s "
                  "after a's exec")
            leader, standby = "a", "b"
            for n, scenario in enumerate(scenarios):
                if n:  # the killed instance back, as the standby
                    again = pair.start(leader, 0.09)
                    pair.ticked(leader, again, 900)
                    leader, standby = standby, leader
                if scenario == "wake":
                    wake_row = scenario_wake(pair, emu, leader, standby)
                else:
                    dr_row, dr_extra = scenario_dr(pair, emu, leader, standby, lead_s)
        finally:
            pair.stop_all()
        # a leader that lost its lease by itself (loop too busy to keep it alive), and etcd
        # requests past their deadline: both should be none
        losses = sum(len(log_times(pair.log(n), "no longer leads")) for n in ("a", "b"))
        late = sum(len(log_times(pair.log(n), "etcd unreachable")) for n in ("a", "b"))
    load = os.getloadavg()
    head = (f"\n{args.miners} emulated miners; lease TTL {args.ttl} s, poll interval "
            f"{args.poll:g} s; seconds from the leader's SIGKILL")
    if wake_row is not None:
        print(head + " (wake: the margin returns as it dies):")
        table(("slept by the leader", "successor leads", "first command decided",
               "first command acked", "all slept machines mining"), [wake_row])
    if dr_row is not None:
        e = dr_extra
        print(head + f" (dr: an event starts 0.5 s after it dies; target {e['target_w'] / 1e3:.0f}"
              f" kW of {e['full_w'] / 1e3:.0f} kW; {e['at_kill_w'] / 1e3:.0f} kW at the kill; "
              f"the leader had shed {e['leader_sheds']}; the event was in etcd "
              f"{e['shared_s']:.1f} s after its publish; {e['failed']} failed outcomes):")
        table(("sheds", "successor leads", "first shed decided", "last shed decided",
               "first shed acked", "site under target"), [dr_row])
    print(f"leadership lost without a kill: {losses}; etcd requests past their deadline "
          f"(request_timeout_s): {late}")
    print(f"load after    {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; emulator processes: "
          f"{len(emu.parts)}, peak descriptors in one: {fds.peak} (RLIMIT_NOFILE "
          f"{resource.getrlimit(resource.RLIMIT_NOFILE)[1]})")


if __name__ == "__main__":
    main()
