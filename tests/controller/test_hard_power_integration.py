"""The hard power-down tier and metered power under the real `curtaild run` (issue 18).

Real emulator (PDUs over SNMP, a Modbus meter) and real daemon: a Bitaxe rack (AxeOS cannot
sleep) curtailed by its outlets -- a shared outlet switched only with both machines on it --
and restored staggered, outlets first; a machine not opted in is slept by its firmware and its
outlet left alone; a power cap judged on the meter, which sees overhead no machine reports.
Judged by the emulator's truth and the journal.

Addresses: 127.183.0.0/16 (issue 18's block).
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, journal_rows, wait_for, write_config
from tests.support.emulator import EmulatorProcess
from tests.support.pdu_fleet import Plugged, pdu_fleet, site_map

pytestmark = pytest.mark.integration

PDU = "127.183.0.50"
AXE1, AXE2, AXE3, AXE4, S19 = (f"127.183.1.{i}" for i in range(1, 6))
FLEET = pdu_fleet(PDU, 8, [Plugged("BitAxe Gamma", AXE1, 1),
                    Plugged("BitAxe Gamma", AXE2, 2, count=2, per_outlet=2),
                    Plugged("BitAxe Gamma", AXE4, 3), Plugged("S19j Pro", S19, 4)])
SITE_MAP = site_map([(AXE1, "R-axe", 1), (AXE2, "R-axe", 2), (AXE3, "R-axe", 2), (AXE4, "R-axe", 3),
                     (S19, "R-s19", 4)])


def site_config(tmp: Path, *, hashprice: float, hard_power: str) -> Path:
    (tmp / "ro").write_text("public\n")
    (tmp / "rw").write_text("private\n")
    (tmp / "site-map.csv").write_text(SITE_MAP)
    extra = f"""
[[pdu]]
name = "pdu-a"
address = "{PDU}"
mib = "apc"
version = "v2c"
community_file = "ro"
write_community_file = "rw"
timeout_s = 1.0

[inventory]
file = "site-map.csv"

[hard_power]
{hard_power}
"""
    return write_config(tmp / "config.toml", ranges=[f"{AXE1}-{S19}"], hashprice=hashprice,
                        tariff=0.5, state_dir=tmp / "state",
                        policy={"use_power_limits": False},
                        guards={"ramp_w_per_min": 1e6}, extra=extra)


def outlets(emu: EmulatorProcess) -> dict[int, str]:
    pdu = emu._call("GET", "/pdus")[0]
    return {o["number"]: o["state"] for o in pdu["outlets"]}


def states(emu: EmulatorProcess) -> dict[str, str]:
    return {m["ip"]: m["state"] for m in emu.miners()}


HARD_POWER = """enabled = true
racks = ["R-axe"]
min_off_s = 2
on_interval_s = 1.5
max_on_per_pdu = 1
"""


def test_bitaxe_rack_cut_at_its_outlets_and_restored_staggered(tmp_path: Path) -> None:
    # 0.05 USD/TH/day at 0.5 USD/kWh: every machine loses (the Bitaxe at 14 J/TH too)
    with EmulatorProcess(fleet_toml=FLEET, first_ip=AXE1, time_scale=0.01) as emu:
        cfg = site_config(tmp_path, hashprice=0.05, hard_power=HARD_POWER)
        with DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
            wait_for(lambda: outlets(emu) == {1: "off", 2: "off", 3: "off", 4: "on", 5: "on",
                                             6: "on", 7: "on", 8: "on"} or None, 60,
                     what="the Bitaxe outlets off")
            # the S19j Pro can sleep and is not opted in: slept by firmware, outlet left on
            wait_for(lambda: states(emu)[S19] == "sleeping" or None, 60, what="S19 asleep")
            assert {states(emu)[ip] for ip in (AXE1, AXE2, AXE3, AXE4)} == {"off"}
            time.sleep(3.0)  # a few more ticks: nothing cycles, the S19's outlet stays on
            assert outlets(emu)[4] == "on" and states(emu)[S19] == "sleeping"
            status = json.loads((tmp_path / "state" / "status.json").read_text())
            assert status["site"]["owned_outlets"] == [["pdu-a", 1], ["pdu-a", 2],
                                                       ["pdu-a", 3]]
            # every switch-off had its intent journaled before it happened
            rows = journal_rows(tmp_path / "state", "SELECT outlet, action, result FROM "
                                "outlet_events ORDER BY id")
            for n in (1, 2, 3):
                mine = [(a, r) for o, a, r in rows if o == n]
                assert mine[:2] == [("off", "intent"), ("off", "ok")], (n, rows)

            # the hash price makes every machine earn: outlets on first, one per tick,
            # on_interval_s apart; then the S19 is woken by its firmware
            cfg = site_config(tmp_path, hashprice=2.0, hard_power=HARD_POWER)
            daemon.proc.send_signal(1)
            wait_for(lambda: all(s == "on" for s in outlets(emu).values()) or None, 60,
                     what="every outlet on")
            wait_for(lambda: set(states(emu).values()) == {"mining"} or None, 60,
                     what="every machine mining")
            ons = journal_rows(tmp_path / "state", "SELECT at FROM outlet_events WHERE "
                               "action='on' AND result='ok' ORDER BY at")
            assert len(ons) == 3
            gaps = [b[0] - a[0] for a, b in itertools.pairwise(ons)]
            assert min(gaps) >= 1.4, gaps  # staggered: never two at once on one PDU
            s19 = emu.miner(S19)
            assert any(c[1] == "wake" and c[2] == "client" for c in s19["changes"])
            assert not journal_rows(tmp_path / "state", "SELECT * FROM outlets")  # released
            assert daemon.stop() == 0


def test_shared_outlet_with_a_machine_not_opted_in_is_never_cut(tmp_path: Path) -> None:
    fleet = FLEET.replace(f'ip = "{S19}"\npdu = "{PDU}"\noutlet = 4',
                          f'ip = "{S19}"\npdu = "{PDU}"\noutlet = 3')
    with EmulatorProcess(fleet_toml=fleet, first_ip=AXE1, time_scale=0.01) as emu:
        cfg = site_config(tmp_path, hashprice=0.05, hard_power=HARD_POWER)
        (tmp_path / "site-map.csv").write_text(SITE_MAP.replace("R-s19,pdu-a,4",
                                                                "R-s19,pdu-a,3"))
        with DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
            wait_for(lambda: (outlets(emu)[1] == "off" and outlets(emu)[2] == "off") or None,
                     60, what="the Bitaxe-only outlets off")
            wait_for(lambda: states(emu)[S19] == "sleeping" or None, 60, what="S19 asleep")
            time.sleep(3.0)
            assert outlets(emu)[3] == "on"  # AXE4 shares it with the S19: not opted in
            assert states(emu)[AXE4] == "mining"
            status = json.loads((tmp_path / "state" / "status.json").read_text())
            held = {m["ip"]: m.get("held") for m in status["miners"]}
            assert "not opted in" in (held[AXE4] or ""), held
            assert daemon.stop() == 0


METER_FLEET = """
[meter]
address = "127.183.2.60"
port = 1502
overhead_w = 3000

[[miner]]
model = "S19"
[[miner]]
model = "S19j Pro"
[[miner]]
model = "S21"
"""


def test_power_cap_is_judged_on_the_meter(tmp_path: Path) -> None:
    """An S19, an S19j Pro and an S21 under an 11 kW cap: 9.8 kW by their own figures (no
    shed), 12.8 kW on the meter with 3 kW of facility load -- the least efficient, the S19,
    must go, and only it."""
    with EmulatorProcess(fleet_toml=METER_FLEET, first_ip="127.183.2.1",
                         time_scale=0.01) as emu:
        extra = """
[meter]
address = "127.183.2.60"
port = 1502
timeout_s = 1.0

[policy.power_cap]
cap_w = 11000
"""
        cfg = write_config(tmp_path / "config.toml", ranges=["127.183.2.1-127.183.2.3"],
                           hashprice=2.0, tariff=0.05, state_dir=tmp_path / "state",
                           policy={"use_power_limits": False}, guards={"ramp_w_per_min": 1e6},
                           extra=extra)
        before = emu._call("GET", "/meter")["power_w"]
        assert before > 12000
        with DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
            wait_for(lambda: states(emu)["127.183.2.1"] == "sleeping" or None, 60,
                     what="the S19 shed")
            wait_for(lambda: emu._call("GET", "/meter")["power_w"] < 11000 or None, 30,
                     what="the meter under the cap")
            time.sleep(2.0)
            assert states(emu) == {"127.183.2.1": "sleeping", "127.183.2.2": "mining",
                                   "127.183.2.3": "mining"}  # no more than needed
            status = json.loads((tmp_path / "state" / "status.json").read_text())
            assert status["site"]["power_source"] == "meter"
            assert abs(status["site"]["power_w"] - emu._call("GET", "/meter")["power_w"]) < 500
            assert daemon.stop() == 0
