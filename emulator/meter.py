"""An emulated site meter over Modbus TCP: SunSpec meter model 213 (three-phase wye, float).

Its reading is physics, not what firmware claims: the sum of what every emulated machine draws
now (``EmulatedMiner.read().power_w``, 0 W when its outlet or mains is off), plus a facility
``overhead_w`` (fans, transformer losses, lights: what a site's meter sees and no miner
reports) and optional uniform noise of +/- ``noise_w``. Per phase: machines on a PDU with a
``phase`` count on it; the others and the overhead are split evenly over L1-L3.

Register map (Modbus holding registers, function 3, 0-based protocol addresses; the SunSpec
Information Model as published by the SunSpec Alliance, models 1 and 213; the same layout
Fronius documents for its meters with 1-based numbers, e.g. ``M21X_W`` at 40098):

======  =====  ======================================================================
40000   2      "SunS" marker (0x5375 0x6E53)
40002   1      model ID 1 (common), 40003 its length 65
40004   16     Mn "curtaild"; 40020 Md (16) "emulated meter"; 40036 Opt (8); 40044 Vr
               (8); 40052 SN (16); 40068 DA (device address = unit id)
40069   1      model ID 213, 40070 its length 124
40071   2 x 62 float32 points, big-endian, high word first: A, AphA, AphB, AphC (0-6), PhV,
               PhVphA-C (8-14), PPV, PPVphAB/BC/CA (16-22), Hz (24), **W (26: 40097)**,
               **WphA, WphB, WphC (28-32: 40099, 40101, 40103)**, VA (34...), VAR (42...),
               PF (50...), TotWhExp (58...), TotWhImp (74: 40145), ... Evt
40195   2      end model: 0xFFFF, length 0
======  =====  ======================================================================

Writes are refused (``ILLEGAL_FUNCTION``): a meter is read-only.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from collections.abc import Iterable

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from curtaild.emulator.physics import EmulatedMiner

BASE = 40000
COMMON_ID, COMMON_LEN = 1, 65
METER_ID, METER_LEN = 213, 124
MODEL_213_AT = BASE + 2 + 2 + COMMON_LEN  # 40069: its ID register
POINTS_AT = MODEL_213_AT + 2  # 40071: first float point (A)
END_AT = POINTS_AT + METER_LEN  # 40195
REGISTER_COUNT = END_AT + 2 - BASE
#: float32 point offsets (registers from POINTS_AT) the emulator fills
OFFSET = {"A": 0, "AphA": 2, "AphB": 4, "AphC": 6, "PhV": 8, "PhVphA": 10, "PhVphB": 12,
          "PhVphC": 14, "Hz": 24, "W": 26, "WphA": 28, "WphB": 30, "WphC": 32, "VA": 34,
          "PF": 50, "TotWhImp": 74}
PHASES = ("L1", "L2", "L3")
NOMINAL_V = 230.0
MAPS = ("sunspec",)


def _text(value: str, registers: int) -> list[int]:
    raw = value.encode()[: registers * 2].ljust(registers * 2, b"\0")
    return list(struct.unpack(f">{registers}H", raw))


def _float(value: float) -> list[int]:
    return list(struct.unpack(">2H", struct.pack(">f", value)))


class EmulatedMeter:
    """The site meter's physics and its Modbus TCP service."""

    def __init__(self, address: str, port: int, miners: Iterable[EmulatedMiner],
                 phase_of: dict[str, str] | None = None, *, overhead_w: float = 0.0,
                 noise_w: float = 0.0, unit_id: int = 1, map_name: str = "sunspec",
                 seed: int = 0) -> None:
        self.address, self.port = address, port
        self.miners = list(miners)
        self.phase_of = dict(phase_of or {})
        self.overhead_w, self.noise_w = overhead_w, noise_w
        self.unit_id, self.map_name = unit_id, map_name
        self.server: ModbusTcpServer | None = None
        self.reads = 0
        self._rng = random.Random(seed)
        self._energy_wh = 0.0
        self._energy_at = time.monotonic()

    # ----------------------------------------------------------------- physics
    def phases_w(self) -> dict[str, float]:
        """Active power per phase, W: machines on a phased PDU there, the rest and the
        overhead (and the noise) split evenly."""
        out = dict.fromkeys(PHASES, 0.0)
        spread = self.overhead_w
        if self.noise_w:
            spread += self._rng.uniform(-self.noise_w, self.noise_w)
        for m in self.miners:
            w = m.read().power_w
            phase = self.phase_of.get(m.ip)
            if phase in out:
                out[phase] += w
            else:
                spread += w
        return {p: max(0.0, w + spread / 3.0) for p, w in out.items()}

    def power_w(self, phases: dict[str, float] | None = None) -> float:
        return sum((phases or self.phases_w()).values())

    def registers(self) -> list[int]:
        """The whole map from BASE, computed now."""
        phases = self.phases_w()
        total = sum(phases.values())
        now = time.monotonic()
        self._energy_wh += total * (now - self._energy_at) / 3600.0
        self._energy_at = now
        regs = [0] * REGISTER_COUNT

        def put(at: int, values: list[int]) -> None:
            regs[at - BASE: at - BASE + len(values)] = values

        put(BASE, [0x5375, 0x6E53])
        put(BASE + 2, [COMMON_ID, COMMON_LEN])
        put(BASE + 4, _text("curtaild", 16))
        put(BASE + 20, _text("emulated meter", 16))
        put(BASE + 44, _text("1.0", 8))
        put(BASE + 52, _text(f"EMU-{self.address}", 16))
        put(BASE + 68, [self.unit_id])
        put(MODEL_213_AT, [METER_ID, METER_LEN])
        points = {"Hz": 50.0, "PhV": NOMINAL_V, "PhVphA": NOMINAL_V, "PhVphB": NOMINAL_V,
                  "PhVphC": NOMINAL_V, "W": total, "VA": total, "PF": 1.0,
                  "A": total / NOMINAL_V, "TotWhImp": self._energy_wh}
        for phase, name in zip(PHASES, ("A", "B", "C"), strict=True):
            points[f"Wph{name}"] = phases[phase]
            points[f"Aph{name}"] = phases[phase] / NOMINAL_V
        for name, value in points.items():
            put(POINTS_AT + OFFSET[name], _float(value))
        put(END_AT, [0xFFFF, 0])
        return regs

    def view(self) -> dict:
        """``GET /meter``: address, port and what it reads now."""
        phases = self.phases_w()
        return {"address": self.address, "port": self.port, "map": self.map_name,
                "unit_id": self.unit_id, "power_w": round(sum(phases.values()), 1),
                "phases_w": {p: round(w, 1) for p, w in phases.items()},
                "overhead_w": self.overhead_w, "noise_w": self.noise_w, "reads": self.reads}

    # ----------------------------------------------------------------- Modbus
    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      current_registers: list[int], set_values) -> ExcCodes | None:
        if set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION
        self.reads += 1
        current_registers[:REGISTER_COUNT] = self.registers()
        return None

    async def start(self) -> None:
        """Listen on address:port (OSError naming both if that fails)."""
        device = SimDevice(id=self.unit_id, simdata=[SimData(
            BASE, values=[0] * REGISTER_COUNT, datatype=DataType.REGISTERS)],
            action=self._action)
        self.server = ModbusTcpServer(device, address=(self.address, self.port))
        if not await self.server.listen():
            self.server = None
            raise OSError(f"meter {self.address} tcp/{self.port}: cannot listen (in use, or "
                          "ports below 1024 need root)")

    async def close(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None
            await asyncio.sleep(0)
