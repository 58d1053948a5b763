"""APC/Schneider switched rack PDUs (PowerNet-MIB).

State and switching use ``sPDUOutletCtl`` (318.1.1.4.4.2.1.3.N: read 1 on / 2 off / 4 unknown;
write 1 on, 2 off), which every APC switched PDU generation answers; power comes from
``rPDU2OutletMeteredStatusPower`` (318.1.1.26.9.4.3.1.7.N, W) and current from
``rPDU2OutletMeteredStatusCurrent`` (.6.N, tenths of A) on outlet-metered (rPDU2) models; a
PDU without them reads as unmetered. OIDs from the vendor's MIB: emulator/pdu/mibs.py.
"""

from __future__ import annotations

import time

from curtaild.drivers.pdu import OutletReading, PduError, PduReading
from curtaild.drivers.pdu.snmp import SnmpSession, as_int

CTL = "1.3.6.1.4.1.318.1.1.4.4.2.1.3"
CTL_SIZE = "1.3.6.1.4.1.318.1.1.4.4.1.0"
POWER = "1.3.6.1.4.1.318.1.1.26.9.4.3.1.7"
CURRENT = "1.3.6.1.4.1.318.1.1.26.9.4.3.1.6"
ON, OFF = 1, 2


class ApcPdu:
    mib = "apc"

    def __init__(self, key: str, session: SnmpSession, outlets: int | None) -> None:
        self.key, self.session, self.outlets = key, session, outlets

    async def _count(self) -> int:
        if self.outlets is None:
            got = await self.session.get([CTL_SIZE])
            n = as_int(got.get(CTL_SIZE))
            if n is None or not 0 < n <= 96:
                raise PduError(f"sPDUOutletControlTableSize: not an outlet count ({n!r})")
            self.outlets = n
        return self.outlets

    async def read(self) -> PduReading:
        started = time.monotonic()
        base = PduReading(self.key, self.session.address, self.mib, taken_at=time.time())
        try:
            n = await self._count()
            oids = [f"{col}.{i}" for i in range(1, n + 1) for col in (CTL, POWER, CURRENT)]
            got = await self.session.get(oids)
        except PduError as exc:
            return _with(base, error=str(exc), duration_s=time.monotonic() - started)
        outlets: dict[int, OutletReading] = {}
        garbage = 0
        for i in range(1, n + 1):
            state = as_int(got.get(f"{CTL}.{i}"))
            on = True if state == ON else False if state == OFF else None
            if on is None:
                garbage += 1
            power = as_int(got.get(f"{POWER}.{i}"))
            current = as_int(got.get(f"{CURRENT}.{i}"))
            outlets[i] = OutletReading(
                i, on, float(power) if power is not None and power >= 0 else None,
                current / 10.0 if current is not None and current >= 0 else None)
        error = f"{garbage} of {n} outlets in no known state" if garbage else None
        return _with(base, outlets=outlets, error=error, duration_s=time.monotonic() - started)

    async def switch(self, outlet: int, on: bool) -> None:
        await self.session.set_int(f"{CTL}.{outlet}", ON if on else OFF)


def _with(r: PduReading, **kw) -> PduReading:
    from dataclasses import replace

    return replace(r, **kw)
