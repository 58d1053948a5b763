"""drivers/pdu (APC, Raritan over pysnmp 7) and drivers/meter (pymodbus) against the real
emulator process, and against agents that hang or answer garbage: a reading with an error
within its deadline, never an exception into the loop, never a wrong switch.

Addresses: 127.182.0.0/16 (issue 18's block).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from curtaild.drivers.meter import SunSpecMeter
from curtaild.drivers.pdu import PduError
from curtaild.drivers.pdu.apc import ApcPdu
from curtaild.drivers.pdu.raritan import RaritanPdu
from curtaild.drivers.pdu.snmp import SnmpCredentials, SnmpSession
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

APC, RARITAN, METER = "127.182.0.50", "127.182.0.51", "127.182.0.60"
FLEET = f"""
[[pdu]]
address = "{APC}"
mib = "apc"
outlets = 4
[[pdu]]
address = "{RARITAN}"
mib = "raritan"
outlets = 2
user = "curtaild"
auth_key = "auth-secret-2"
priv_key = "priv-secret-2"
[meter]
address = "{METER}"
port = 1502
overhead_w = 800
[[miner]]
model = "BitAxe Gamma"
count = 2
pdu = "{APC}"
outlet = 1
per_outlet = 2
[[miner]]
model = "S19j Pro"
pdu = "{APC}"
outlet = 2
[[miner]]
model = "S19j Pro"
pdu = "{RARITAN}"
outlet = 2
"""
AXE1, AXE2, S1, S2 = (f"127.182.1.{i}" for i in range(1, 5))


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(fleet_toml=FLEET, first_ip=AXE1, time_scale=0.01) as e:
        yield e


def apc(address: str = APC, timeout_s: float = 1.0, community: str = "public") -> ApcPdu:
    return ApcPdu(address, SnmpSession(address, 161, SnmpCredentials.v2c(community, "private"),
                                       timeout_s=timeout_s, retries=0), None)


def raritan(auth_key: str = "auth-secret-2") -> RaritanPdu:
    creds = SnmpCredentials.v3("curtaild", auth_key, "priv-secret-2")
    return RaritanPdu("rack-b", SnmpSession(RARITAN, 161, creds, timeout_s=1.0, retries=0),
                      None)


def truth_outlet(emu: EmulatorProcess, address: str, n: int) -> dict:
    pdu = next(p for p in emu._call("GET", "/pdus") if p["address"] == address)
    return pdu["outlets"][n - 1]


async def test_apc_reads_state_and_power_and_switches(emu: EmulatorProcess) -> None:
    driver = apc()
    r = await driver.read()
    assert r.error is None and driver.outlets == 4  # sPDUOutletControlTableSize
    assert [r.outlets[i].on for i in (1, 2, 3, 4)] == [True, True, True, True]
    assert abs(r.outlets[2].power_w - truth_outlet(emu, APC, 2)["power_w"]) < 300
    assert r.outlets[2].current_a == pytest.approx(r.outlets[2].power_w / 230, abs=0.2)
    assert r.outlets[4].power_w == 0.0  # nothing plugged in
    await driver.switch(1, False)
    assert {emu.miner(AXE1)["state"], emu.miner(AXE2)["state"]} == {"off"}
    r = await driver.read()
    assert r.outlets[1].on is False and r.outlets[1].power_w == 0.0
    await driver.switch(1, True)
    assert truth_outlet(emu, APC, 1)["state"] == "on"


async def test_raritan_v3_reads_scaled_power_and_switches(emu: EmulatorProcess) -> None:
    driver = raritan()
    r = await driver.read()
    assert r.error is None and driver.outlets == 2
    assert r.outlets[2].on is True and r.outlets[1].power_w == 0.0
    assert abs(r.outlets[2].power_w - truth_outlet(emu, RARITAN, 2)["power_w"]) < 300
    await driver.switch(2, False)
    assert emu.miner(S2)["state"] == "off"
    assert (await driver.read()).outlets[2].on is False
    await driver.switch(2, True)


async def test_wrong_credentials_are_a_reading_error_and_a_refused_switch(
        emu: EmulatorProcess) -> None:
    r = await raritan(auth_key="wrong-key-9").read()
    assert r.error and not r.outlets
    with pytest.raises(PduError):
        await raritan(auth_key="wrong-key-9").switch(2, False)
    assert truth_outlet(emu, RARITAN, 2)["state"] == "on"
    # the read community cannot switch: the agent says authorizationError
    ro = ApcPdu(APC, SnmpSession(APC, 161, SnmpCredentials.v2c("public", None), timeout_s=1.0,
                                 retries=0), 4)
    with pytest.raises(PduError, match="authorizationError"):
        await ro.switch(2, False)
    assert truth_outlet(emu, APC, 2)["state"] == "on"


class _Udp:
    """A UDP 'agent' on 127.182.9.x:161 that never answers, or answers garbage."""

    def __init__(self, address: str, garbage: bool) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 161))
        self.sock.settimeout(0.2)
        self.garbage, self.seen, self.stop = garbage, 0, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            try:
                _data, peer = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.seen += 1
            if self.garbage:
                self.sock.sendto(b"\x30\x03\x02\x01" + bytes(range(40)), peer)

    def close(self) -> None:
        self.stop = True
        self.thread.join(2)
        self.sock.close()


@pytest.mark.parametrize("garbage", [False, True])
async def test_hung_or_garbage_agent_is_an_error_within_the_deadline(garbage: bool) -> None:
    agent = _Udp("127.182.9.1" if garbage else "127.182.9.2", garbage)
    try:
        driver = apc(agent.sock.getsockname()[0], timeout_s=0.5)
        started = time.monotonic()
        r = await driver.read()
        assert r.error and not r.outlets
        with pytest.raises(PduError):
            await driver.switch(1, False)
        assert time.monotonic() - started < 2 * (driver.session.deadline_s + 0.5)
        assert agent.seen >= 1
    finally:
        agent.close()


async def test_meter_reads_total_and_phases(emu: EmulatorProcess) -> None:
    meter = SunSpecMeter(METER, 1502, timeout_s=1.0)
    try:
        r = await meter.read()
        truth = emu._call("GET", "/meter")
        assert r.error is None and r.model == 213
        assert abs(r.power_w - truth["power_w"]) < 100
        assert sum(r.phases_w.values()) == pytest.approx(r.power_w, abs=1.0)
        again = await meter.read()  # the layout is kept: one read of 8 registers
        assert again.error is None
    finally:
        meter.close()


async def test_meter_down_or_hung_is_an_error_not_an_exception() -> None:
    r = await SunSpecMeter("127.182.9.3", 1502, timeout_s=0.3).read()  # nothing listens
    assert r.power_w is None and r.error
    server = socket.socket()
    server.bind(("127.182.9.4", 0))
    server.listen()  # accepts, never answers
    try:
        started = time.monotonic()
        r = await SunSpecMeter("127.182.9.4", server.getsockname()[1], timeout_s=0.3).read()
        assert r.power_w is None and r.error and time.monotonic() - started < 2.0
    finally:
        server.close()
        await asyncio.sleep(0)
