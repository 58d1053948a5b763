"""The site's part of the control API: ``GET /pdus``, ``GET /meter`` and operator switching.

Endpoints (JSON, as the rest of emulator/control.py)::

    GET  /pdus                           [{address, port, mib, name, phase, power_w,
                                           outlets: [{number, state: on|off, power_w,
                                                      miners: [ip, ...]}, ...]}, ...]
    GET  /pdus/{address}                 one of those
    POST /pdus/{address}/outlets/{n}     {"on": false|true}: an operator switches the outlet
                                           at the PDU's own panel (not over SNMP)
    GET  /meter                          {address, port, map, unit_id, power_w, phases_w,
                                           overhead_w, noise_w, reads}
"""

from __future__ import annotations

import json

from curtaild.emulator.families.base import HttpRequest, HttpResponse
from curtaild.emulator.meter import EmulatedMeter
from curtaild.emulator.pdu.agent import PduAgent
from curtaild.emulator.pdu.model import EmulatedPdu


def _error(status: int, message: str) -> HttpResponse:
    return HttpResponse.json({"error": message}, status)


class SiteRuntime:
    """The running PDUs (their SNMP agent) and meter of one emulator process."""

    def __init__(self, pdus: list[EmulatedPdu], meter: EmulatedMeter | None) -> None:
        self.pdus = {p.address: p for p in pdus}
        self.meter = meter
        self.agent = PduAgent(pdus) if pdus else None

    async def start(self) -> None:
        """Bind the SNMP agent and the meter (OSError naming the address on failure)."""
        if self.agent is not None:
            self.agent.start()
        if self.meter is not None:
            try:
                await self.meter.start()
            except OSError:
                if self.agent is not None:
                    self.agent.close()
                raise

    async def close(self) -> None:
        if self.agent is not None:
            self.agent.close()
        if self.meter is not None:
            await self.meter.close()

    def summary(self) -> list[str]:
        """Lines printed at start after ``families:``."""
        out = []
        if self.pdus:
            mibs: dict[str, int] = {}
            for p in self.pdus.values():
                mibs[p.mib] = mibs.get(p.mib, 0) + 1
            out.append(f"pdus: {len(self.pdus)} "
                       + " ".join(f"{k}={v}" for k, v in sorted(mibs.items())))
        if self.meter is not None:
            out.append(f"meter: {self.meter.address}:{self.meter.port}")
        return out

    def handle(self, req: HttpRequest, parts: list[str]) -> HttpResponse:
        if parts == ["meter"]:
            if req.method not in ("GET", "HEAD"):
                return _error(405, "/meter accepts GET only")
            if self.meter is None:
                return _error(404, "this fleet has no meter")
            return HttpResponse.json(self.meter.view())
        if parts == ["pdus"]:
            if req.method not in ("GET", "HEAD"):
                return _error(405, "/pdus accepts GET only")
            return HttpResponse.json([p.view() for p in self.pdus.values()])
        pdu = self.pdus.get(parts[1]) if len(parts) > 1 else None
        if pdu is None:
            return _error(404, f"no emulated PDU at {parts[1] if len(parts) > 1 else ''}")
        if len(parts) == 2:
            return HttpResponse.json(pdu.view())
        if len(parts) == 4 and parts[2] == "outlets":
            if req.method != "POST":
                return _error(405, f"{req.path} accepts POST only")
            try:
                number = int(parts[3])
                data = json.loads(req.body or b"")
            except ValueError:
                return _error(400, "outlet must be a number and the body a JSON object")
            on = data.get("on") if isinstance(data, dict) else None
            if not isinstance(on, bool):
                return _error(400, f"'on' must be true or false; got {on!r}")
            if not pdu.switch(number, on, by="operator"):
                return _error(404, f"PDU {pdu.address} has no outlet {number}")
            return HttpResponse.json(pdu.view())
        return _error(404, f"no such endpoint {req.method} {req.path}")
