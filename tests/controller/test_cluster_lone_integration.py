"""A shard without a standby (``[cluster] standby = false``) under a site cap, the real
`curtaild run` against the emulator and a real etcd that is stopped (issue 19).

Nobody can lead the shard in its place, so losing etcd must not stop it: it keeps its last
budget for ``budget_hold_s`` after the allocator wrote it, then obeys ``safe_budget_w``,
shedding its worst machines -- all without etcd -- and goes back to its budget once etcd is
back. Judged by the emulator's truth and the daemon's journal and status.

Addresses: 127.197.1.0/24 (etcd), 127.197.2.0/24 (miners).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, journal_rows, read_status, wait_for, write_config
from tests.support.emulator import EmulatorProcess
from tests.support.etcd import EtcdCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FLEET = """
[[miner]]
model = "S21"
count = 2
[[miner]]
model = "S19j Pro"
count = 2
"""
FIRST = "127.197.2.1"
RANGE = "127.197.2.1-127.197.2.4"
HOLD_S = 6.0



def _cluster(state: Path) -> dict:
    return read_status(state).get("cluster") or {}


def test_a_shard_without_standby_obeys_its_safe_budget_without_etcd(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with EtcdCluster(["127.197.1.1"]) as etcd, \
            EmulatorProcess(fleet_toml=FLEET, first_ip=FIRST, time_scale=0.01) as emu:
        full = {m["ip"]: m["nameplate_power_w"] for m in emu.miners()}
        models = {m["ip"]: m["model"] for m in emu.miners()}
        s19 = sorted(ip for ip, model in models.items() if model == "S19j Pro")
        # room for everything but one S19j Pro (the worst margin per watt at 0.09 / 0.03)
        safe_w = sum(full.values()) - full[s19[0]] + 300.0
        endpoints = ", ".join(f'"{e}"' for e in etcd.endpoints)
        extra = (f"[cluster]\nendpoints = [{endpoints}]\nsite_id = \"lone\"\n"
                 f"instance_id = \"a\"\nshard = \"A\"\nstandby = false\nlease_ttl_s = 3\n"
                 f"site_power_cap_w = 1000000.0\nsafe_budget_w = {safe_w}\n"
                 f"budget_hold_s = {HOLD_S}\nrequest_timeout_s = 0.5\n")
        cfg = write_config(tmp_path / "config.toml", ranges=[RANGE], hashprice=0.09,
                           tariff=0.03, state_dir=state, poll_interval_s=1.0,
                           guards={"ramp_w_per_min": 1e6}, extra=extra)

        def power_w() -> float:
            return sum(m["power_w"] for m in emu.miners())

        with DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
            wait_for(lambda: _cluster(state).get("budget_source") == "site budget"
                     and all(m["state"] == "mining" for m in emu.miners()), 60,
                     what="the shard leads on the site budget, every machine mining")
            assert _cluster(state)["role"] == "leader"
            assert power_w() > safe_w

            etcd.stop_member(0)
            stopped_at = time.time()
            # held: nothing shed while the last budget is younger than budget_hold_s
            wait_for(lambda: "etcd unreachable" in daemon.log(), 15, interval=0.2,
                     what="the daemon notices etcd is gone")
            while time.time() < stopped_at + HOLD_S - 2.0:
                assert all(m["state"] == "mining" for m in emu.miners()), "shed while held"
                time.sleep(0.3)
            # then the safe budget, obeyed without etcd
            wait_for(lambda: power_w() <= safe_w, HOLD_S + 30,
                     what="the shard under its safe budget without etcd")
            shed_at = time.time()
            source = _cluster(state)["budget_source"]
            assert source.startswith("safe budget (the last budget is"), source
            assert _cluster(state)["role"] == "leader"
            asleep = {m["ip"] for m in emu.miners() if m["state"] != "mining"}
            assert asleep and asleep <= set(s19), asleep
            sent = journal_rows(state, "SELECT ip, action FROM events WHERE kind='outcome'"
                                " AND result='ok' AND dry_run=0 AND ts > ?", (stopped_at,))
            assert sent and all(action == "sleep" for _, action in sent), sent
            assert min(journal_rows(state, "SELECT ts FROM events WHERE kind='intent' AND"
                                    " ts > ?", (stopped_at,)))[0] > stopped_at + HOLD_S - 2.0

            etcd.start_member(0)
            etcd.wait_healthy()
            # etcd back: the site budget again, and the machines shed for the safe budget
            # run again
            wait_for(lambda: _cluster(state).get("budget_source") == "site budget"
                     and all(m["state"] == "mining" for m in emu.miners()), 60,
                     what="back on the site budget, every machine mining")
            assert time.time() > shed_at
            assert daemon.alive() and daemon.stop() == 0
