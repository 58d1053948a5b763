"""The site meter over Modbus TCP (pymodbus): total and per-phase active power.

Map ``sunspec``: the SunSpec Information Model. The driver checks the "SunS" marker at 40000
and walks the model chain (ID, length) from 40002 to the first meter model: 213 (three-phase
wye, float32: W at offset 26, WphA-C at 28-32 from the model's first point) or 203 (integer
with scale factors: W at 16, WphA-C at 17-19, W_SF at 20). The layout is found once and kept;
a failed read forgets it (a meter replaced by another model is walked again).

Every read has a deadline; a read that fails or answers garbage returns a
:class:`MeterReading` with ``error`` and no power -- it never raises into the loop.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient

SUNSPEC_BASE = 40000
SUNS = [0x5375, 0x6E53]
MAX_MODELS = 32  # a chain longer than this is garbage


@dataclass(frozen=True, slots=True)
class MeterReading:
    power_w: float | None
    phases_w: dict[str, float]
    taken_at: float
    error: str | None = None
    model: int | None = None
    duration_s: float = 0.0


class MeterError(Exception):
    pass


def _f32(regs: list[int], at: int) -> float:
    return struct.unpack(">f", struct.pack(">2H", regs[at], regs[at + 1]))[0]


def _s16(v: int) -> int:
    return v - 0x10000 if v & 0x8000 else v


class SunSpecMeter:
    """A SunSpec meter (models 213 or 203) at address:port, unit ``unit_id``."""

    def __init__(self, address: str, port: int = 502, unit_id: int = 1,
                 timeout_s: float = 2.0) -> None:
        self.address, self.port, self.unit_id = address, port, unit_id
        self.timeout_s = timeout_s
        self.client: AsyncModbusTcpClient | None = None
        self._model: tuple[int, int] | None = None  # (model id, address of its first point)

    async def _regs(self, address: int, count: int) -> list[int]:
        assert self.client is not None
        r = await self.client.read_holding_registers(address, count=count,
                                                     device_id=self.unit_id)
        if r.isError():
            raise MeterError(f"Modbus exception reading {address}: {r}")
        regs = list(r.registers)
        if len(regs) != count:
            raise MeterError(f"{len(regs)} registers where {count} were asked at {address}")
        return regs

    async def _find(self) -> tuple[int, int]:
        if await self._regs(SUNSPEC_BASE, 2) != SUNS:
            raise MeterError("no SunSpec marker ('SunS') at 40000")
        at = SUNSPEC_BASE + 2
        for _ in range(MAX_MODELS):
            model, length = await self._regs(at, 2)
            if model == 0xFFFF:
                break
            if model in (213, 203):
                return model, at + 2
            at += 2 + length
        raise MeterError("no SunSpec meter model (213 or 203) in the chain")

    async def _read(self) -> tuple[float, dict[str, float], int]:
        if self.client is None or not self.client.connected:
            self.client = AsyncModbusTcpClient(self.address, port=self.port,
                                               timeout=self.timeout_s, retries=0)
            if not await self.client.connect():
                raise MeterError("cannot connect")
        if self._model is None:
            self._model = await self._find()
        model, first = self._model
        if model == 213:
            regs = await self._regs(first + 26, 8)
            total, phases = _f32(regs, 0), [_f32(regs, i) for i in (2, 4, 6)]
        else:
            regs = await self._regs(first + 16, 5)
            scale = 10.0 ** _s16(regs[4])
            total, phases = _s16(regs[0]) * scale, [_s16(v) * scale for v in regs[1:4]]
        values = [total, *phases]
        if not all(math.isfinite(v) and -1e9 < v < 1e9 for v in values):
            raise MeterError(f"implausible power {values}")
        return total, dict(zip(("L1", "L2", "L3"), phases, strict=True)), model

    async def read(self) -> MeterReading:
        started = time.monotonic()
        now = time.time()
        try:
            async with asyncio.timeout(self.timeout_s + 0.5):
                total, phases, model = await self._read()
        except Exception as exc:  # timeout, refused, garbage: a reading with an error
            self._model = None
            self.close()
            why = "no answer within %.1f s" % (self.timeout_s + 0.5) \
                if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            return MeterReading(None, {}, now, error=why, duration_s=time.monotonic() - started)
        return MeterReading(total, phases, now, model=model,
                            duration_s=time.monotonic() - started)

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:
                pass
            self.client = None
