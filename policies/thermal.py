"""The thermal policy: derate, then sleep, machines that run too hot; recover with hysteresis.

Per reachable machine with a temperature reading (``temp_c``, the hottest chip or board):

- at or above ``sleep_temp_c``: sleep (or, firmware without sleep, its lowest power target);
- at or above ``max_temp_c``: derate -- a power target ``derate_step_w`` below the present one
  (its power limit, else its draw), one step per tick while it stays hot; at the firmware's
  lowest target, or on firmware without power targets, sleep;
- between ``max_temp_c - recovery_band_c`` and ``max_temp_c``, a machine already derated (its
  reading shows a power limit below full power) is held at that limit, and one asleep stays
  asleep: it goes back to normal only once it has cooled below ``max_temp_c -
  recovery_band_c`` (hysteresis, so it does not bounce at the limit);
- otherwise thermal has no opinion.

Memory of "was derated" is the observation itself (``power_limit_w``, ``state``), so the
policy stays pure and a restart changes nothing. Every thermal decision has priority
"emergency" (no hysteresis, no dwell, no ramp for the shed, acts on stale or missing market
inputs) and works without market inputs. Thermal only ever *lowers* a machine's power: where
another layer already decided something cooler (a deeper limit, sleep), that decision stands.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, ClassVar

from pydantic import Field, model_validator

from curtaild.core.bounds import at_most
from curtaild.core.snapshot import Desired, Directives, FleetSnapshot, MarketSnapshot, MinerReading
from curtaild.policies import layer
from curtaild.policies.base import PolicyConfig


class ThermalConfig(PolicyConfig):
    """``[policy.thermal]`` keys (or ``[policy]`` with ``name = "thermal"``)."""

    max_temp_c: float = Field(80.0, gt=0.0, le=150.0)
    """Derate a machine whose temperature is at or above this, degrees C."""

    sleep_temp_c: float = Field(90.0, gt=0.0, le=150.0)
    """Sleep a machine at or above this, degrees C (must be above max_temp_c)."""

    recovery_band_c: float = Field(5.0, ge=0.0, le=50.0)
    """A derated or slept machine returns to normal only below max_temp_c - this, degrees C."""

    derate_step_w: Annotated[float, at_most(
        100_000.0, "a step larger than any machine's power range: one step would always "
        "reach the firmware's lowest limit", unit="W")] = Field(300.0, gt=0.0)
    """Power target step, W, taken each tick a machine stays at or above max_temp_c."""

    derate: bool = True
    """Derate with power targets where the firmware allows; false sleeps at max_temp_c."""

    @model_validator(mode="after")
    def _sleep_above_max(self) -> ThermalConfig:
        if self.sleep_temp_c <= self.max_temp_c:
            raise ValueError(f"sleep_temp_c ({self.sleep_temp_c}) must be above max_temp_c "
                             f"({self.max_temp_c})")
        return self


class ThermalPolicy:
    """Protect hardware: derate or sleep machines above temperature limits."""

    name: ClassVar[str] = "thermal"
    Config: ClassVar[type[ThermalConfig]] = ThermalConfig

    def __init__(self, config: ThermalConfig | None = None):
        self.config = config if config is not None else ThermalConfig()

    def decide(self, fleet: FleetSnapshot, market: MarketSnapshot | None,
               now: float) -> dict[str, Desired]:
        """On its own: everything runs, except what is too hot."""
        return self.apply(layer.everything_runs(fleet), fleet, market, Directives(), now)

    def apply(self, decisions: Mapping[str, Desired], fleet: FleetSnapshot,
              market: MarketSnapshot | None, directives: Directives,
              now: float) -> dict[str, Desired]:
        out = dict(decisions)
        for r in fleet.miners:
            t = self.decide_one(r)
            if t is None:
                continue
            d = out.get(r.key)
            if d is not None and layer.power_under_w(r, d) <= layer.power_under_w(r, t):
                continue  # what was decided already draws no more: cooler or equal
            out[r.key] = t if d is None else layer.overriding(t, d)
        return out

    def decide_one(self, r: MinerReading) -> Desired | None:
        """Thermal's own wish for one machine, or None when it has none."""
        c = self.config
        if r.state == "unreachable" or r.temp_c is None:
            return None
        t = r.temp_c
        recover_c = c.max_temp_c - c.recovery_band_c
        if r.state == "sleeping":
            if t >= recover_c:
                return self._want("sleep", f"thermal: asleep at {t:.0f} C; stays asleep until "
                                  f"below {recover_c:.0f} C (max {c.max_temp_c:.0f} C - "
                                  f"recovery {c.recovery_band_c:.0f} C)")
            return None
        if t >= c.sleep_temp_c:
            return self._too_hot(r, f"thermal: {t:.0f} C >= sleep_temp_c {c.sleep_temp_c:.0f} C")
        if t >= c.max_temp_c:
            return self._derate(r, f"thermal: {t:.0f} C >= max_temp_c {c.max_temp_c:.0f} C")
        if t >= recover_c and layer.is_limited(r):
            assert r.power_limit_w is not None
            return self._want("limit", f"thermal: {t:.0f} C, derated to "
                              f"{r.power_limit_w:.0f} W; held until below {recover_c:.0f} C",
                              r.power_limit_w)
        return None

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _want(action: str, reason: str, limit: float | None = None) -> Desired:
        return Desired(action=action, reason=reason,  # type: ignore[arg-type]
                       power_limit_w=limit, priority="emergency")

    def _limitable(self, r: MinerReading) -> bool:
        return (self.config.derate and r.supports_power_limit
                and r.min_power_limit_w is not None)

    def _too_hot(self, r: MinerReading, why: str) -> Desired | None:
        """Sleep; firmware without sleep gets its lowest power target instead."""
        if r.supports_sleep:
            return self._want("sleep", f"{why}: sleep")
        if self._limitable(r):
            assert r.min_power_limit_w is not None
            floor = float(math.ceil(r.min_power_limit_w))
            return self._want("limit", f"{why}: cannot sleep, lowest target {floor:.0f} W",
                              floor)
        return None

    def _derate(self, r: MinerReading, why: str) -> Desired | None:
        if not self._limitable(r):
            return self._too_hot(r, f"{why} (no power targets)")
        assert r.min_power_limit_w is not None
        floor = float(math.ceil(r.min_power_limit_w))
        now_w = r.power_limit_w if layer.is_limited(r) and r.power_limit_w else \
            layer.present_w(r)
        if now_w <= floor + max(25.0, 0.02 * floor):
            return self._too_hot(r, f"{why}, already at its lowest target {floor:.0f} W")
        target = max(floor, float(math.floor(now_w - self.config.derate_step_w)))
        return self._want("limit", f"{why}: derate {now_w:.0f} -> {target:.0f} W "
                          f"(step {self.config.derate_step_w:.0f} W)", target)

