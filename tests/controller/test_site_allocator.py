"""controller/site_allocator.py: a site cap divided across shards by margin per watt."""

from __future__ import annotations

import time

import pytest

from curtaild.controller.cluster import ClusterMember
from curtaild.controller.cluster_config import ClusterConfig
from curtaild.controller.journal import Journal
from curtaild.controller.site_allocator import MAX_BLOCKS, Summary, allocate, summarize
from curtaild.core.snapshot import FleetSnapshot, MarketSnapshot, MinerReading


def _reading(key: str, power_w: float, hashrate_ths: float, state: str = "mining"
             ) -> MinerReading:
    return MinerReading(key=key, ip=key, make="x", model="x", firmware="stock", state=state,
                        hashrate_ths=hashrate_ths if state == "mining" else 0.0,
                        power_w=power_w if state == "mining" else 40.0, power_source="measured",
                        power_limit_w=None, temp_c=None, nameplate_hashrate_ths=hashrate_ths,
                        nameplate_power_w=power_w, supports_sleep=True,
                        supports_power_limit=False, observed_at=0.0)


MARKET = MarketSnapshot(hashprice_usd_per_th_day=0.05, hashprice_source="fixed",
                        hashprice_age_s=0.0, tariff_usd_per_kwh=0.05, tariff_source="flat",
                        tariff_age_s=0.0)


def test_summary_orders_blocks_best_margin_per_watt_first() -> None:
    fleet = FleetSnapshot((
        _reading("good", 3500.0, 200.0),     # 17.5 J/TH
        _reading("poor", 3300.0, 90.0),      # 36.7 J/TH
        _reading("loser", 3400.0, 40.0),     # loses money: no block, idle in base
        _reading("asleep", 3000.0, 100.0, state="sleeping"),
    ), 0.0)
    s = summarize(fleet, MARKET)
    assert [round(w) for w, _ in s.blocks] == [3460, 2960, 3260]  # good, asleep, poor
    ratios = [m / w for w, m in s.blocks]
    assert ratios == sorted(ratios, reverse=True)
    assert s.base_w == pytest.approx(4 * 40.0)
    assert Summary.from_json(s.as_json()).blocks == tuple(
        (round(w, 1), round(m, 4)) for w, m in s.blocks)


def test_allocation_sheds_the_sites_worst_watts_first_whatever_the_shard() -> None:
    a = Summary(power_w=8000.0, base_w=100.0, blocks=((4000.0, 8.0), (4000.0, 2.0)))
    b = Summary(power_w=8000.0, base_w=100.0, blocks=((4000.0, 6.0), (4000.0, 1.0)))
    # room for base + 10,000 W: a's best (2.0e-3/W), b's best (1.5e-3), then 2,000 W of a's
    # second (0.5e-3); b's worst (0.25e-3) gets nothing
    budgets = allocate(10200.0, {"a": a, "b": b})
    assert budgets == {"a": pytest.approx(100.0 + 4000.0 + 2000.0),
                       "b": pytest.approx(100.0 + 4000.0)}
    assert sum(budgets.values()) == pytest.approx(10200.0)
    # A proportional split would have given each 5,100 W: b would shed its best block.
    assert allocate(1e9, {"a": a, "b": b}) == {"a": 8100.0, "b": 8100.0}
    assert allocate(50.0, {"a": a, "b": b}) == {"a": 100.0, "b": 100.0}  # bases only


def test_large_shards_merge_blocks() -> None:
    fleet = FleetSnapshot(tuple(_reading(f"m{i}", 3000.0, 100.0 + i % 50)
                                for i in range(1000)), 0.0)
    s = summarize(fleet, MARKET)
    assert len(s.blocks) <= MAX_BLOCKS
    assert sum(w for w, _ in s.blocks) == pytest.approx(1000 * (3000.0 - 40.0))


def test_budget_hold_then_safe_fallback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = ClusterConfig(endpoints=["http://127.190.5.1:2379"], site_id="s", instance_id="a",
                        shard="A", site_power_cap_w=10000.0, safe_budget_w=4000.0,
                        budget_hold_s=60.0)
    m = ClusterMember(cfg, Journal(None))
    assert m.budget_in_force() == (4000.0, "safe budget (no budget yet)")
    m.budget_w, m.budget_at = 6500.0, time.time() - 10
    assert m.budget_in_force() == (6500.0, "site budget")
    m.budget_at = time.time() - 61
    budget, source = m.budget_in_force()
    assert budget == 4000.0 and source.startswith("safe budget (the last budget is 6")
    assert m.status().as_json()["budget_w"] == 4000.0


def test_site_cap_needs_a_safe_budget() -> None:
    with pytest.raises(ValueError, match="site_power_cap_w needs safe_budget_w"):
        ClusterConfig(endpoints=["http://127.190.5.1:2379"], site_id="s", instance_id="a",
                      site_power_cap_w=10000.0)
