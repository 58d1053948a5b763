"""Hot standby (issue 19): two real `curtaild run` on one emulated fleet, a real etcd.

Judged by the emulator's truth (GET /miners: state and each change's time and actor) and by
each instance's own journal: the leader commands, the standby never does; kill -9 the leader
and the standby takes over within the lease TTL plus a tick, resumes the ownership it shared
(wakes what curtaild slept once the margin returns, never what an operator slept), and no
command of the deposed leader comes after the successor's first one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.daemon import (
    SHARD_A_FLEET,
    SHARD_B_FLEET,
    DaemonProcess,
    cluster_role,
    journal_rows,
    read_status,
    wait_for,
    write_config,
)
from tests.support.emulator import SITE_WHATSMINER_PASSWORD, EmulatorProcess
from tests.support.etcd import EtcdCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# As tests/controller/test_run_integration.py: at 0.045 USD/TH/day and 0.07 USD/kWh the three
# S19j Pro and the M30S lose money (slept by curtaild), the S21s and the S19 XP earn.
FLEET = f"""
[[miner]]
model = "S21"
count = 2
[[miner]]
model = "S19 XP"
[[miner]]
model = "S19j Pro"
count = 3
[[miner]]
model = "M30S"
password = "{SITE_WHATSMINER_PASSWORD}"
"""
FIRST = "127.191.0.1"
RANGE = "127.191.0.1-127.191.0.7"
LOSERS = {"127.191.0.4", "127.191.0.5", "127.191.0.6", "127.191.0.7"}
OPERATOR_SLEPT = "127.191.0.2"  # an S21 (it earns): slept by hand, never woken by curtaild
ETCD_ONE = ["127.190.1.1"]
ETCD_THREE = ["127.190.1.1", "127.190.1.2", "127.190.1.3"]
TTL_S = 3
POLL_S = 1.0


def _config(path: Path, state: Path, etcd: EtcdCluster, instance: str, *,
            hashprice: float) -> Path:
    endpoints = ", ".join(f'"{e}"' for e in etcd.endpoints)
    extra = (f"[cluster]\nendpoints = [{endpoints}]\nsite_id = \"site1\"\n"
             f"instance_id = \"{instance}\"\nlease_ttl_s = {TTL_S}\n")
    return write_config(path, ranges=[RANGE], hashprice=hashprice, tariff=0.07,
                        state_dir=state, poll_interval_s=POLL_S,
                        guards={"ramp_w_per_min": 60000.0}, extra=extra)




def _states(emu: EmulatorProcess) -> dict[str, str]:
    return {m["ip"]: m["state"] for m in emu.miners()}


def _intents(state: Path) -> list[tuple]:
    """(ts, ip, action, term) of every command this instance sent (not dry runs)."""
    return journal_rows(state, "SELECT e.ts, e.ip, e.action, e.term FROM events e WHERE"
                        " e.kind='intent' AND e.dry_run=0 AND EXISTS (SELECT 1 FROM events o"
                        " WHERE o.kind='outcome' AND o.miner=e.miner AND o.id>e.id AND"
                        " o.result='ok') ORDER BY e.ts")


def _client_changes_after(emu: EmulatorProcess, ip: str, since: float) -> list:
    return [c for c in emu.miner(ip)["changes"] if c[2] == "client" and c[0] > since]


def test_standby_never_commands_and_takes_over_after_kill9(tmp_path: Path) -> None:
    sa, sb = tmp_path / "a", tmp_path / "b"
    with EtcdCluster(ETCD_THREE) as etcd, \
            EmulatorProcess(fleet_toml=FLEET, first_ip=FIRST, time_scale=0.01) as emu:
        ca = _config(tmp_path / "a.toml", sa, etcd, "a", hashprice=0.045)
        cb = _config(tmp_path / "b.toml", sb, etcd, "b", hashprice=0.045)
        with DaemonProcess(ca, tmp_path / "a.log") as a:
            wait_for(lambda: cluster_role(sa) == "leader", 30, what="a leads")
            with DaemonProcess(cb, tmp_path / "b.log") as b:
                wait_for(lambda: cluster_role(sb) == "standby", 30, what="b is a standby")
                wait_for(lambda: all((s == "sleeping") == (ip in LOSERS)
                                     for ip, s in _states(emu).items()), 90,
                         what="the leader slept the losers")
                # The review of a's new journal is over once it saw every machine: from then
                # on, a machine asleep that curtaild did not sleep is an operator's.
                wait_for(lambda: read_status(sa).get("journal_review") is None, 30,
                         what="a's journal review done")
                emu.action(OPERATOR_SLEPT, "sleep")
                operator_at = time.time()
                emu.wait_state(OPERATOR_SLEPT, "sleeping")
                # One etcd member stops: nothing changes (same leader, same term).
                term = read_status(sa)["cluster"]["term"]
                etcd.stop_member(2)
                ticks_b = b.log().count("tick ")
                wait_for(lambda: b.log().count("tick ") >= ticks_b + 3, 30,
                         what="b keeps polling")
                assert read_status(sa)["cluster"] == {"role": "leader", "term": term,
                                                  "leader": "a", "shard": None}
                st_b = read_status(sb)["cluster"]
                assert st_b["role"] == "standby" and st_b["leader"] == "a"
                assert st_b["term"] == term
                # The standby polled and decided, and never commanded.
                assert not journal_rows(sb, "SELECT * FROM events WHERE kind='intent'")
                assert read_status(sb)["dry_run"] is True
                assert _states(emu)[OPERATOR_SLEPT] == "sleeping"

                a.kill9()
                killed_at = time.time()
                wait_for(lambda: cluster_role(sb) == "leader", TTL_S + 3 * POLL_S + 5,
                         interval=0.1, what="b takes over")
                took_over_s = time.time() - killed_at
                assert took_over_s <= TTL_S + POLL_S + 3.0, took_over_s
                assert read_status(sb)["cluster"]["term"] > term
                # The margin returns: b wakes what a slept (curtaild's), not the operator's.
                _config(cb, sb, etcd, "b", hashprice=0.09)
                b.proc.send_signal(1)
                wait_for(lambda: all(_states(emu)[ip] == "mining" for ip in LOSERS), 90,
                         what="b woke the machines a had slept")
                time.sleep(3 * POLL_S)
                assert _states(emu)[OPERATOR_SLEPT] == "sleeping"
                assert not _client_changes_after(emu, OPERATOR_SLEPT, operator_at)
                # The operator's view: `status --json` and `status` name the role and term.
                cli = [sys.executable, "-m", "curtaild.controller.cli", "--config", str(cb),
                       "status"]
                shown = json.loads(subprocess.run([*cli, "--json"], capture_output=True,
                                                  text=True, check=True).stdout)["cluster"]
                assert shown["role"] == "leader" and shown["leader"] == "b"
                assert shown["term"] > term and shown["shard"] is None
                text = subprocess.run(cli, capture_output=True, text=True, check=True).stdout
                assert f"cluster: leader (term {shown['term']}, leader b)" in text
                assert b.alive()
                assert b.stop() == 0
        sent_a, sent_b = _intents(sa), _intents(sb)
        assert sent_a and sent_b
        assert {ip for _, ip, action, _ in sent_a if action == "sleep"} == LOSERS
        assert {ip for _, ip, action, _ in sent_b if action == "run"} == LOSERS
        assert max(ts for ts, *_ in sent_a) < min(ts for ts, *_ in sent_b)
        terms_a = {t for *_, t in sent_a}
        terms_b = {t for *_, t in sent_b}
        assert len(terms_a) == 1 and len(terms_b) == 1 and min(terms_b) > max(terms_a)


def _config_endpoints(path: Path, state: Path, endpoints: list[str], instance: str, *,
                      hashprice: float) -> Path:
    listed = ", ".join(f'"{e}"' for e in endpoints)
    extra = (f"[cluster]\nendpoints = [{listed}]\nsite_id = \"site1\"\n"
             f"instance_id = \"{instance}\"\nlease_ttl_s = {TTL_S}\n")
    return write_config(path, ranges=[RANGE], hashprice=hashprice, tariff=0.07,
                        state_dir=state, poll_interval_s=POLL_S,
                        guards={"ramp_w_per_min": 60000.0}, extra=extra)


def _ok_commands_after(state: Path, since: float) -> list[tuple]:
    return journal_rows(state, "SELECT ts, ip, action FROM events WHERE kind='outcome'"
                        " AND result='ok' AND dry_run=0 AND ts > ?", (since,))


def test_leader_cut_off_from_etcd_stops_commanding_and_the_standby_takes_over(
        tmp_path: Path) -> None:
    from tests.support.tcpproxy import TcpProxy

    sa, sb = tmp_path / "a", tmp_path / "b"
    with EtcdCluster(ETCD_ONE) as etcd, \
            TcpProxy(("127.190.1.9", 2379), (ETCD_ONE[0], 2379)) as proxy, \
            EmulatorProcess(fleet_toml=FLEET, first_ip=FIRST, time_scale=0.01) as emu:
        via_proxy = ["http://127.190.1.9:2379"]
        ca = _config_endpoints(tmp_path / "a.toml", sa, via_proxy, "a", hashprice=0.045)
        cb = _config_endpoints(tmp_path / "b.toml", sb, etcd.endpoints, "b", hashprice=0.045)
        with DaemonProcess(ca, tmp_path / "a.log") as a:
            wait_for(lambda: cluster_role(sa) == "leader", 30, what="a leads")
            with DaemonProcess(cb, tmp_path / "b.log") as b:
                wait_for(lambda: cluster_role(sb) == "standby", 30, what="b is a standby")
                wait_for(lambda: all((s == "sleeping") == (ip in LOSERS)
                                     for ip, s in _states(emu).items()), 90,
                         what="the leader slept the losers")
                term = read_status(sa)["cluster"]["term"]
                proxy.cut()
                cut_at = time.time()
                # The margin returns for both at once: a (cut off) must not act on it.
                for cfg, state, eps, name in ((ca, sa, via_proxy, "a"),
                                              (cb, sb, etcd.endpoints, "b")):
                    _config_endpoints(cfg, state, eps, name, hashprice=0.09)
                a.proc.send_signal(1)
                b.proc.send_signal(1)
                wait_for(lambda: "no longer leads" in a.log(), TTL_S + 3,
                         interval=0.1, what="a stops leading within the TTL")
                lost_s = time.time() - cut_at
                wait_for(lambda: cluster_role(sb) == "leader", TTL_S + 3 * POLL_S + 5,
                         interval=0.1, what="b takes over")
                took_over_at = time.time()
                assert read_status(sb)["cluster"]["term"] > term
                wait_for(lambda: all(_states(emu)[ip] == "mining" for ip in LOSERS), 90,
                         what="b woke the machines a had slept")
                assert a.alive() and b.alive()
                # a, cut off, sent nothing after the cut; it said why it did not.
                assert not _ok_commands_after(sa, cut_at)
                assert lost_s <= TTL_S + 1.0, lost_s
                # Every command the emulator received after the cut is b's: none arrived
                # before b journaled its first intent (which it does before sending it).
                sent_b = _intents(sb)
                assert sent_b
                first_b = min(t for t, *_ in sent_b)
                assert cut_at < first_b <= took_over_at + 2 * POLL_S + 1
                for ip in LOSERS:
                    for ts, _action, actor in emu.miner(ip)["changes"]:
                        if ts > cut_at and actor == "client":
                            assert ts >= first_b, (ip, ts, first_b)
                assert b.stop() == 0
                assert a.stop() == 0


DR_FLEET = """
[[miner]]
model = "S19j Pro"
count = 2
[[miner]]
model = "S21"
count = 2
[[miner]]
model = "M30S"
"""
DR_RANGE = "127.191.2.1-127.191.2.5"


def test_leader_killed_during_a_demand_response_event(tmp_path: Path) -> None:
    """The event the leader received over MQTT is shared through etcd: the successor keeps
    the fleet under target until the event's end, then restores it; its MQTT bridge
    publishes the event in force."""
    from datetime import UTC, datetime

    from tests.support.mosquitto import PREFIX, Client, MosquittoProcess

    def iso(ts: float) -> str:
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z")

    def power_w() -> float:
        return sum(m["power_w"] for m in emu.miners())

    sa, sb = tmp_path / "a", tmp_path / "b"
    with EtcdCluster(ETCD_ONE) as etcd, MosquittoProcess() as broker, \
            EmulatorProcess(fleet_toml=DR_FLEET, first_ip="127.191.2.1", time_scale=0.01) as emu, \
            Client(broker) as ems:
        endpoints = ", ".join(f'"{e}"' for e in etcd.endpoints)
        paths = {}
        for name, state in (("a", sa), ("b", sb)):
            state.mkdir()
            extra = broker.mqtt_toml(state) + (
                f"[cluster]\nendpoints = [{endpoints}]\nsite_id = \"dr\"\n"
                f"instance_id = \"{name}\"\nlease_ttl_s = {TTL_S}\n")
            # every machine earns: only the event sheds
            paths[name] = write_config(tmp_path / f"{name}.toml", ranges=[DR_RANGE],
                                       hashprice=0.09, tariff=0.03, state_dir=state,
                                       poll_interval_s=POLL_S,
                                       guards={"ramp_w_per_min": 60000.0}, extra=extra)
        with DaemonProcess(paths["a"], tmp_path / "a.log") as a:
            wait_for(lambda: cluster_role(sa) == "leader", 30, what="a leads")
            with DaemonProcess(paths["b"], tmp_path / "b.log") as b:
                wait_for(lambda: cluster_role(sb) == "standby", 30, what="b is a standby")
                wait_for(lambda: all(m["state"] == "mining" for m in emu.miners()), 60,
                         what="fleet mining")
                target = round(power_w() * 0.45)
                end = time.time() + 25.0
                ems.publish(f"{PREFIX}/cmd/curtail", json.dumps(
                    {"id": "dr-1", "target_power_w": target, "end": iso(end)}))
                wait_for(lambda: power_w() < target, 20, what="a shed under target")
                time.sleep(2 * POLL_S)  # the event and the sheds shared
                a.kill9()
                killed_at = time.time()
                wait_for(lambda: cluster_role(sb) == "leader", TTL_S + 3 * POLL_S + 5,
                         interval=0.1, what="b takes over")
                ems.clear()
                got = wait_for(lambda: ems.last(f"{PREFIX}/state"), 15,
                               what="b's bridge publishes")
                assert json.loads(got)["active_event"]["id"] == "dr-1"
                # Held under target by the successor until the end of the event ...
                while time.time() < end - 1.0:
                    assert power_w() < target * 1.05, "b restored machines during the event"
                    time.sleep(0.5)
                # ... then released and restored.
                wait_for(lambda: all(m["state"] == "mining" for m in emu.miners()), 60,
                         what="b restored the fleet after the event")
                assert time.time() - killed_at > TTL_S
                assert b.stop() == 0
        restored = journal_rows(sb, "SELECT ip FROM events WHERE kind='intent' AND"
                                " action='run' AND ts > ?", (end - 1.0,))
        assert restored, "the successor restored nothing after the event"


SHARD_A, SHARD_B = SHARD_A_FLEET, SHARD_B_FLEET
# Stock Antminers (they sleep, never limit: the allocator's full-or-idle blocks are exact).
# Margin per watt at 0.09 / 0.03: S21 (17.5 J/TH) best, S19j Pro (29.5), S19 (34.2) worst.
WORST = {"S19j Pro", "S19"}


def test_two_shards_under_a_site_cap_shed_the_sites_worst_machines(tmp_path: Path) -> None:
    """Two shards (one instance each, on one box), one site cap: the sum of the shards' true
    power ends under the cap, and the machines shed are the site's worst margin per watt,
    whichever shard they are in, and no more of them than the cap needs: both S19s and one
    S19j Pro (split in proportion to their size, the shards would sleep both S19j Pros of
    shard A and both S19s of shard B: one machine more than needed)."""
    with EtcdCluster(ETCD_ONE) as etcd, \
            EmulatorProcess(fleet_toml=SHARD_A, first_ip="127.191.4.1", time_scale=0.01) as ea, \
            EmulatorProcess(fleet_toml=SHARD_B, first_ip="127.191.5.1", time_scale=0.01) as eb:
        views = {m["ip"]: m for e in (ea, eb) for m in e.miners()}
        full_w = {ip: v["nameplate_power_w"] for ip, v in views.items()}
        worst = sorted((ip for ip, v in views.items() if v["model"] in WORST),
                       key=lambda ip: views[ip]["model"] != "S19")
        # room for everything but both S19 and one S19j Pro (plus some slack)
        cap = sum(full_w.values()) - sum(full_w[ip] for ip in worst[:3]) + 800.0
        endpoints = ", ".join(f'"{e}"' for e in etcd.endpoints)
        daemons = []
        for name, rng in (("A", "127.191.4.1-127.191.4.4"), ("B", "127.191.5.1-127.191.5.4")):
            state = tmp_path / name
            extra = (f"[cluster]\nendpoints = [{endpoints}]\nsite_id = \"big\"\n"
                     f"instance_id = \"{name.lower()}1\"\nshard = \"{name}\"\n"
                     f"lease_ttl_s = {TTL_S}\nsite_power_cap_w = {cap}\n"
                     f"safe_budget_w = {cap / 2}\n"
                     f"[metrics]\nlisten = \"127.191.6.{len(daemons) + 1}:9464\"\n")
            cfg = write_config(tmp_path / f"{name}.toml", ranges=[rng], hashprice=0.09,
                               tariff=0.03, state_dir=state, poll_interval_s=POLL_S,
                               guards={"ramp_w_per_min": 1e6}, extra=extra)
            daemons.append(DaemonProcess(cfg, tmp_path / f"{name}.log").start())
        try:
            def site() -> tuple[float, dict[str, dict]]:
                now = {m["ip"]: m for e in (ea, eb) for m in e.miners()}
                return sum(m["power_w"] for m in now.values()), now

            def settled():  # type: ignore[no-untyped-def]
                total, now = site()
                return total <= cap and all(
                    read_status(tmp_path / n).get("cluster", {}).get("budget_source")
                    == "site budget" for n in ("A", "B")) and (total, now)

            total, now = wait_for(settled, 60, what="site power under the cap, both shards "
                                  "on their budgets")
            time.sleep(4 * POLL_S)  # and it stays there
            total, now = site()
            assert total <= cap * 1.02, (total, cap)
            curtailed = {ip for ip, m in now.items() if m["state"] != "mining"
                         or (m.get("power_limit_w") or full_w[ip]) < full_w[ip] - 50}
            assert curtailed and curtailed <= set(worst), curtailed
            assert {ip for ip in worst if views[ip]["model"] == "S19"} <= curtailed
            assert len(curtailed) == 3, curtailed
            budgets = {n: read_status(tmp_path / n)["cluster"]["budget_w"] for n in ("A", "B")}
            assert sum(budgets.values()) <= cap + 1.0
            # Each shard's metrics name its role and its budget.
            import urllib.request

            for i, n in enumerate(("A", "B"), start=1):
                with urllib.request.urlopen(f"http://127.191.6.{i}:9464/metrics") as r:
                    text = r.read().decode()
                labels = f'instance="{n.lower()}1",shard="{n}"'
                assert f"curtaild_cluster_leader{{{labels}}} 1.0" in text
                assert f"curtaild_cluster_budget_watts{{{labels}}} {budgets[n]}" in text
            for d in daemons:
                assert d.alive()
        finally:
            for d in daemons:
                d.stop()
