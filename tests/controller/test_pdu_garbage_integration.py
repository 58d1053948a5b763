"""A PDU agent and a meter that answer garbage, under the real `curtaild run` (issue 18).

Whatever comes back -- bytes that are not SNMP, a Modbus reply that is not one -- is a reading
error within the device's deadline: ticks go on, site power falls back to the machines' own
figures, and no outlet is switched on a state nobody read, though the tier would cut the
opted-in Bitaxe (it loses money) if it trusted a reading. (The hung case is
tests/controller/test_hard_power_escalation_integration.py.)

Addresses: 127.186.0.0/16 (this helper's block of issue 18's range).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, wait_for, write_config
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

AXE, PDU, METER = "127.186.2.1", "127.186.2.50", "127.186.2.60"


class Garbage:
    """A UDP 'SNMP agent' on PDU:161 and a TCP 'Modbus meter' on METER that answer every
    request with bytes that look like the start of a reply and are not one."""

    def __init__(self) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((PDU, 161))
        self.udp.settimeout(0.2)
        self.tcp = socket.socket()
        self.tcp.bind((METER, 0))
        self.tcp.listen()
        self.tcp.settimeout(0.2)
        self.snmp_seen = self.modbus_seen = 0
        self.stop = False
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._snmp,
                                                                           self._modbus)]
        for t in self.threads:
            t.start()

    @property
    def meter_port(self) -> int:
        return self.tcp.getsockname()[1]

    def _snmp(self) -> None:
        while not self.stop:
            try:
                _data, peer = self.udp.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.snmp_seen += 1
            # a SEQUENCE header, a version, then nothing that parses
            self.udp.sendto(b"\x30\x29\x02\x01\x01\x04\x06public\xa2" + bytes(range(30)), peer)

    def _modbus(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(0.5)
            try:
                while not self.stop:
                    request = conn.recv(260)
                    if not request:
                        break
                    self.modbus_seen += 1
                    # the request's transaction id, then a length that lies and junk
                    conn.sendall(request[:2] + b"\x00\x00\x00\xff\x01\x03\xfe" + b"\xee" * 9)
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self.stop = True
        for t in self.threads:
            t.join(2)
        self.udp.close()
        self.tcp.close()


def test_garbage_from_a_pdu_and_a_meter_switches_nothing_and_stalls_nothing(
        tmp_path: Path) -> None:
    garbage = Garbage()
    try:
        with EmulatorProcess(fleet_toml=f'[[miner]]\nmodel = "BitAxe Gamma"\nip = "{AXE}"\n',
                             first_ip=AXE, time_scale=0.01) as emu:
            (tmp_path / "ro").write_text("public\n")
            (tmp_path / "map.csv").write_text(f"id,rack,pdu,outlet,phase\n{AXE},R1,{PDU},1,L1\n")
            extra = f"""
[[pdu]]
address = "{PDU}"
mib = "apc"
outlets = 4
version = "v2c"
community_file = "ro"
timeout_s = 0.5
retries = 1

[meter]
address = "{METER}"
port = {garbage.meter_port}
timeout_s = 0.5

[inventory]
file = "map.csv"

[hard_power]
enabled = true
racks = ["R1"]
min_off_s = 0
"""
            # 0.05 USD/TH/day at 0.5 USD/kWh: the Bitaxe loses money, the tier wants it off
            cfg = write_config(tmp_path / "config.toml", ranges=[f"{AXE}-{AXE}"],
                               hashprice=0.05, tariff=0.5, state_dir=tmp_path / "state",
                               extra=extra)
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
                assert later["duration_s"] < 5.0  # the deadlines, not a stall
                site = later["site"]
                assert site["power_source"] == "estimate"
                assert site["pdus"][0]["error"] and site["meter"]["error"]
                assert site["outlet_actions"] == [] and site["owned_outlets"] == []
                me = next(m for m in later["miners"] if m["ip"] == AXE)
                assert me["desired"] == "sleep"  # the tier would cut it, on a known state
                assert emu.miner(AXE)["state"] == "mining"  # nothing switched
                assert garbage.snmp_seen >= 2 and garbage.modbus_seen >= 1
                assert daemon.alive() and daemon.stop() == 0
                assert "Traceback" not in daemon.log()
    finally:
        garbage.close()
