"""core/economics.py pinned against figures computed by hand (see design.md)."""

from __future__ import annotations

import pytest

from curtaild.core import economics as ec


def test_network_hashrate_from_difficulty() -> None:
    # 1e14 x 2^32 / 600 = 7.158278826666...e20 H/s
    assert ec.network_hashrate_hs(1e14) == pytest.approx(7.158278826666667e20, rel=1e-12)


def test_design_example_hashprice() -> None:
    # 144 x 3.15 x 100 000 x 1e12 / 7.1582788e20 = 4.536e19 / 7.1582788e20 = 0.063367...
    hp = ec.hashprice_usd_per_th_day(
        btc_per_block=3.15, btc_price_usd=100_000, network_hashrate_hs=ec.network_hashrate_hs(1e14)
    )
    assert hp == pytest.approx(0.0633674, abs=1e-6)
    assert round(hp, 4) == 0.0634


def test_hashprice_rejects_zero_network() -> None:
    with pytest.raises(ValueError):
        ec.hashprice_usd_per_th_day(btc_per_block=3.125, btc_price_usd=1.0, network_hashrate_hs=0)


@pytest.mark.parametrize(
    ("height", "subsidy"),
    [
        (0, 50.0),
        (209_999, 50.0),
        (210_000, 25.0),
        (419_999, 25.0),
        (420_000, 12.5),
        (630_000, 6.25),
        (840_000, 3.125),
        (1_049_999, 3.125),
        (1_050_000, 1.5625),
        (64 * 210_000 - 1, 50.0 / 2**63),
        (64 * 210_000, 0.0),
    ],
)
def test_block_subsidy(height: int, subsidy: float) -> None:
    assert ec.block_subsidy_btc(height) == subsidy


def test_block_subsidy_rejects_negative_height() -> None:
    with pytest.raises(ValueError):
        ec.block_subsidy_btc(-1)


def test_s19j_pro_revenue_energy_margin() -> None:
    # S19j Pro 104 TH/s, 3068 W at 0.05 USD/TH/day, 0.06 USD/kWh, 2 % pool fee:
    # revenue 104 x 0.05 x 0.98 = 5.096; energy 3.068 kW x 24 h x 0.06 = 4.41792.
    rev = ec.revenue_usd_per_day(hashrate_ths=104, hashprice_usd_per_th_day=0.05, pool_fee=0.02)
    cost = ec.energy_cost_usd_per_day(power_w=3068, tariff_usd_per_kwh=0.06)
    margin = ec.margin_usd_per_day(hashrate_ths=104, power_w=3068, hashprice_usd_per_th_day=0.05,
                                   tariff_usd_per_kwh=0.06, pool_fee=0.02)
    assert rev == pytest.approx(5.096, abs=1e-12)
    assert cost == pytest.approx(4.41792, abs=1e-12)
    assert margin == pytest.approx(0.67808, abs=1e-12)


def test_negative_margin_at_higher_tariff() -> None:
    # energy at 0.08: 3.068 x 24 x 0.08 = 5.89056 -> margin 5.096 - 5.89056 = -0.79456
    margin = ec.margin_usd_per_day(hashrate_ths=104, power_w=3068, hashprice_usd_per_th_day=0.05,
                                   tariff_usd_per_kwh=0.08, pool_fee=0.02)
    assert margin == pytest.approx(-0.79456, abs=1e-12)


def test_breakeven_tariff() -> None:
    # 25 J/TH at 0.06 USD/TH/day, no fee: 0.06 / (24 x 25 / 1000) = 0.06 / 0.6 = 0.1 USD/kWh
    assert ec.breakeven_tariff_usd_per_kwh(
        efficiency_j_per_th=25, hashprice_usd_per_th_day=0.06, pool_fee=0.0
    ) == pytest.approx(0.1, abs=1e-12)
    # the integration fleet's split: 0.045 x 0.98 / (24 x 26.25 / 1000) = 0.07 exactly
    assert ec.breakeven_tariff_usd_per_kwh(
        efficiency_j_per_th=26.25, hashprice_usd_per_th_day=0.045, pool_fee=0.02
    ) == pytest.approx(0.07, abs=1e-12)


def test_breakeven_is_where_margin_is_zero() -> None:
    tariff = ec.breakeven_tariff_usd_per_kwh(
        efficiency_j_per_th=3068 / 104, hashprice_usd_per_th_day=0.05, pool_fee=0.02
    )
    assert tariff == pytest.approx(0.0692090, abs=1e-7)  # 0.049 / 0.708
    assert ec.margin_usd_per_day(hashrate_ths=104, power_w=3068, hashprice_usd_per_th_day=0.05,
                                 tariff_usd_per_kwh=tariff, pool_fee=0.02) == pytest.approx(0.0)


def test_breakeven_hashprice() -> None:
    # 25 J/TH at 0.1 USD/kWh, no fee: 0.1 x 24 x 25 / 1000 = 0.06
    assert ec.breakeven_hashprice_usd_per_th_day(
        efficiency_j_per_th=25, tariff_usd_per_kwh=0.1, pool_fee=0.0
    ) == pytest.approx(0.06, abs=1e-12)
    with pytest.raises(ValueError):
        ec.breakeven_hashprice_usd_per_th_day(efficiency_j_per_th=25, tariff_usd_per_kwh=0.1,
                                              pool_fee=1.0)
    with pytest.raises(ValueError):
        ec.breakeven_tariff_usd_per_kwh(efficiency_j_per_th=0, hashprice_usd_per_th_day=0.05,
                                        pool_fee=0.0)


def test_hashrate_at_power_curve() -> None:
    ref = {"ref_power_w": 3040.0, "ref_hashrate_ths": 100.0, "idle_power_w": 40.0}
    # half the ASIC power: 100 x 0.5^0.75 = 59.4603557...
    assert ec.hashrate_at_power_ths(power_w=1540, exponent=0.75, **ref) == pytest.approx(
        59.4603557, abs=1e-6)
    assert ec.hashrate_at_power_ths(power_w=1540, exponent=1.0, **ref) == pytest.approx(50.0)
    assert ec.hashrate_at_power_ths(power_w=3040, exponent=0.75, **ref) == pytest.approx(100.0)
    assert ec.hashrate_at_power_ths(power_w=40, exponent=0.75, **ref) == 0.0
    # a limited machine is more efficient: J/TH at 1540 W is below the reference's 30.4
    assert 1540 / 59.4603557 < 3040 / 100
