"""Hard power-down under the real daemon: a lying Antminer escalated from its firmware sleep
to its outlet after its grace, and a kill -9 between the journaled intent and the SNMP SET
that leaves no outlet off and owned by nobody (issue 18).

Addresses: 127.185.0.0/16 (issue 18's block).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, journal_rows, wait_for, write_config
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

PDU = "127.185.0.50"
LIAR, HONEST = "127.185.1.1", "127.185.1.2"
FLEET = f"""
[[pdu]]
address = "{PDU}"
mib = "raritan"
outlets = 4
community = "public"
write_community = "private"

[[miner]]
model = "S19j Pro"
ip = "{LIAR}"
fault = "ignore_sleep"
pdu = "{PDU}"
outlet = 1
[[miner]]
model = "S19j Pro"
ip = "{HONEST}"
pdu = "{PDU}"
outlet = 2
"""


class Toml:
    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def config(tmp: Path, *, write_community: str = "private", timeout_s: float = 1.0) -> Path:
    (tmp / "ro").write_text("public\n")
    (tmp / "rw").write_text(write_community + "\n")
    (tmp / "map.csv").write_text(f"id,rack,pdu,outlet\n{LIAR},R1,{PDU},1\n{HONEST},R1,{PDU},2\n")
    extra = f"""
[[pdu]]
address = "{PDU}"
mib = "raritan"
version = "v2c"
community_file = "ro"
write_community_file = "rw"
timeout_s = {timeout_s}
retries = 1

[inventory]
file = "map.csv"

[hard_power]
enabled = true
racks = ["R1"]
min_off_s = 0
"""
    return write_config(tmp / "config.toml", ranges=[f"{LIAR}-{HONEST}"], hashprice=0.05,
                        tariff=0.5, state_dir=tmp / "state",
                        policy={"use_power_limits": False},
                        guards={"ramp_w_per_min": 1e6,
                                "confirm_grace_s": Toml("{ antminer = 3 }")},
                        controller={"flag_after_failures": 1}, extra=extra)


def outlet(emu: EmulatorProcess, n: int) -> str:
    return emu._call("GET", "/pdus")[0]["outlets"][n - 1]["state"]


def test_a_lying_antminer_is_escalated_from_sleep_to_its_outlet(tmp_path: Path) -> None:
    with EmulatorProcess(fleet_toml=FLEET, first_ip=LIAR, time_scale=0.01) as emu:
        with DaemonProcess(config(tmp_path), tmp_path / "daemon.log") as daemon:
            wait_for(lambda: emu.miner(HONEST)["state"] == "sleeping" or None, 60,
                     what="the honest machine asleep by firmware")
            # the liar got its firmware sleep first (never cut before it)
            wait_for(lambda: any(c[1] == "sleep" and c[2] == "client"
                                 for c in emu.miner(LIAR)["changes"]) or None, 30,
                     what="a firmware sleep sent to the liar")
            assert outlet(emu, 1) == "on"
            wait_for(lambda: outlet(emu, 1) == "off" or None, 90,
                     what="the liar's outlet switched off after its grace")
            assert emu.miner(LIAR)["state"] == "off"
            first_sleep = min(c[0] for c in emu.miner(LIAR)["changes"]
                              if c[1] == "sleep" and c[2] == "client")
            cut = journal_rows(tmp_path / "state", "SELECT at, detail FROM outlet_events "
                               "WHERE outlet=1 AND action='off' AND result='intent'")
            assert cut and cut[0][0] > first_sleep
            assert "ignored its firmware sleep" in cut[0][1]
            assert outlet(emu, 2) == "on"  # the honest machine sleeps; its outlet stays on

            def liar_row():  # the next tick's poll of the dark machine waits its deadline
                status = json.loads((tmp_path / "state" / "status.json").read_text())
                row = next(m for m in status["miners"] if m["ip"] == LIAR)
                return row if row["state"] == "sleeping" else None

            liar = wait_for(liar_row, 30, what="the liar read as asleep behind its outlet")
            assert liar["power_source"] == "pdu" and "off by curtaild" in liar["held"]
            time.sleep(2.0)
            assert outlet(emu, 1) == "off"  # kept off while it still loses money
            assert daemon.stop() == 0


def test_kill9_between_intent_and_switch_leaves_no_outlet_owned_by_nobody(
        tmp_path: Path) -> None:
    fleet = FLEET.replace('fault = "ignore_sleep"\n', "").replace(
        'model = "S19j Pro"\nip = "127.185.1.1"', 'model = "BitAxe Gamma"\nip = "127.185.1.1"')
    with EmulatorProcess(fleet_toml=fleet, first_ip=LIAR, time_scale=0.01) as emu:
        # a wrong write community: the SET is never answered, so the daemon sits between its
        # journaled intent and the switch for the whole deadline -- and is killed there
        cfg = config(tmp_path, write_community="wrong", timeout_s=3.0)
        daemon = DaemonProcess(cfg, tmp_path / "daemon.log").start()
        try:
            def intent() -> list | None:
                try:
                    return journal_rows(tmp_path / "state", "SELECT 1 FROM outlet_events "
                                        "WHERE action='off' AND result='intent'") or None
                except sqlite3.OperationalError:  # not created yet
                    return None

            wait_for(intent, 60, interval=0.1, what="an outlet-off intent journaled")
            daemon.kill9()
        finally:
            if daemon.alive():
                daemon.stop()
        assert outlet(emu, 1) == "on"  # the SET never happened
        rows = journal_rows(tmp_path / "state", "SELECT pdu, outlet, state FROM outlets")
        assert rows == [(PDU, 1, "off_intent")]  # the crash left the intent, nothing else
        # restart with the right community: the intent is settled against the PDU (seen on:
        # it never happened), then the outlet is switched off for good, and owned
        cfg = config(tmp_path)
        with DaemonProcess(cfg, tmp_path / "daemon2.log") as daemon2:
            wait_for(lambda: outlet(emu, 1) == "off" or None, 60, what="outlet 1 off")
            wait_for(lambda: journal_rows(tmp_path / "state", "SELECT state FROM outlets")
                     == [("off",)] or None, 30, what="outlet 1 owned")
            # the operator switches outlet 3 off at the panel: never curtaild's
            emu._call("POST", f"/pdus/{PDU}/outlets/3", {"on": False})
            time.sleep(3.0)
            assert outlet(emu, 3) == "off"
            assert journal_rows(tmp_path / "state", "SELECT pdu, outlet FROM outlets") == [
                (PDU, 1)]
            assert daemon2.stop() == 0
        events = [r[0] for r in journal_rows(tmp_path / "state", "SELECT result FROM "
                                             "outlet_events WHERE outlet=1 ORDER BY id")]
        assert events[0] == "intent" and "ok" in events


def test_a_hung_pdu_and_meter_cost_their_deadline_and_switch_nothing(tmp_path: Path) -> None:
    """A PDU whose agent never answers and a meter that accepts and never replies: every
    tick still completes (bounded by their deadlines), the power source falls back to the
    machines' own figures, and nothing is switched on an unknown outlet state."""
    import socket

    hung_pdu = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hung_pdu.bind(("127.185.2.50", 161))
    hung_meter = socket.socket()
    hung_meter.bind(("127.185.2.60", 0))
    hung_meter.listen()
    axe = "127.185.2.1"
    try:
        with EmulatorProcess(fleet_toml=f'[[miner]]\nmodel = "BitAxe Gamma"\nip = "{axe}"\n',
                             first_ip=axe, time_scale=0.01) as emu:
            (tmp_path / "ro").write_text("public\n")
            (tmp_path / "map.csv").write_text(f"id,rack,pdu,outlet\n{axe},R1,127.185.2.50,1\n")
            extra = f"""
[[pdu]]
address = "127.185.2.50"
mib = "apc"
outlets = 4
version = "v2c"
community_file = "ro"
timeout_s = 0.5
retries = 1

[meter]
address = "127.185.2.60"
port = {hung_meter.getsockname()[1]}
timeout_s = 0.5

[inventory]
file = "map.csv"

[hard_power]
enabled = true
racks = ["R1"]
"""
            cfg = write_config(tmp_path / "config.toml", ranges=[f"{axe}-{axe}"], hashprice=0.05,
                               tariff=0.5, state_dir=tmp_path / "state", extra=extra)
            with DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
                def status() -> dict | None:
                    try:
                        return json.loads((tmp_path / "state" / "status.json").read_text())
                    except (OSError, ValueError):
                        return None

                first = wait_for(status, 30, what="a first tick")
                time.sleep(6.0)
                later = status()
                assert later is not None and later["at"] - first["at"] >= 3.0  # ticks go on
                assert later["duration_s"] < 5.0  # deadline 0.5 x 2 + 1 s, not a stall
                site = later["site"]
                assert site["power_source"] == "estimate"
                assert site["pdus"][0]["error"] and site["meter"]["error"]
                assert site["outlet_actions"] == []
                assert emu.miner(axe)["state"] == "mining"  # nothing switched, no crash
                assert daemon.alive() and daemon.stop() == 0
    finally:
        hung_pdu.close()
        hung_meter.close()
