"""Peak guard: sleep every machine while the tariff is above a threshold, run it otherwise.

Written only against curtaild's public policy API (policies/README.md): ``curtaild.policies``
for the policy base and ``curtaild.core`` for the snapshots it reads and the decisions it
returns. It imports nothing else of curtaild, as .importlinter requires of built-ins too.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from curtaild.core.snapshot import Desired, FleetSnapshot, MarketSnapshot
from curtaild.policies.base import PolicyConfig


class PeakGuardConfig(PolicyConfig):
    max_tariff_usd_per_kwh: float = Field(0.10, gt=0, description="sleep above this tariff")


class PeakGuardPolicy:
    name: ClassVar[str] = "peak_guard"
    Config = PeakGuardConfig

    def __init__(self, config: PeakGuardConfig) -> None:
        self.config = config

    def decide(self, fleet: FleetSnapshot, market: MarketSnapshot | None,
               now: float) -> dict[str, Desired]:
        if market is None:  # no tariff known: no opinion (the guards hold every machine)
            return {}
        peak = market.tariff_usd_per_kwh > self.config.max_tariff_usd_per_kwh
        reason = (f"peak guard: tariff {market.tariff_usd_per_kwh:.3f} "
                  f"{'>' if peak else '<='} {self.config.max_tariff_usd_per_kwh:.3f} USD/kWh")
        return {m.key: Desired("sleep" if peak else "run", reason) for m in fleet.miners}
