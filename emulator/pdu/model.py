"""What an emulated PDU is: numbered outlets, each on or off, each feeding some miners.

Switching an outlet is a physical act on the miners behind it: off cuts their mains power
(they stop answering, like ``POST /miners/{ip}/power {"on": false}``), on restores it (they
boot into what their firmware stored). An outlet's power is the sum of what its miners draw
now (0 W while off); its current is that power over the PDU's nominal voltage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from curtaild.emulator.physics import EmulatedMiner

#: Nominal outlet voltage for the current figures (a 208/230 V rack PDU feeding miners).
NOMINAL_V = 230.0
MIBS = ("apc", "raritan")


@dataclass(slots=True)
class Outlet:
    number: int  # 1-based, as on the PDU's label and in both MIBs
    on: bool = True
    miners: list[EmulatedMiner] = field(default_factory=list)
    switched_at: float = 0.0  # unix seconds of the last switch (Raritan's timestamp)
    energy_wh: float = 0.0  # integrated at each read (APC's tenths of kWh)
    _energy_at: float = 0.0

    def power_w(self) -> float:
        if not self.on:
            return 0.0
        return sum(m.read().power_w for m in self.miners)

    def current_a(self) -> float:
        return self.power_w() / NOMINAL_V

    def energy_tick(self) -> float:
        now = time.monotonic()
        if self._energy_at:
            self.energy_wh += self.power_w() * (now - self._energy_at) / 3600.0
        self._energy_at = now
        return self.energy_wh


@dataclass(slots=True)
class EmulatedPdu:
    """One switched, outlet-metered rack PDU."""

    address: str
    mib: str  # "apc" | "raritan"
    outlets: list[Outlet]
    port: int = 161
    name: str = ""
    phase: str | None = None  # "L1" | "L2" | "L3": which phase feeds it (meter per phase)
    #: v2c communities (None: v2c off); write may equal read
    read_community: str | None = "public"
    write_community: str | None = "private"
    #: v3 USM user: (name, auth key, priv key) with SHA and AES-128; None: v3 off
    v3_user: tuple[str, str, str] | None = None
    #: called after an outlet switch with the miner, so listeners follow (server.py)
    on_switch: Callable[[EmulatedMiner], None] | None = None
    switches: list[tuple[float, int, bool, str]] = field(default_factory=list)

    def outlet(self, number: int) -> Outlet | None:
        if 1 <= number <= len(self.outlets):
            return self.outlets[number - 1]
        return None

    def switch(self, number: int, on: bool, *, by: str = "snmp") -> bool:
        """Switch one outlet (idempotent); False if there is no such outlet."""
        outlet = self.outlet(number)
        if outlet is None:
            return False
        self.switches.append((time.time(), number, on, by))
        if outlet.on == on:
            return True
        outlet.energy_tick()
        outlet.on = on
        outlet.switched_at = time.time()
        for miner in outlet.miners:
            miner.actor = "pdu"
            try:
                if on and miner.state == "off":
                    miner.restore_power()
                elif not on and miner.state != "off":
                    miner.cut_power()
            finally:
                miner.actor = "client"
            if self.on_switch is not None:
                self.on_switch(miner)
        return True

    def reboot(self, number: int) -> bool:
        """Off then on at once (both MIBs' reboot/cycle; real PDUs wait a few seconds)."""
        return self.switch(number, False) and self.switch(number, True)

    def power_w(self) -> float:
        return sum(o.power_w() for o in self.outlets)

    def view(self) -> dict:
        """``GET /pdus`` entry: address, mib and each outlet's state, power and miners."""
        return {
            "address": self.address,
            "port": self.port,
            "mib": self.mib,
            "name": self.name,
            "phase": self.phase,
            "power_w": round(self.power_w(), 1),
            "outlets": [{"number": o.number, "state": "on" if o.on else "off",
                         "power_w": round(o.power_w(), 1),
                         "miners": [m.ip for m in o.miners]} for o in self.outlets],
        }
