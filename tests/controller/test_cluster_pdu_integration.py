"""Hot standby with the hard power-down tier (issue 19 with issue 18): two real `curtaild run`
on one emulated site with a PDU over SNMP, a real etcd.

The leader switched a Bitaxe's outlet off (AxeOS cannot sleep); an operator switched another
outlet off at the PDU; the standby started after both, so it never saw either Bitaxe answer.
kill -9 the leader: the successor owns the leader's outlet (keeps it off while the machine
loses money, switches it on when the margin returns: it decides on the machine from what the
ownership kept of it) and never touches the operator's; it also counts the leader's
switch-off against ``max_cycles_per_day``, so the outlet is not cut a second time that day.
Judged by the emulator's truth (outlet and machine states) and each instance's journal and
status.

Addresses: 127.197.3.0/24 (etcd, PDU), 127.197.4.0/24 (miners).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.daemon import (
    DaemonProcess,
    cluster_role,
    journal_rows,
    read_status,
    wait_for,
    write_config,
)
from tests.support.emulator import EmulatorProcess
from tests.support.etcd import EtcdCluster
from tests.support.pdu_fleet import Plugged, pdu_fleet, site_map

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PDU = "127.197.3.50"
AXE1, AXE2, S19 = "127.197.4.1", "127.197.4.2", "127.197.4.3"
FLEET = pdu_fleet(PDU, 4, [Plugged("BitAxe Gamma", AXE1, 1), Plugged("BitAxe Gamma", AXE2, 2),
                    Plugged("S19j Pro", S19, 3)])
SITE_MAP = site_map([(AXE1, "R-axe", 1), (AXE2, "R-axe", 2), (S19, "R-s19", 3)])
TTL_S = 3
POLL_S = 1.0


def _config(tmp: Path, name: str, etcd: EtcdCluster, *, hashprice: float) -> Path:
    (tmp / "ro").write_text("public\n")
    (tmp / "rw").write_text("private\n")
    (tmp / "site-map.csv").write_text(SITE_MAP)
    endpoints = ", ".join(f'"{e}"' for e in etcd.endpoints)
    extra = f"""
[[pdu]]
name = "pdu-a"
address = "{PDU}"
mib = "apc"
version = "v2c"
community_file = "{tmp / 'ro'}"
write_community_file = "{tmp / 'rw'}"
timeout_s = 1.0

[inventory]
file = "{tmp / 'site-map.csv'}"

[hard_power]
enabled = true
racks = ["R-axe"]
min_off_s = 2
on_interval_s = 1
max_cycles_per_day = 1

[cluster]
endpoints = [{endpoints}]
site_id = "pdu"
instance_id = "{name}"
lease_ttl_s = {TTL_S}
"""
    return write_config(tmp / f"{name}.toml", ranges=[f"{AXE1}-{S19}"], hashprice=hashprice,
                        tariff=0.5, state_dir=tmp / name, poll_interval_s=POLL_S,
                        policy={"use_power_limits": False},
                        guards={"ramp_w_per_min": 1e6}, extra=extra)


def _outlets(emu: EmulatorProcess) -> dict[int, str]:
    return {o["number"]: o["state"] for o in emu._call("GET", "/pdus")[0]["outlets"]}




def _switches(state: Path) -> list[tuple]:
    """(outlet, action) of every switch this instance made (not intents, not notes)."""
    try:
        return journal_rows(state, "SELECT outlet, action FROM outlet_events WHERE"
                            " result='ok' ORDER BY id")
    except Exception:  # no outlet table: it never switched
        return []


def test_successor_owns_the_leaders_outlet_and_never_the_operators(tmp_path: Path) -> None:
    sa, sb = tmp_path / "a", tmp_path / "b"
    with EtcdCluster(["127.197.3.1"]) as etcd, \
            EmulatorProcess(fleet_toml=FLEET, first_ip=AXE1, time_scale=0.01) as emu:
        # the operator switched outlet 2 off at the PDU before curtaild ever ran
        emu._call("POST", f"/pdus/{PDU}/outlets/2", {"on": False})
        assert _outlets(emu)[2] == "off"
        # 0.05 USD/TH/day at 0.5 USD/kWh: every machine loses money
        ca = _config(tmp_path, "a", etcd, hashprice=0.05)
        cb = _config(tmp_path, "b", etcd, hashprice=0.05)
        with DaemonProcess(ca, tmp_path / "a.log") as a:
            wait_for(lambda: cluster_role(sa) == "leader", 30, what="a leads")
            wait_for(lambda: _outlets(emu)[1] == "off" or None, 60,
                     what="a switched the Bitaxe's outlet off")
            wait_for(lambda: emu.miner(S19)["state"] == "sleeping" or None, 60,
                     what="a slept the S19j Pro by its firmware")
            assert _switches(sa) == [(1, "off")]
            # b starts now: it never sees the Bitaxe answer before it has to decide on it
            with DaemonProcess(cb, tmp_path / "b.log") as b:
                wait_for(lambda: cluster_role(sb) == "standby"
                         and read_status(sb).get("miners"), 30,
                         what="b is a standby and has polled")
                a.kill9()
                killed_at = time.time()
                wait_for(lambda: cluster_role(sb) == "leader", TTL_S + 3 * POLL_S + 5, interval=0.1,
                         what="b takes over")
                # b owns outlet 1 and keeps it off while its machine loses money; outlet 2
                # is the operator's, outlet 3 feeds a machine asleep by its firmware
                wait_for(lambda: (read_status(sb).get("site") or {}).get("owned_outlets")
                         == [["pdu-a", 1]], 15, what="b owns outlet 1")
                b_ticks = b.log().count("tick ")
                wait_for(lambda: b.log().count("tick ") >= b_ticks + 3, 30,
                         what="b ticks as the leader")
                assert _outlets(emu) == {1: "off", 2: "off", 3: "on", 4: "on"}
                assert _switches(sb) == []

                # the margin returns: b switches its outlet on; the operator's stays off
                _config(tmp_path, "b", etcd, hashprice=2.0)
                b.proc.send_signal(1)
                wait_for(lambda: _outlets(emu)[1] == "on" or None, 60,
                         what="b switched outlet 1 back on")
                wait_for(lambda: (emu.miner(AXE1)["state"] == "mining"
                         and emu.miner(S19)["state"] == "mining") or None, 60,
                         what="the Bitaxe booted, the S19j Pro woken")
                assert _switches(sb) == [(1, "on")]
                assert not (read_status(sb).get("site") or {}).get("owned_outlets")

                # the margin goes again: the leader's switch-off today was outlet 1's one
                # cycle (max_cycles_per_day = 1), so b does not cut it a second time
                _config(tmp_path, "b", etcd, hashprice=0.05)
                b.proc.send_signal(1)
                wait_for(lambda: emu.miner(S19)["state"] == "sleeping" or None, 60,
                         what="b slept the S19j Pro again")

                def held_axe1() -> str:
                    rows = {m["ip"]: m for m in read_status(sb).get("miners", [])}
                    return (rows.get(AXE1) or {}).get("held") or ""

                wait_for(lambda: "switched off 1 times in 24 h" in held_axe1() or None, 30,
                         what="b holds outlet 1 on: its cycle is used")
                time.sleep(3 * POLL_S)
                assert _outlets(emu) == {1: "on", 2: "off", 3: "on", 4: "on"}
                assert _switches(sb) == [(1, "on")]
                # never a request to the operator's outlet from either instance
                for state in (sa, sb):
                    assert not journal_rows(state, "SELECT * FROM outlet_events WHERE"
                                            " outlet=2")
                assert time.time() - killed_at > TTL_S
                assert b.stop() == 0
