"""Switched rack PDUs over SNMP: one small interface, one implementation per MIB.

A driver reads every outlet's on/off state and, where the PDU meters outlets, its power; and
switches one outlet off or on. It decides nothing (controller/outlets.py does) and never
raises into the loop for a PDU's fault: a read returns a :class:`PduReading` with ``error``
set (stale, garbage, timeout, refused), a switch raises :class:`PduError` with the reason.
Every call has a deadline (``timeout_s`` x tries, plus a second): a PDU that hangs costs the
tick that, never more.

Implementations: :mod:`drivers.pdu.apc` (PowerNet-MIB) and :mod:`drivers.pdu.raritan`
(PDU2-MIB), both over :mod:`drivers.pdu.snmp` (pysnmp 7, asyncio; v3 authPriv or v2c).
"""

from __future__ import annotations

from dataclasses import dataclass, field


class PduError(Exception):
    """A PDU operation that did not happen (or is not known to have happened)."""


@dataclass(frozen=True, slots=True)
class OutletReading:
    number: int
    on: bool | None  # None: the PDU did not say (unknown state, garbage)
    power_w: float | None = None  # None: not metered or not read
    current_a: float | None = None


@dataclass(frozen=True, slots=True)
class PduReading:
    """One read of one PDU: its outlets, when, and what went wrong (None: nothing)."""

    key: str  # the PDU's name, else its address
    address: str
    mib: str
    outlets: dict[int, OutletReading] = field(default_factory=dict)
    taken_at: float = 0.0
    error: str | None = None
    duration_s: float = 0.0

    @property
    def power_w(self) -> float | None:
        """Sum of the metered outlets, None when none is metered."""
        values = [o.power_w for o in self.outlets.values() if o.power_w is not None]
        return sum(values) if values else None
