"""Mining economics as pure functions (no I/O), in base units named in every argument.

See ../shared/design.md: hash price is USD per TH/s per day; energy is priced per kWh; the
marginal margin is what an operator controls minute by minute (sunk costs stay out).
"""

from __future__ import annotations

SECONDS_PER_BLOCK = 600.0
BLOCKS_PER_DAY = 144.0
HALVING_INTERVAL = 210_000
INITIAL_SUBSIDY_BTC = 50.0


def block_subsidy_btc(height: int) -> float:
    """Subsidy of the block at ``height``: 50 BTC halved every 210,000 blocks (0 after 64)."""
    if height < 0:
        raise ValueError(f"block height must be >= 0, got {height}")
    halvings = height // HALVING_INTERVAL
    if halvings >= 64:
        return 0.0
    return INITIAL_SUBSIDY_BTC / float(2**halvings)


def network_hashrate_hs(difficulty: float) -> float:
    """Expected network hashrate (H/s) for a difficulty: difficulty * 2**32 / 600."""
    return difficulty * 2**32 / SECONDS_PER_BLOCK


def hashprice_usd_per_th_day(
    *, btc_per_block: float, btc_price_usd: float, network_hashrate_hs: float
) -> float:
    """USD earned per TH/s per day: 144 blocks x reward x price x 1e12 / network H/s."""
    if network_hashrate_hs <= 0:
        raise ValueError("network hashrate must be positive")
    return BLOCKS_PER_DAY * btc_per_block * btc_price_usd * 1e12 / network_hashrate_hs


def revenue_usd_per_day(
    *, hashrate_ths: float, hashprice_usd_per_th_day: float, pool_fee: float
) -> float:
    """Pool payout per day for a hashrate, after the pool's fee (a fraction, 0.02 = 2 %)."""
    return hashrate_ths * hashprice_usd_per_th_day * (1.0 - pool_fee)


def energy_cost_usd_per_day(*, power_w: float, tariff_usd_per_kwh: float) -> float:
    """Energy bill per day of a constant draw: kW x 24 h x tariff."""
    return power_w / 1000.0 * 24.0 * tariff_usd_per_kwh


def margin_usd_per_day(
    *,
    hashrate_ths: float,
    power_w: float,
    hashprice_usd_per_th_day: float,
    tariff_usd_per_kwh: float,
    pool_fee: float,
) -> float:
    """Marginal margin: revenue minus energy. Negative means the machine loses money running."""
    return revenue_usd_per_day(
        hashrate_ths=hashrate_ths,
        hashprice_usd_per_th_day=hashprice_usd_per_th_day,
        pool_fee=pool_fee,
    ) - energy_cost_usd_per_day(power_w=power_w, tariff_usd_per_kwh=tariff_usd_per_kwh)


def breakeven_tariff_usd_per_kwh(
    *, efficiency_j_per_th: float, hashprice_usd_per_th_day: float, pool_fee: float
) -> float:
    """Tariff at which a machine of this efficiency earns exactly its energy."""
    if efficiency_j_per_th <= 0:
        raise ValueError("efficiency must be positive")
    return hashprice_usd_per_th_day * (1.0 - pool_fee) / (24.0 * efficiency_j_per_th / 1000.0)


def breakeven_hashprice_usd_per_th_day(
    *, efficiency_j_per_th: float, tariff_usd_per_kwh: float, pool_fee: float
) -> float:
    """Hash price at which a machine of this efficiency earns exactly its energy."""
    if pool_fee >= 1.0:
        raise ValueError("pool fee must be below 1")
    return tariff_usd_per_kwh * 24.0 * efficiency_j_per_th / 1000.0 / (1.0 - pool_fee)


def hashrate_at_power_ths(
    *,
    power_w: float,
    ref_power_w: float,
    ref_hashrate_ths: float,
    idle_power_w: float,
    exponent: float,
) -> float:
    """Estimated hashrate under a power target, from one reference point.

    Hashrate grows sub-linearly with the ASIC's share of power (lower voltage when
    underclocked), hashrate ~ (P - idle)**exponent with exponent < 1, so J/TH improves when a
    machine is power-limited. The exponent is a site-tunable assumption (default 0.75).
    """
    asic_ref = ref_power_w - idle_power_w
    asic = power_w - idle_power_w
    if asic_ref <= 0 or asic <= 0 or ref_hashrate_ths <= 0:
        return 0.0
    return float(ref_hashrate_ths * (asic / asic_ref) ** exponent)
