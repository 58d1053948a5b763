"""The ``foresight`` baseline: the best schedule a machine could have run knowing every real
price in advance, paying the same switching costs as the policy (dynamic programming).

Why it exists: the per-row ``optimum`` switches for free and decides on each interval's own
price, so a policy is measured against something no controller can approach, and the gap says
little about the policy. ``foresight`` is the tight bound: per machine, over the whole period,
a state per price row -- asleep, or hashing at one of a grid of power targets -- chosen by
dynamic programming over the machine's states with the physics of
:class:`~controller.backtest.machines.SimMachine`:

- a wake hashes nothing for the machine's ``boot_s`` (idle draw), then, where the firmware
  ramps, rises linearly from idle to the target over ``wake_ramp_s``, then runs;
- a new power target on a hashing machine hashes nothing for its ``restart_s`` (the
  family's ``[guards] limit_restart_s``; none with fast boot), then runs at the new target;
- a sleep is immediate; staying costs nothing.

These are the machine's own figures (``core/switching.py``, the table the margin policy
weighs). States change only at row starts (the prices change only there, so nothing is lost),
and a boot, ramp or restart longer than a row is cut at the row's end (rows are minutes; a
wake is at most ten): that only ever flatters the bound. Power targets are a grid of
``LIMIT_LEVELS`` from the firmware's lowest target up to nameplate (tunable firmware only)
plus nameplate and the machine's starting power; a controller choosing targets between grid
points could beat it by the curve's flatness there, a fraction of a percent.
:func:`machine_schedule` is checked against brute force over every schedule run on a
:class:`SimMachine` (tests/controller/test_backtest_foresight.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from curtaild.controller.backtest.machines import SAME_LIMIT_W, SimMachine, hashrate_at_ths
from curtaild.controller.backtest.prices import PriceSeries
from curtaild.core.models import ALPHA
from curtaild.core.switching import ramp_segment

#: Power targets of the grid between the firmware's lowest target and nameplate.
LIMIT_LEVELS = 12
ASLEEP = -1.0  # the state "asleep" in a schedule (a power target is >= 0)


@dataclass(slots=True)
class Schedule:
    """One machine's foresight schedule and its money, per row and in total."""

    states: list[float]  # per row: ASLEEP or the mining power target W
    energy_kwh: list[float]
    revenue_usd: list[float]
    energy_cost_usd: list[float]
    switches: int


def power_options(m: SimMachine) -> list[float]:
    """The states the schedule may hold: ASLEEP (where the firmware sleeps), nameplate, the
    machine's starting power, and for tunable firmware a grid up to nameplate."""
    spec = m.spec
    out = [spec.power_w, m.mining_power_w()]
    if m.supports_power_limit:
        lo, hi = spec.min_power_w, min(spec.max_power_w, spec.power_w)
        n = LIMIT_LEVELS
        out += [lo + (hi - lo) * k / (n - 1) for k in range(n)]
    levels: list[float] = []
    for p in sorted(out):
        if not levels or p - levels[-1] > SAME_LIMIT_W:
            levels.append(p)
    return ([ASLEEP] if m.supports_sleep else []) + levels


def _rates(m: SimMachine, p: float, hashprice: float, tariff: float,
           pool_fee: float) -> tuple[float, float, float]:
    """(kWh, revenue USD, cost USD) per second in state ``p`` (ASLEEP: idle draw)."""
    watts = m.spec.idle_power_w if p == ASLEEP else p
    ths = 0.0 if p == ASLEEP else hashrate_at_ths(m.spec, p)
    kwh = watts / 3_600_000.0
    return kwh, ths * hashprice * (1.0 - pool_fee) / 86_400.0, kwh * tariff


def _wake_row(m: SimMachine, p: float, hashprice: float, tariff: float, pool_fee: float,
              dt: float) -> tuple[float, float, float]:
    """(kWh, revenue USD, cost USD) of a row of ``dt`` s that starts with a wake into ``p``:
    the boot at idle draw, the ramp (power linear from idle to ``p``, hashrate on the curve:
    exactly as SimMachine.advance integrates it), then ``p``."""
    boot = min(m.boot_s, dt)
    ramp_end = min(dt, m.boot_s + m.wake_ramp_s)
    idle = m.spec.idle_power_w
    ths = hashrate_at_ths(m.spec, p)
    load_s, hash_s = ramp_segment(0.0, ramp_end - boot, m.wake_ramp_s, ALPHA)
    rest = dt - max(boot, ramp_end)
    joules = idle * boot + idle * (ramp_end - boot) + (p - idle) * load_s + p * rest
    kwh = joules / 3_600_000.0
    return kwh, ths * (hash_s + rest) * hashprice * (1.0 - pool_fee) / 86_400.0, kwh * tariff


def machine_schedule(m: SimMachine, series: PriceSeries, pool_fee: float) -> Schedule:
    """The best schedule for ``m`` over ``series`` (m is not changed). O(rows x states)."""
    opts = power_options(m)
    start = m.mining_power_w() if m.state == "mining" else ASLEEP
    n = len(opts)
    idx_start = opts.index(start)
    neg = float("-inf")
    value = [neg] * n
    value[idx_start] = 0.0
    back: list[list[int]] = []
    restart = 0.0 if m.fast_boot else m.restart_s
    for i, row in enumerate(series.rows):
        dt = series.row_end(i) - row.at
        h, c = row.hashprice_usd_per_th_day, row.tariff_usd_per_kwh
        rate = [_rates(m, p, h, c, pool_fee) for p in opts]
        margin = [r[1] - r[2] for r in rate]
        idle_m = _rates(m, ASLEEP, h, c, pool_fee)
        idle_margin = idle_m[1] - idle_m[2]
        rst = min(restart, dt)
        woken = [None if p == ASLEEP else _wake_row(m, p, h, c, pool_fee, dt) for p in opts]
        # best and second-best previous hashing states (to exclude "stay" in O(1))
        hashing = [(value[k], k) for k in range(n) if opts[k] != ASLEEP and value[k] > neg]
        hashing.sort(reverse=True)
        asleep_k = opts.index(ASLEEP) if opts[0] == ASLEEP else None
        new, ptr = [neg] * n, [-1] * n
        for k, p in enumerate(opts):
            cands: list[tuple[float, int]] = []
            if value[k] > neg:
                cands.append((value[k] + margin[k] * dt, k))  # stay
            if p == ASLEEP:
                cands += [(value[j] + idle_margin * dt, j) for j in range(n)
                          if j != k and value[j] > neg]
            else:
                if asleep_k is not None and value[asleep_k] > neg:
                    w = woken[k]
                    assert w is not None
                    cands.append((value[asleep_k] + w[1] - w[2], asleep_k))
                other = next(((v, j) for v, j in hashing if j != k), None)
                if other is not None:
                    cands.append((other[0] + idle_margin * rst + margin[k] * (dt - rst),
                                  other[1]))
            if cands:
                new[k], ptr[k] = max(cands)
        value = new
        back.append(ptr)
    # backtrack
    k = max(range(n), key=lambda j: value[j])
    path = [0] * len(series.rows)
    for i in range(len(series.rows) - 1, -1, -1):
        path[i] = k
        k = back[i][k]
    return _account(m, series, pool_fee, [opts[k] for k in path], start)


def _account(m: SimMachine, series: PriceSeries, pool_fee: float, states: list[float],
             start: float) -> Schedule:
    """Money per row of a schedule, with the same transition costs as the DP."""
    restart = 0.0 if m.fast_boot else m.restart_s
    out = Schedule(states=states, energy_kwh=[], revenue_usd=[], energy_cost_usd=[],
                   switches=0)
    prev = start
    for i, row in enumerate(series.rows):
        dt = series.row_end(i) - row.at
        p = states[i]
        h, c = row.hashprice_usd_per_th_day, row.tariff_usd_per_kwh
        lost = 0.0
        if p != prev:
            out.switches += 1
            if p != ASLEEP and prev != ASLEEP:
                lost = min(restart, dt)
        idle = _rates(m, ASLEEP, h, c, pool_fee)
        run = _rates(m, p, h, c, pool_fee)
        parts = [a * lost + b * (dt - lost) for a, b in zip(idle, run, strict=True)]
        if p != prev and p != ASLEEP and prev == ASLEEP:
            parts = list(_wake_row(m, p, h, c, pool_fee, dt))
        out.energy_kwh.append(parts[0])
        out.revenue_usd.append(parts[1])
        out.energy_cost_usd.append(parts[2])
        prev = p
    return out


def fleet_schedules(machines: list[SimMachine], series: PriceSeries,
                    pool_fee: float) -> list[Schedule]:
    """A schedule per machine; identical machines share one computation."""
    cache: dict[tuple, Schedule] = {}
    out = []
    for m in machines:
        key = (m.model, m.state, m.mining_power_w(), m.restart_s, m.fast_boot, m.boot_s,
               m.wake_ramp_s)
        if key not in cache:
            cache[key] = machine_schedule(m, series, pool_fee)
        out.append(cache[key])
    return out
