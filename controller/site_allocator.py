"""Shards of one site under one power cap: summaries and the allocation (issue 19). Pure.

Each shard's leader publishes a *summary* of its fleet after every tick: ``base_w``, what the
shard draws with every machine that earns asleep (idle draws, plus what it cannot see), and
``blocks``, the watts each group of earning machines adds when it runs and the margin (USD per
day) those watts bring, best margin per watt first. The blocks are the shard's demand curve;
read backwards, they are "the margin lost per watt shed". They depend on the market and the
machines, not on what the shard runs now, so an allocation does not chase its own effects.

The site allocator (the instance that leads the site's allocator election) divides the site
cap: every shard first gets its ``base_w``; the rest goes to the blocks of all shards in order
of margin per watt, best first, until it is used up (the last block taken in part). A shard's
budget is its base plus its blocks taken: the site sheds its worst watts first, whichever
shard they are in. A shard obeys its budget as a power cap (policies/power_cap.py sheds its
own worst machines first).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from curtaild.core import economics
from curtaild.core.snapshot import FleetSnapshot, MarketSnapshot
from curtaild.policies import layer

#: a summary holds at most this many blocks (machines of similar margin per watt merged)
MAX_BLOCKS = 64


@dataclass(frozen=True)
class Summary:
    power_w: float  # what the shard draws now (its last observation)
    base_w: float
    blocks: tuple[tuple[float, float], ...]  # (watts, margin USD/day), best margin/W first

    def as_json(self) -> dict:
        return {"power_w": round(self.power_w, 1), "base_w": round(self.base_w, 1),
                "blocks": [[round(w, 1), round(m, 4)] for w, m in self.blocks]}

    @classmethod
    def from_json(cls, data: Mapping) -> Summary:
        blocks = tuple((float(w), float(m)) for w, m in data.get("blocks", []))
        return cls(float(data["power_w"]), float(data["base_w"]), blocks)


def summarize(fleet: FleetSnapshot, market: MarketSnapshot | None) -> Summary:
    """The shard's summary from its last observation and market."""
    power_now = sum(r.power_w for r in fleet.miners)
    base = 0.0
    parts: list[tuple[float, float]] = []
    for r in fleet.miners:
        if r.state == "unreachable":
            base += r.nameplate_power_w or 0.0  # unseen: counted at full power, never shed
            continue
        idle, full_w, full_h = layer.idle_w(r), layer.full_power_w(r), layer.full_hashrate_ths(r)
        base += idle
        if market is None or full_w <= idle or full_h <= 0:
            base += max(0.0, full_w - idle)  # no economics: counted, never allocated
            continue
        margin = economics.margin_usd_per_day(
            hashrate_ths=full_h, power_w=full_w,
            hashprice_usd_per_th_day=market.hashprice_usd_per_th_day,
            tariff_usd_per_kwh=market.tariff_usd_per_kwh, pool_fee=market.pool_fee)
        idle_cost = economics.margin_usd_per_day(
            hashrate_ths=0.0, power_w=idle,
            hashprice_usd_per_th_day=market.hashprice_usd_per_th_day,
            tariff_usd_per_kwh=market.tariff_usd_per_kwh, pool_fee=market.pool_fee)
        gain = margin - idle_cost
        if gain > 0:
            parts.append((full_w - idle, gain))
    parts.sort(key=lambda p: p[1] / p[0], reverse=True)
    return Summary(power_now, base, _merge(parts))


def _merge(parts: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """At most MAX_BLOCKS blocks: neighbours in margin-per-watt order merged."""
    if len(parts) <= MAX_BLOCKS:
        return tuple(parts)
    size = -(-len(parts) // MAX_BLOCKS)
    out = []
    for i in range(0, len(parts), size):
        chunk = parts[i:i + size]
        out.append((sum(w for w, _ in chunk), sum(m for _, m in chunk)))
    return tuple(out)


def allocate(cap_w: float, summaries: Mapping[str, Summary]) -> dict[str, float]:
    """Budget per shard: base first, then the best margin per watt across shards."""
    budgets = {name: s.base_w for name, s in summaries.items()}
    left = cap_w - sum(budgets.values())
    blocks: list[tuple[float, str, float]] = []
    for name, s in summaries.items():
        for watts, margin in s.blocks:
            if watts > 0:
                blocks.append((margin / watts, name, watts))
    blocks.sort(key=lambda b: (-b[0], b[1]))
    for _, name, watts in blocks:
        if left <= 0:
            break
        take = min(watts, left)
        budgets[name] += take
        left -= take
    return budgets


def shed_order(summaries: Iterable[Summary]) -> list[float]:
    """Margin per watt of every block, worst first (for reports and tests)."""
    return sorted(m / w for s in summaries for w, m in s.blocks if w > 0)
