"""Switching costs and the prices ahead: which state a machine should be in *now* (pure).

The margin policy ranks run, sleep and a power limit at the price of the moment. A change of
state is not free (``core/switching.py``: a wake boots and ramps, a new limit restarts
the miner), and a price is not forever, so the move the moment's price prefers can lose money:
a wake into a spike the forecast shows, a sleep for a dip shorter than a boot, a new limit
whose gain over the next hour does not pay for its restart. This module weighs each candidate
state over a horizon (``decision_horizon_s``): the price path is the market's forecast
(``MarketSnapshot.tariff_forecast``, e.g. a realtime feed's day-ahead rows or a time-of-use
schedule) where it has rows ahead, else the price now held for the whole horizon. A small
dynamic programme over the path's segments (states: asleep, full power, a power limit, the
machine's present limit) with the switching costs at each segment's price picks the best plan;
its first state is what the machine should do now.

Costs, valued at the price of the segment where they fall (margin forgone, never negative):

- a **wake** forgoes the hashing of the boot and of the ramp after it
  (``SwitchingCosts.wake_hashing_lost_s``);
- a **new power limit** on a hashing machine forgoes ``limit_restart_s`` of hashing;
- a **sleep** is free now, but a machine asleep at the horizon's end will pay a wake later:
  that wake is charged at the end, valued at the *revenue* the boot forgoes (the price at the
  later wake is unknown; revenue is its upper bound), so a sleep must gain more than a boot
  costs over the horizon -- the band that stops a machine cycling on noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from curtaild.core.snapshot import MarketSnapshot
from curtaild.core.switching import SwitchingCosts

ASLEEP = "asleep"


@dataclass(frozen=True, slots=True)
class Segment:
    """The tariff in force for ``duration_s`` (a piece of the price path)."""

    duration_s: float
    tariff_usd_per_kwh: float


@dataclass(frozen=True, slots=True)
class PricePath:
    """The tariff over the decision horizon, from now."""

    segments: tuple[Segment, ...]
    from_forecast: bool  # False: the price now, held (no forecast ahead, or a flat one)

    @property
    def horizon_s(self) -> float:
        return sum(s.duration_s for s in self.segments)

    def mean_tariff_usd_per_kwh(self) -> float:
        h = self.horizon_s
        return sum(s.duration_s * s.tariff_usd_per_kwh for s in self.segments) / h


def price_path(market: MarketSnapshot, now: float, horizon_s: float) -> PricePath:
    """The price now until the forecast's first row after now, then the forecast's rows, up
    to ``now + horizon_s``. Forecast rows at or before now are the past: the quote's price
    now stands for them (a realtime price published after its interval is the best estimate
    of the interval in progress)."""
    end = now + horizon_s
    points = [(now, market.tariff_usd_per_kwh)]
    for t, price in sorted(market.tariff_forecast):
        if now < t < end:
            points.append((t, price))
    segments = tuple(Segment(b[0] - a[0], a[1])
                     for a, b in zip(points, [*points[1:], (end, 0.0)], strict=True))
    ahead = any(s.tariff_usd_per_kwh != market.tariff_usd_per_kwh for s in segments)
    return PricePath(segments=segments, from_forecast=ahead)


@dataclass(frozen=True, slots=True)
class State:
    """A state a machine can hold: asleep, or hashing at a power (``label`` for reasons)."""

    label: str  # ASLEEP, "full power", "limit 1500 W"
    power_w: float  # wall power; idle draw when asleep
    hashrate_ths: float

    @property
    def asleep(self) -> bool:
        return self.label == ASLEEP


@dataclass(frozen=True, slots=True)
class Plan:
    """The best plan over the path that starts in ``first``: its value and what the change
    into ``first`` costs (0 for staying)."""

    first: State
    value_usd: float  # margin over the horizon minus every switching cost in the plan
    switch_cost_usd: float  # the change now into ``first`` (a sleep: its later wake)
    cost_kind: str  # "wake", "restart", "later wake", "" (no change)


MarginFn = Callable[[State, float], float]  # (state, tariff) -> margin USD/day


def plans(present: State, candidates: Sequence[State], path: PricePath, margin: MarginFn,
          costs: SwitchingCosts, *, idle: State, exponent: float, revenue_usd_per_day: float,
          same: Callable[[State, State], bool], limit_band_usd: float = 0.0) -> dict[str, Plan]:
    """The best plan per first state (keyed by label), by dynamic programming over the path;
    ``present`` is where the machine is (the first change is from there; staying is an option
    only when ``present`` is among ``candidates``).

    ``margin(state, tariff)``: USD/day; ``idle``: the machine booting or restarting (idle
    draw, no hashing); ``revenue_usd_per_day``: full-power revenue (a later wake's value);
    ``same(a, b)``: one state (no change between them); ``limit_band_usd``: what a new limit
    must gain beyond its restart (the policy's band against re-limiting on noise).

    A machine asleep now that wakes pays the wake at the price of its segment. A sleep pays
    the wake that will end it, valued at the revenue the boot and ramp forgo (its price is
    unknown), once: a plan that wakes it again within the path pays nothing more."""
    lost_wake_s = costs.wake_hashing_lost_s(exponent)
    later_wake_usd = max(0.0, revenue_usd_per_day) * lost_wake_s / 86_400.0
    segs = path.segments
    # A node is a state, and for "asleep" whether the plan put it to sleep (its wake prepaid).
    nodes = [(st, False) for st in candidates if not st.asleep] + [
        (st, prepaid) for st in candidates if st.asleep for prepaid in (False, True)]
    rate = [[margin(st, g.tariff_usd_per_kwh) for g in segs] for st, _ in nodes]  # USD/day
    idle_rate = [margin(idle, g.tariff_usd_per_kwh) for g in segs]

    def change(a: tuple[State, bool], j: int, k: int) -> float | None:
        """USD the change from node ``a`` to node ``j`` at segment ``k`` costs; None: not a
        move a plan can make."""
        (sa, paid_a), (sb, paid_b) = a, nodes[j]
        if sa.asleep and sb.asleep:
            return 0.0 if paid_a == paid_b else None
        if sb.asleep:  # a sleep: the later wake, paid now
            return later_wake_usd if paid_b else None
        if same(sa, sb):
            return 0.0
        gain_rate = max(0.0, rate[j][k] - idle_rate[k]) / 86_400.0
        if sa.asleep:
            return 0.0 if paid_a else gain_rate * lost_wake_s
        return gain_rate * costs.limit_restart_s + limit_band_usd

    # value[j]: the best margin from segment k to the end, in node j during segment k
    # (backwards, so one pass serves every first state)
    k_last = len(segs) - 1
    value: list[float | None] = [rate[j][k_last] * segs[k_last].duration_s / 86_400.0
                                 for j in range(len(nodes))]
    for k in range(k_last - 1, -1, -1):
        nxt: list[float | None] = []
        for i, a in enumerate(nodes):
            best = None
            for j, v in enumerate(value):
                cost = None if v is None else change(a, j, k + 1)
                if v is not None and cost is not None and (best is None or v - cost > best):
                    best = v - cost
            nxt.append(None if best is None
                       else best + rate[i][k] * segs[k].duration_s / 86_400.0)
        value = nxt
    out: dict[str, Plan] = {}
    for j, first in enumerate(nodes):
        cost_now = change((present, False), j, 0)
        v = value[j]
        if cost_now is None or v is None:
            continue
        st = first[0]
        kind = ("" if cost_now == 0.0 and not (st.asleep and first[1])
                else "later wake" if st.asleep else "wake" if present.asleep else "restart")
        plan = Plan(first=st, value_usd=v - cost_now, switch_cost_usd=cost_now, cost_kind=kind)
        if st.label not in out or plan.value_usd > out[st.label].value_usd:
            out[st.label] = plan
    return out
