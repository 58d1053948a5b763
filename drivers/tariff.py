"""Energy tariff sources (USD per kWh, now and for the coming hours)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TariffQuote:
    usd_per_kwh: float
    source: str
    obtained_at: float  # unix seconds
    forecast: tuple[tuple[float, float], ...] = ()  # (start unix s, usd/kWh)


class TariffSource(Protocol):
    name: str

    async def fetch(self, now: float) -> TariffQuote: ...


class FlatTariffSource:
    """One price around the clock: a contract term, so always fresh."""

    name = "flat"

    def __init__(self, usd_per_kwh: float):
        self.usd_per_kwh = usd_per_kwh

    async def fetch(self, now: float) -> TariffQuote:
        hours = tuple((now + h * 3600.0, self.usd_per_kwh) for h in range(24))
        return TariffQuote(self.usd_per_kwh, self.name, time.time(), hours)


def build_tariff_source(cfg) -> TariffSource:  # noqa: ANN001 - config union
    if cfg.kind == "flat":
        return FlatTariffSource(cfg.usd_per_kwh)
    raise ValueError(f"tariff.kind: unknown kind {cfg.kind!r}")
