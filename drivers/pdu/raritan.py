"""Raritan PX PDUs (PDU2-MIB), PDU ``pduId`` 1.

State: ``outletSwitchingState`` (13742.6.4.1.2.1.3.1.N; SensorStateEnumeration 7 on, 8 off);
switching: ``switchingOperation`` (.2.1.N; write 0 off, 1 on). Power and current:
``measurementsOutletSensorValue`` (13742.6.5.4.3.1.4.1.N.T, T = 5 activePower, 1 rmsCurrent)
scaled by ``outletSensorDecimalDigits`` (13742.6.3.5.4.1.7.1.N.T), read once. The outlet count
is ``outletCount`` (13742.6.3.2.2.1.4.1). OIDs from the vendor's MIB: emulator/pdu/mibs.py.
"""

from __future__ import annotations

import time
from dataclasses import replace

from curtaild.drivers.pdu import OutletReading, PduError, PduReading
from curtaild.drivers.pdu.snmp import SnmpSession, as_int

BASE = "1.3.6.1.4.1.13742.6"
OUTLET_COUNT = f"{BASE}.3.2.2.1.4.1"
OPERATION = f"{BASE}.4.1.2.1.2.1"
STATE = f"{BASE}.4.1.2.1.3.1"
VALUE = f"{BASE}.5.4.3.1.4.1"
DIGITS = f"{BASE}.3.5.4.1.7.1"
ON, OFF = 7, 8
ACTIVE_POWER, RMS_CURRENT = 5, 1


class RaritanPdu:
    mib = "raritan"

    def __init__(self, key: str, session: SnmpSession, outlets: int | None) -> None:
        self.key, self.session, self.outlets = key, session, outlets
        self._digits: dict[tuple[int, int], int] | None = None

    async def _count(self) -> int:
        if self.outlets is None:
            got = await self.session.get([OUTLET_COUNT])
            n = as_int(got.get(OUTLET_COUNT))
            if n is None or not 0 < n <= 96:
                raise PduError(f"outletCount: not an outlet count ({n!r})")
            self.outlets = n
        return self.outlets

    async def _scales(self, n: int) -> dict[tuple[int, int], int]:
        if self._digits is None:
            oids = [f"{DIGITS}.{i}.{t}" for i in range(1, n + 1)
                    for t in (ACTIVE_POWER, RMS_CURRENT)]
            got = await self.session.get(oids)
            self._digits = {}
            for i in range(1, n + 1):
                for t in (ACTIVE_POWER, RMS_CURRENT):
                    d = as_int(got.get(f"{DIGITS}.{i}.{t}"))
                    if d is not None and 0 <= d <= 6:
                        self._digits[(i, t)] = d
        return self._digits

    async def read(self) -> PduReading:
        started = time.monotonic()
        base = PduReading(self.key, self.session.address, self.mib, taken_at=time.time())
        try:
            n = await self._count()
            digits = await self._scales(n)
            oids = [f"{STATE}.{i}" for i in range(1, n + 1)]
            oids += [f"{VALUE}.{i}.{t}" for i in range(1, n + 1)
                     for t in (ACTIVE_POWER, RMS_CURRENT)]
            got = await self.session.get(oids)
        except PduError as exc:
            return replace(base, error=str(exc), duration_s=time.monotonic() - started)
        outlets: dict[int, OutletReading] = {}
        garbage = 0
        for i in range(1, n + 1):
            state = as_int(got.get(f"{STATE}.{i}"))
            on = True if state == ON else False if state == OFF else None
            garbage += on is None

            def value(t: int, i: int = i) -> float | None:
                raw = as_int(got.get(f"{VALUE}.{i}.{t}"))
                d = digits.get((i, t))
                return None if raw is None or d is None else raw / 10 ** d

            outlets[i] = OutletReading(i, on, value(ACTIVE_POWER), value(RMS_CURRENT))
        error = f"{garbage} of {n} outlets in no known state" if garbage else None
        return replace(base, outlets=outlets, error=error, duration_s=time.monotonic() - started)

    async def switch(self, outlet: int, on: bool) -> None:
        await self.session.set_int(f"{OPERATION}.{outlet}", 1 if on else 0)
