"""The MIB objects each emulated PDU serves, with the vendors' real OIDs.

OIDs are transcribed from the vendors' MIB files (not invented): APC's PowerNet-MIB (the 2023
text, "Copyright (c) 2023 American Power Conversion") and Raritan's PDU2-MIB (LAST-UPDATED
202209210000Z), as published in the public MIB collections (e.g. ``mibs/apc/PowerNet-MIB`` and
``mibs/raritan/PDU2-MIB`` in LibreNMS). Each object below names its MIB definition.

APC (enterprise 318; ``hardware`` = 318.1.1):

- ``sPDUOutletControlTableSize`` 318.1.1.4.4.1.0 and ``sPDUOutletControlEntry``
  318.1.1.4.4.2.1.{1 Index, 2 Pending, 3 sPDUOutletCtl, 4 sPDUOutletCtlName}.N --
  ``sPDUOutletCtl``: read 1 outletOn / 2 outletOff; write 1 on, 2 off, 3 reboot.
- ``rPDU2OutletSwitchedStatusEntry`` 318.1.1.26.9.2.3.1.{1 Index, 3 Name, 4 Number,
  5 State (1 off, 2 on), 6 CommandPending}.N and ``rPDU2OutletSwitchedControlEntry``
  318.1.1.26.9.2.4.1.{1 Index, 3 Name, 4 Number, 5 Command (1 immediateOn, 2 immediateOff,
  3 immediateReboot)}.N; ``rPDU2OutletSwitchedTableSize`` 318.1.1.26.9.1.0.
- ``rPDU2OutletMeteredStatusEntry`` 318.1.1.26.9.4.3.1.{1 Index, 2 Module, 3 Name, 4 Number,
  5 State, 6 Current (tenths of A), 7 Power (W), 8 PeakPower (W), 11 Energy (tenths of kWh)}.N;
  ``rPDU2OutletMeteredTableSize`` 318.1.1.26.9.3.0.
- ``rPDU2DeviceStatusPower`` 318.1.1.26.4.3.1.5.1 (hundredths of kW).

Raritan (enterprise 13742; ``pdu2`` = 13742.6; one PDU, ``pduId`` 1):

- ``outletCount`` 13742.6.3.2.2.1.4.1 (``unitConfigurationEntry`` 4).
- ``outletSwitchControlEntry`` 13742.6.4.1.2.1.{2 switchingOperation (write 0 off, 1 on,
  2 cycle), 3 outletSwitchingState (SensorStateEnumeration: 7 on, 8 off), 4
  outletSwitchingTimeStamp}.1.N.
- ``outletSensorConfigurationEntry`` 13742.6.3.5.4.1.7.1.N.T ``outletSensorDecimalDigits``.
- ``outletSensorMeasurementsEntry`` 13742.6.5.4.3.1.{2 IsAvailable (TruthValue 1 true),
  3 State (4 normal), 4 Value (Unsigned32, scaled by the decimal digits)}.1.N.T for sensor
  types T (SensorTypeEnumeration) 1 rmsCurrent, 4 rmsVoltage, 5 activePower, 8 activeEnergy.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass

from pysnmp.proto import rfc1902

from curtaild.emulator.pdu.model import NOMINAL_V, EmulatedPdu, Outlet

OID = tuple[int, ...]

APC = (1, 3, 6, 1, 4, 1, 318, 1, 1)
APC_OUTLET_CTL_SIZE = (*APC, 4, 4, 1, 0)
APC_OUTLET_CTL_ENTRY = (*APC, 4, 4, 2, 1)
APC_SWITCHED_SIZE = (*APC, 26, 9, 1, 0)
APC_SWITCHED_STATUS = (*APC, 26, 9, 2, 3, 1)
APC_SWITCHED_CONTROL = (*APC, 26, 9, 2, 4, 1)
APC_METERED_SIZE = (*APC, 26, 9, 3, 0)
APC_METERED_STATUS = (*APC, 26, 9, 4, 3, 1)
APC_DEVICE_POWER = (*APC, 26, 4, 3, 1, 5, 1)

RARITAN = (1, 3, 6, 1, 4, 1, 13742, 6)
RARITAN_OUTLET_COUNT = (*RARITAN, 3, 2, 2, 1, 4, 1)
RARITAN_SWITCH_CONTROL = (*RARITAN, 4, 1, 2, 1)
RARITAN_SENSOR_CONFIG = (*RARITAN, 3, 5, 4, 1)
RARITAN_SENSOR_MEASUREMENTS = (*RARITAN, 5, 4, 3, 1)
#: SensorTypeEnumeration -> decimal digits the emulated PDU reports it with
RARITAN_SENSORS = {1: 3, 4: 0, 5: 0, 8: 0}  # rmsCurrent A (mA), rmsVoltage V, activePower W, Wh
RARITAN_ON, RARITAN_OFF = 7, 8

SYSTEM = (1, 3, 6, 1, 2, 1, 1)  # SNMPv2-MIB system group: sysDescr, sysObjectID, sysUpTime


class SetError(Exception):
    """A SET that cannot be done: ``status`` is the SNMP error-status name."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


@dataclass(slots=True)
class MibObject:
    oid: OID
    get: Callable[[], object]
    #: value -> None (done) or raises SetError; None: read-only
    set: Callable[[object], None] | None = None


class MibView:
    """A PDU's objects in lexicographic OID order, for GET, GETNEXT and GETBULK."""

    def __init__(self, objects: list[MibObject]) -> None:
        self.objects = sorted(objects, key=lambda o: o.oid)
        self.oids = [o.oid for o in self.objects]
        self.by_oid = {o.oid: o for o in self.objects}

    def get(self, oid: OID) -> MibObject | None:
        return self.by_oid.get(oid)

    def next(self, oid: OID) -> MibObject | None:
        i = bisect.bisect_right(self.oids, oid)
        return self.objects[i] if i < len(self.objects) else None

    def under(self, prefix: OID) -> bool:
        """Some object lives under ``prefix`` (GET: noSuchObject vs noSuchInstance)."""
        i = bisect.bisect_left(self.oids, prefix)
        return i < len(self.oids) and self.oids[i][:len(prefix)] == prefix


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise SetError("wrongType") from None


def _system(pdu: EmulatedPdu, started: float, vendor: OID, descr: str) -> list[MibObject]:
    return [
        MibObject((*SYSTEM, 1, 0), lambda: rfc1902.OctetString(descr)),
        MibObject((*SYSTEM, 2, 0), lambda: rfc1902.ObjectIdentifier(vendor)),
        MibObject((*SYSTEM, 3, 0),
                  lambda: rfc1902.TimeTicks(int((time.monotonic() - started) * 100))),
        MibObject((*SYSTEM, 5, 0), lambda: rfc1902.OctetString(pdu.name or pdu.address)),
    ]


def apc_objects(pdu: EmulatedPdu, started: float) -> list[MibObject]:
    """PowerNet-MIB: the classic sPDUOutletControl table and the rPDU2 outlet tables."""
    n = len(pdu.outlets)
    out = _system(pdu, started, (*APC[:7], 1, 1, 4), "APC Switched Rack PDU (curtaild emulator)")
    out += [MibObject(APC_OUTLET_CTL_SIZE, lambda: rfc1902.Integer32(n)),
            MibObject(APC_SWITCHED_SIZE, lambda: rfc1902.Integer32(n)),
            MibObject(APC_METERED_SIZE, lambda: rfc1902.Integer32(n)),
            MibObject(APC_DEVICE_POWER,
                      lambda: rfc1902.Integer32(round(pdu.power_w() / 10.0)))]

    def ctl_set(number: int, codes: dict[int, str]) -> Callable[[object], None]:
        def apply(value: object) -> None:
            what = codes.get(_int(value))
            if what is None:
                raise SetError("wrongValue")
            if what == "reboot":
                pdu.reboot(number)
            else:
                pdu.switch(number, what == "on")
        return apply

    def outlet_objects(o: Outlet) -> list[MibObject]:
        # One call per outlet: the lambdas close over this call's o, i and name.
        i = o.number
        name = f"Outlet {i}"
        objs = [
            MibObject((*APC_OUTLET_CTL_ENTRY, 1, i), lambda: rfc1902.Integer32(i)),
            MibObject((*APC_OUTLET_CTL_ENTRY, 2, i), lambda: rfc1902.Integer32(2)),  # none
            MibObject((*APC_OUTLET_CTL_ENTRY, 3, i),
                      lambda: rfc1902.Integer32(1 if o.on else 2),
                      ctl_set(i, {1: "on", 2: "off", 3: "reboot"})),
            MibObject((*APC_OUTLET_CTL_ENTRY, 4, i), lambda: rfc1902.OctetString(name)),
        ]
        for base in (APC_SWITCHED_STATUS, APC_SWITCHED_CONTROL, APC_METERED_STATUS):
            objs += [MibObject((*base, 1, i), lambda: rfc1902.Integer32(i)),
                     MibObject((*base, 2, i), lambda: rfc1902.Integer32(1)),  # module 1
                     MibObject((*base, 3, i), lambda: rfc1902.OctetString(name)),
                     MibObject((*base, 4, i), lambda: rfc1902.Integer32(i))]
        objs += [
            MibObject((*APC_SWITCHED_STATUS, 5, i),
                      lambda: rfc1902.Integer32(2 if o.on else 1)),
            MibObject((*APC_SWITCHED_STATUS, 6, i), lambda: rfc1902.Integer32(2)),
            MibObject((*APC_SWITCHED_CONTROL, 5, i),
                      lambda: rfc1902.Integer32(1 if o.on else 2),
                      ctl_set(i, {1: "on", 2: "off", 3: "reboot"})),
            MibObject((*APC_METERED_STATUS, 5, i),
                      lambda: rfc1902.Integer32(2 if o.power_w() > 0 else 1)),
            MibObject((*APC_METERED_STATUS, 6, i),
                      lambda: rfc1902.Integer32(round(o.current_a() * 10))),
            MibObject((*APC_METERED_STATUS, 7, i),
                      lambda: rfc1902.Integer32(round(o.power_w()))),
            MibObject((*APC_METERED_STATUS, 8, i),
                      lambda: rfc1902.Integer32(round(o.power_w()))),
            MibObject((*APC_METERED_STATUS, 11, i),
                      lambda: rfc1902.Integer32(round(o.energy_tick() / 100.0))),
        ]
        return objs

    for o in pdu.outlets:
        out += outlet_objects(o)
    return out


def _raritan_value(o: Outlet, sensor: int) -> int:
    digits = RARITAN_SENSORS[sensor]
    if sensor == 1:
        value = o.current_a()
    elif sensor == 4:
        value = NOMINAL_V
    elif sensor == 5:
        value = o.power_w()
    else:
        value = o.energy_tick()
    return max(0, min(0xFFFFFFFF, round(value * 10 ** digits)))


def raritan_objects(pdu: EmulatedPdu, started: float) -> list[MibObject]:
    """PDU2-MIB: outletSwitchControlTable and the outlet sensor tables (pduId 1)."""
    out = _system(pdu, started, (*RARITAN[:7], 6), "Raritan PX (curtaild emulator)")
    out.append(MibObject(RARITAN_OUTLET_COUNT, lambda: rfc1902.Integer32(len(pdu.outlets))))

    def operate(number: int) -> Callable[[object], None]:
        def apply(value: object) -> None:
            op = _int(value)
            if op == 0:
                pdu.switch(number, False)
            elif op == 1:
                pdu.switch(number, True)
            elif op == 2:
                pdu.reboot(number)
            else:
                raise SetError("wrongValue")
        return apply

    def sensor_objects(o: Outlet, sensor: int, digits: int) -> list[MibObject]:
        # One call per (outlet, sensor): the lambdas close over this call's arguments.
        i = o.number
        return [
            MibObject((*RARITAN_SENSOR_CONFIG, 7, 1, i, sensor),
                      lambda: rfc1902.Unsigned32(digits)),
            MibObject((*RARITAN_SENSOR_MEASUREMENTS, 2, 1, i, sensor),
                      lambda: rfc1902.Integer32(1)),
            MibObject((*RARITAN_SENSOR_MEASUREMENTS, 3, 1, i, sensor),
                      lambda: rfc1902.Integer32(4)),
            MibObject((*RARITAN_SENSOR_MEASUREMENTS, 4, 1, i, sensor),
                      lambda: rfc1902.Unsigned32(_raritan_value(o, sensor))),
        ]

    def outlet_objects(o: Outlet) -> list[MibObject]:
        i = o.number
        objs = [
            MibObject((*RARITAN_SWITCH_CONTROL, 2, 1, i),
                      lambda: rfc1902.Integer32(1 if o.on else 0), operate(i)),
            MibObject((*RARITAN_SWITCH_CONTROL, 3, 1, i),
                      lambda: rfc1902.Integer32(RARITAN_ON if o.on else RARITAN_OFF)),
            MibObject((*RARITAN_SWITCH_CONTROL, 4, 1, i),
                      lambda: rfc1902.Unsigned32(int(o.switched_at))),
        ]
        for sensor, digits in RARITAN_SENSORS.items():
            objs += sensor_objects(o, sensor, digits)
        return objs

    for o in pdu.outlets:
        out += outlet_objects(o)
    return out


def mib_view(pdu: EmulatedPdu, started: float | None = None) -> MibView:
    started = time.monotonic() if started is None else started
    build = apc_objects if pdu.mib == "apc" else raritan_objects
    return MibView(build(pdu, started))
