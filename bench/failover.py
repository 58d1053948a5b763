"""Failover time of a hot-standby pair (issue 19): leader kill -9 -> successor commands.

    python bench/failover.py                               # 1,000 miners, TTL 5 s, poll 5 s
    python bench/failover.py --miners 1000 --ttl 10 --poll 30

Two real ``curtaild run`` (a, b) with ``[cluster]`` on one ``curtaild emulate --count N`` fleet
and a real single-member etcd. a leads and sleeps the machines that lose money at 0.045
USD/TH/day; then the margin returns (both configs reloaded with 0.09) at the moment a is
killed with SIGKILL, so only b can wake them. Reported, from the kill: b leads (its log line),
b's first command, and every machine a slept mining again (emulator truth). Uses
127.196.0.1 upwards for the miners and 127.196.255.1 for etcd (loopback; root for ports 80).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Emulator, print_machine, raise_nofile, table

from tests.support.daemon import write_config
from tests.support.etcd import EtcdCluster

REPO = Path(__file__).resolve().parents[1]
FIRST = "127.196.0.1"
ETCD = "127.196.255.1"
LOG_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _first(log: Path, needle: str, after: float) -> float | None:
    for line in log.read_text(errors="replace").splitlines():
        m = LOG_TS.match(line)
        if m and needle in line:
            ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if ts >= after:
                return ts
    return None


def _states(emu: Emulator) -> dict[str, str]:
    with urllib.request.urlopen(f"http://{emu.control}/miners", timeout=60) as resp:
        return {m["ip"]: m["state"] for m in json.loads(resp.read())}


def _wait(what: str, pred, timeout: float, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--miners", type=int, default=1000)
    ap.add_argument("--ttl", type=int, default=5)
    ap.add_argument("--poll", type=float, default=5.0)
    args = ap.parse_args()
    raise_nofile()
    print_machine()
    with tempfile.TemporaryDirectory(prefix="curtaild-failover-") as tmp, \
            EtcdCluster([ETCD]) as etcd, Emulator(args.miners, FIRST) as emu:
        ips = emu.ips()
        paths = {}
        procs = {}

        def config(name: str, hashprice: float) -> Path:
            extra = (f'[cluster]\nendpoints = ["{etcd.endpoints[0]}"]\nsite_id = "bench"\n'
                     f'instance_id = "{name}"\nlease_ttl_s = {args.ttl}\n')
            return write_config(Path(tmp) / f"{name}.toml", ranges=[f"{ips[0]}-{ips[-1]}"],
                                hashprice=hashprice, tariff=0.07,
                                state_dir=Path(tmp) / name, poll_interval_s=args.poll,
                                guards={"ramp_w_per_min": 1e9, "max_commands_per_tick": 100000},
                                controller={"verify_grace_s": 120.0}, extra=extra)

        try:
            for name in ("a", "b"):
                paths[name] = config(name, 0.045)
                log = open(Path(tmp) / f"{name}.log", "wb")  # the child holds it; closed at exit
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "curtaild.controller.cli", "--config",
                     str(paths[name]), "run"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
                if name == "a":
                    _wait("a leads", lambda: _first(Path(tmp) / "a.log", "a leads", 0), 120)
            before = _states(emu)
            _wait("a slept the losers", lambda: _first(Path(tmp) / "a.log",
                                                       "curtaild.loop: sleep", 0), 600)
            time.sleep(3 * args.poll)  # a's sleeps confirmed and shared
            slept = {ip for ip, s in _states(emu).items() if s == "sleeping"}
            assert slept and all(before[ip] == "mining" for ip in slept)
            for name in ("a", "b"):
                config(name, 0.09)
            procs["b"].send_signal(signal.SIGHUP)
            procs["a"].kill()
            killed = time.time()
            procs["a"].wait(10)
            blog = Path(tmp) / "b.log"
            leads = _wait("b leads", lambda: _first(blog, "b leads", killed), 600)
            cmd = _wait("b commands", lambda: _first(blog, "curtaild.loop: run ", killed), 600)
            done = _wait("every machine a slept mining",
                         lambda: all(s == "mining" for ip, s in _states(emu).items()
                                     if ip in slept) and time.time(), 900, interval=1.0)
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.terminate()
                    p.wait(60)
    print(f"\n{args.miners} emulated miners, {len(slept)} slept by the leader; lease TTL "
          f"{args.ttl} s, poll interval {args.poll:g} s; from the leader's SIGKILL:")
    table(("b leads s", "b's first command s", "all slept machines mining s"),
          [(f"{leads - killed:.1f}", f"{cmd - killed:.1f}", f"{done - killed:.1f}")])


if __name__ == "__main__":
    main()
