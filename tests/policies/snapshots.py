"""Hand-made readings and markets for the layer policies' tests (every clock value explicit)."""

from __future__ import annotations

from curtaild.core.snapshot import FleetSnapshot, MarketSnapshot, MinerReading

# 2026-07-15 (a Wednesday) 14:30 America/Chicago (CDT, UTC-5) = 19:30 UTC.
WED_1430_CHICAGO = 1_784_143_800.0


def miner(key: str, *, power_w: float = 3000.0, hashrate_ths: float = 100.0,
          state: str = "mining", temp_c: float | None = 70.0, limit_w: float | None = None,
          limits: tuple[float, float] | None = None, sleep: bool = True,
          now: float = WED_1430_CHICAGO) -> MinerReading:
    """A machine at nameplate (power_w, hashrate_ths); ``limits`` = (min, max) power target."""
    asleep = state == "sleeping"
    return MinerReading(
        key=key, ip=f"127.52.9.{abs(hash(key)) % 250 + 1}", make="test", model="test",
        firmware="luxos" if limits else "antminer", state=state,  # type: ignore[arg-type]
        hashrate_ths=0.0 if asleep else hashrate_ths,
        power_w=40.0 if asleep else (limit_w or power_w),
        power_source="firmware", power_limit_w=limit_w, temp_c=temp_c,
        nameplate_hashrate_ths=hashrate_ths, nameplate_power_w=power_w,
        supports_sleep=sleep, supports_power_limit=limits is not None,
        min_power_limit_w=limits[0] if limits else None,
        max_power_limit_w=limits[1] if limits else None, observed_at=now - 5)


def fleet(*miners: MinerReading, now: float = WED_1430_CHICAGO) -> FleetSnapshot:
    return FleetSnapshot(miners=tuple(miners), taken_at=now)


def market(hashprice: float = 0.05, tariff: float = 0.05, *,
           tariff_extra: dict | None = None) -> MarketSnapshot:
    return MarketSnapshot(hashprice_usd_per_th_day=hashprice, hashprice_source="test",
                          hashprice_age_s=0.0, tariff_usd_per_kwh=tariff, tariff_source="test",
                          tariff_age_s=0.0, pool_fee=0.02,
                          extra={"tariff": tariff_extra} if tariff_extra else {})
