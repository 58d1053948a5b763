"""The backtest's simulation core (pure: no files, no clock, no network).

Information model: an ISO's real-time price for an interval is published after the interval,
so at time ``t`` the policy decides on the last row *published* by then (a row is published
``price_lag_s`` after it starts; default one row, the realistic case for a real-time feed;
0 = the old, clairvoyant replay) and every machine is *settled* on the real price of the row
it is in. Before the first row is published the policy sees the first row. A demand-response
cap is an instruction, not a price: it applies in its own row. No forecast is given to the
policy (``tariff_forecast`` holds only the published price), so nothing leaks from the future.

Every ``step_s`` of simulated time (and at every price row) it runs one tick exactly as the
daemon's loop does -- observe the simulated machines, verify the last commands, decide through
``policies.compose.decide_stack``, guard through ``controller.guards.apply_guards`` with a
simulated journal and ramp bucket, act on the machines -- then integrates energy, revenue
after the pool fee, energy cost and margin until the next tick. Two baselines are priced on
the same rows:

- **always-on**: every machine at nameplate power the whole time;
- **optimum** (the loose bound): per row and per machine, the best of running at nameplate,
  sleeping (idle draw), and the best power target the firmware accepts up to nameplate, on
  the row's real price -- no guards, no boot time, no switching cost;
- **foresight** (the tight bound, ``controller/backtest/foresight.py``): per machine, the
  best schedule over the whole period knowing every real price, paying the same boot times
  and power-limit restarts as the simulated machines (dynamic programming).

Switching costs in the model (``core/switching.py``, the table the margin policy and
the guards weigh; each reading carries its machine's): a wake hashes nothing for the boot time,
then ramps where the firmware does (Whatsminer, LuxOS); a new power limit on a hashing machine
hashes nothing for its family's ``[guards] limit_restart_s`` (a Whatsminer with ``fast_boot``
excepted).

Market inputs are treated as fresh at every tick (the prices are the file's), so the
stale-input fail-safe never fires; the ramp bucket starts full, as on a daemon that has been
running for a while.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from curtaild.controller.backtest.foresight import fleet_schedules
from curtaild.controller.backtest.journal import SimJournal
from curtaild.controller.backtest.machines import SimMachine, hashrate_at_ths
from curtaild.controller.backtest.prices import PriceRow, PriceSeries
from curtaild.controller.guards import (
    GuardConfig,
    RampBucket,
    apply_guards,
    limit_window_s,
    memory_window_s,
)
from curtaild.core.models import ALPHA, ModelSpec
from curtaild.core.snapshot import Directives, FleetSnapshot, MarketSnapshot
from curtaild.core.switching import costs_for
from curtaild.policies.compose import decide_stack


@dataclass(frozen=True, slots=True)
class SimSettings:
    """What a backtest takes from the configuration besides the policy."""

    guards: GuardConfig
    pool_fee: float
    step_s: float = 60.0
    verify_grace_s: float = 240.0
    flag_after_failures: int = 3
    idle_estimate_w: float = 40.0  # [fleet.power] idle_w: what the driver assumes asleep
    price_lag_s: float | None = None  # when a row is published after it starts; None: one row
    #: how far ahead the price file's forecast column is known (0: no forecast is given)
    forecast_ahead_s: float = 0.0


@dataclass(slots=True)
class Totals:
    energy_kwh: float = 0.0
    revenue_usd: float = 0.0
    energy_cost_usd: float = 0.0
    switches: int | None = 0  # None: not counted (the per-row optimum has no schedule)

    @property
    def margin_usd(self) -> float:
        return self.revenue_usd - self.energy_cost_usd

    def add(self, kwh: float, revenue_usd: float, cost_usd: float) -> None:
        self.energy_kwh += kwh
        self.revenue_usd += revenue_usd
        self.energy_cost_usd += cost_usd


@dataclass(slots=True)
class RowSeries:
    """Per price row: when, the prices, and each strategy's mean power and margin."""

    at: list[float] = field(default_factory=list)
    hashprice_usd_per_th_day: list[float] = field(default_factory=list)
    tariff_usd_per_kwh: list[float] = field(default_factory=list)
    policy_power_w: list[float] = field(default_factory=list)
    always_on_power_w: list[float] = field(default_factory=list)
    optimum_power_w: list[float] = field(default_factory=list)
    policy_margin_usd: list[float] = field(default_factory=list)
    always_on_margin_usd: list[float] = field(default_factory=list)
    optimum_margin_usd: list[float] = field(default_factory=list)
    foresight_power_w: list[float] = field(default_factory=list)
    foresight_margin_usd: list[float] = field(default_factory=list)


@dataclass(slots=True)
class BacktestResult:
    start: float
    end: float
    step_s: float
    ticks: int
    commands: int
    policy: Totals
    always_on: Totals
    optimum: Totals
    machines: list[SimMachine]
    rows: RowSeries
    foresight: Totals = field(default_factory=Totals)
    price_lag_s: float = 0.0
    forecast_ahead_s: float = 0.0


# ------------------------------------------------------------------ baselines
def _option_rates(spec: ModelSpec, row: PriceRow, pool_fee: float, *, can_sleep: bool,
                  can_limit: bool) -> list[tuple[float, float, float]]:
    """(power W, hashrate TH/s, margin USD/day) of run, sleep and the best limit."""
    def point(p: float) -> tuple[float, float, float]:
        h = hashrate_at_ths(spec, p)
        margin = (h * row.hashprice_usd_per_th_day * (1.0 - pool_fee)
                  - p / 1000.0 * 24.0 * row.tariff_usd_per_kwh)
        return p, h, margin

    options = [point(spec.power_w)]
    if can_sleep:
        idle = spec.idle_power_w
        options.append((idle, 0.0, -idle / 1000.0 * 24.0 * row.tariff_usd_per_kwh))
    if can_limit:
        lo, hi = spec.min_power_w, min(spec.max_power_w, spec.power_w)
        candidates = {lo, hi}
        span = spec.power_w - spec.idle_power_w
        rev = spec.hashrate_ths * row.hashprice_usd_per_th_day * (1.0 - pool_fee)
        cost_per_w = 24.0 * row.tariff_usd_per_kwh / 1000.0
        if rev > 0 and cost_per_w > 0 and span > 0:
            # d/dP [rev * x**a - c * P] = 0, x = (P - idle) / span: concave, so the clamped
            # stationary point is the best target in [lo, hi].
            x = (cost_per_w * span / (ALPHA * rev)) ** (1.0 / (ALPHA - 1.0))
            candidates.add(min(hi, max(lo, spec.idle_power_w + span * x)))
        options.extend(point(p) for p in sorted(candidates) if lo <= p <= hi)
    return options


def _baseline_row(m: SimMachine, row: PriceRow, dt: float, pool_fee: float,
                  best: bool) -> tuple[float, float, float]:
    """(kWh, revenue USD, cost USD) of one machine over one row: nameplate or the best option."""
    if best:
        p, h, _ = max(_option_rates(m.spec, row, pool_fee, can_sleep=m.supports_sleep,
                                    can_limit=m.supports_power_limit), key=lambda o: o[2])
    else:
        p, h = m.spec.power_w, m.spec.hashrate_ths
    kwh = p * dt / 3_600_000.0
    return (kwh, h * row.hashprice_usd_per_th_day * (1.0 - pool_fee) * dt / 86_400.0,
            kwh * row.tariff_usd_per_kwh)


# ---------------------------------------------------------------- simulation
def default_lag_s(series: PriceSeries) -> float:
    """One row: the last row's length (the median row spacing)."""
    return series.end - series.rows[-1].at


def _market(series: PriceSeries, i: int, pool_fee: float, power_cap_w: float | None,
            now: float = 0.0, forecast_ahead_s: float = 0.0) -> MarketSnapshot:
    """What the controller knows at ``now``: row ``i`` (the last published) and, with
    ``forecast_ahead_s``, the forecast column of the rows starting in (now, now + ahead] --
    never a real price it could not have seen."""
    row = series.rows[i]
    ahead: tuple[tuple[float, float], ...] = ()
    if forecast_ahead_s > 0:
        starts = series.starts
        rows = series.rows[bisect.bisect_right(starts, now):
                           bisect.bisect_right(starts, now + forecast_ahead_s)]
        ahead = tuple((r.at, r.forecast_tariff_usd_per_kwh) for r in rows
                      if r.forecast_tariff_usd_per_kwh is not None)
    return MarketSnapshot(
        hashprice_usd_per_th_day=row.hashprice_usd_per_th_day, hashprice_source="backtest",
        hashprice_age_s=0.0, tariff_usd_per_kwh=row.tariff_usd_per_kwh,
        tariff_source="backtest", tariff_age_s=0.0, pool_fee=pool_fee,
        tariff_forecast=((row.at, row.tariff_usd_per_kwh), *ahead), power_cap_w=power_cap_w)


def simulate(policy, machines: list[SimMachine], series: PriceSeries,
             settings: SimSettings) -> BacktestResult:
    """Replay ``series`` against ``machines`` (mutated: their accounting) under ``policy``."""
    if not settings.step_s > 0 or not math.isfinite(settings.step_s):
        raise ValueError(f"--step-s: must be a positive number of seconds, got {settings.step_s}")
    cfg = settings.guards
    lag = default_lag_s(series) if settings.price_lag_s is None else settings.price_lag_s
    if not (lag >= 0 and math.isfinite(lag)):
        raise ValueError(f"--price-lag-s: must be 0 or more seconds, got {lag}")
    ahead = settings.forecast_ahead_s
    if not (ahead >= 0 and math.isfinite(ahead)):
        raise ValueError(f"--forecast-ahead-s: must be 0 or more seconds, got {ahead}")
    published_at = [r.at + lag for r in series.rows]
    for m in machines:  # the restart the guards and the policy weigh is the one they pay
        m.restart_s = costs_for(m.spec.firmware, m.spec.model,
                                limit_restart_s=cfg.limit_restart_s).limit_restart_s
    schedules = fleet_schedules(machines, series, settings.pool_fee)
    journal = SimJournal()
    bucket = RampBucket(budget_w=cfg.ramp_w_per_min, updated_at=series.start,
                        shed_budget_w=cfg.shed_ramp_w_per_min)
    rows = RowSeries()
    always_on, optimum = Totals(), Totals()
    ticks = commands_sent = 0
    for i, row in enumerate(series.rows):
        row_end = series.row_end(i)
        dt_row = row_end - row.at
        directives = Directives(power_cap_w=row.power_cap_w)
        before = [(m.energy_kwh, m.revenue_usd - m.energy_cost_usd) for m in machines]
        t = row.at
        while t < row_end:
            seen = max(0, bisect.bisect_right(published_at, t) - 1)
            market = _market(series, seen, settings.pool_fee, row.power_cap_w, t,
                             settings.forecast_ahead_s)
            fleet = FleetSnapshot(
                tuple(m.reading(t, settings.idle_estimate_w) for m in machines), taken_at=t)
            verification = journal.verify(fleet, t, settings.verify_grace_s,
                                          settings.flag_after_failures)
            desired = decide_stack(policy, fleet, market, directives, t)
            guarded = apply_guards(fleet, market, desired,
                                   journal.memory(dwell_s=memory_window_s(cfg), now=t,
                                                  limit_window_s=limit_window_s(cfg)),
                                   bucket, cfg, t)
            bucket = guarded.bucket
            commands = journal.recommands(guarded.commands, fleet, verification)
            by_key = {m.key: m for m in machines}
            readings = fleet.by_key()
            for c in commands[: cfg.max_commands_per_tick]:
                journal.record_intent(c, readings[c.key].power_limit_w, t)
                by_key[c.key].apply(c, t)
                commands_sent += 1
            ticks += 1
            nxt = min(t + settings.step_s, row_end)
            k = bisect.bisect_right(published_at, t)  # the next publication is a tick too
            if k < len(published_at) and t < published_at[k] < nxt:
                nxt = published_at[k]
            for m in machines:
                m.advance(t, nxt, row.hashprice_usd_per_th_day, row.tariff_usd_per_kwh,
                          settings.pool_fee)
            t = nxt
        row_on, row_best = Totals(), Totals()
        for m in machines:
            row_on.add(*_baseline_row(m, row, dt_row, settings.pool_fee, best=False))
            row_best.add(*_baseline_row(m, row, dt_row, settings.pool_fee, best=True))
        for total, part in ((always_on, row_on), (optimum, row_best)):
            total.add(part.energy_kwh, part.revenue_usd, part.energy_cost_usd)
        rows.at.append(row.at)
        rows.hashprice_usd_per_th_day.append(row.hashprice_usd_per_th_day)
        rows.tariff_usd_per_kwh.append(row.tariff_usd_per_kwh)
        rows.policy_power_w.append(
            sum(m.energy_kwh - b[0] for m, b in zip(machines, before, strict=True))
            * 3_600_000.0 / dt_row)
        rows.policy_margin_usd.append(
            sum(m.revenue_usd - m.energy_cost_usd - b[1]
                for m, b in zip(machines, before, strict=True)))
        rows.always_on_power_w.append(row_on.energy_kwh * 3_600_000.0 / dt_row)
        rows.always_on_margin_usd.append(row_on.margin_usd)
        rows.optimum_power_w.append(row_best.energy_kwh * 3_600_000.0 / dt_row)
        rows.optimum_margin_usd.append(row_best.margin_usd)
        rows.foresight_power_w.append(sum(sc.energy_kwh[i] for sc in schedules)
                                      * 3_600_000.0 / dt_row)
        rows.foresight_margin_usd.append(sum(sc.revenue_usd[i] - sc.energy_cost_usd[i]
                                             for sc in schedules))
    policy_totals = Totals(
        energy_kwh=sum(m.energy_kwh for m in machines),
        revenue_usd=sum(m.revenue_usd for m in machines),
        energy_cost_usd=sum(m.energy_cost_usd for m in machines),
        switches=sum(m.switches for m in machines))
    optimum.switches = None  # per-row choices, not a schedule: its switches mean nothing
    foresight = Totals(energy_kwh=sum(sum(sc.energy_kwh) for sc in schedules),
                       revenue_usd=sum(sum(sc.revenue_usd) for sc in schedules),
                       energy_cost_usd=sum(sum(sc.energy_cost_usd) for sc in schedules),
                       switches=sum(sc.switches for sc in schedules))
    return BacktestResult(start=series.start, end=series.end, step_s=settings.step_s,
                          ticks=ticks, commands=commands_sent, policy=policy_totals,
                          always_on=always_on, optimum=optimum, machines=machines, rows=rows,
                          foresight=foresight, price_lag_s=lag,
                          forecast_ahead_s=settings.forecast_ahead_s)
