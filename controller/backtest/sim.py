"""The backtest's simulation core (pure: no files, no clock, no network).

Every ``step_s`` of simulated time (and at every price row) it runs one tick exactly as the
daemon's loop does -- observe the simulated machines, verify the last commands, decide through
``policies.compose.decide_stack``, guard through ``controller.guards.apply_guards`` with a
simulated journal and ramp bucket, act on the machines -- then integrates energy, revenue
after the pool fee, energy cost and margin until the next tick. Two baselines are priced on
the same rows:

- **always-on**: every machine at nameplate power the whole time;
- **optimum** (perfect foresight): per row and per machine, the best of running at nameplate,
  sleeping (idle draw), and the best power target the firmware accepts up to nameplate --
  no guards, no boot time, no switching cost. An upper bound no controller can reach.

Market inputs are treated as fresh at every tick (the prices are the file's), so the
stale-input fail-safe never fires; the ramp bucket starts full, as on a daemon that has been
running for a while.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from controller.backtest.journal import SimJournal
from controller.backtest.machines import SimMachine, hashrate_at_ths
from controller.backtest.prices import PriceRow, PriceSeries
from controller.guards import GuardConfig, RampBucket, apply_guards, memory_window_s
from controller.snapshot import Directives, FleetSnapshot, MarketSnapshot
from emulator.models import ModelSpec
from emulator.physics import ALPHA
from policies.compose import decide_stack

FORECAST_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class SimSettings:
    """What a backtest takes from the configuration besides the policy."""

    guards: GuardConfig
    pool_fee: float
    step_s: float = 60.0
    verify_grace_s: float = 240.0
    flag_after_failures: int = 3
    idle_estimate_w: float = 40.0  # [fleet.power] idle_w: what the driver assumes asleep


@dataclass(slots=True)
class Totals:
    energy_kwh: float = 0.0
    revenue_usd: float = 0.0
    energy_cost_usd: float = 0.0
    switches: int = 0

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
def _market(series: PriceSeries, i: int, pool_fee: float) -> MarketSnapshot:
    row = series.rows[i]
    ahead = tuple((r.at, r.tariff_usd_per_kwh) for r in series.rows[i:]
                  if r.at < row.at + FORECAST_S)
    return MarketSnapshot(
        hashprice_usd_per_th_day=row.hashprice_usd_per_th_day, hashprice_source="backtest",
        hashprice_age_s=0.0, tariff_usd_per_kwh=row.tariff_usd_per_kwh,
        tariff_source="backtest", tariff_age_s=0.0, pool_fee=pool_fee,
        tariff_forecast=ahead, power_cap_w=row.power_cap_w)


def simulate(policy, machines: list[SimMachine], series: PriceSeries,
             settings: SimSettings) -> BacktestResult:
    """Replay ``series`` against ``machines`` (mutated: their accounting) under ``policy``."""
    if not settings.step_s > 0 or not math.isfinite(settings.step_s):
        raise ValueError(f"--step-s: must be a positive number of seconds, got {settings.step_s}")
    cfg = settings.guards
    journal = SimJournal()
    bucket = RampBucket(budget_w=cfg.ramp_w_per_min, updated_at=series.start)
    rows = RowSeries()
    always_on, optimum = Totals(), Totals()
    ticks = commands_sent = 0
    for i, row in enumerate(series.rows):
        row_end = series.row_end(i)
        dt_row = row_end - row.at
        market = _market(series, i, settings.pool_fee)
        directives = Directives(power_cap_w=row.power_cap_w)
        before = [(m.energy_kwh, m.revenue_usd - m.energy_cost_usd) for m in machines]
        t = row.at
        while t < row_end:
            fleet = FleetSnapshot(
                tuple(m.reading(t, settings.idle_estimate_w) for m in machines), taken_at=t)
            verification = journal.verify(fleet, t, settings.verify_grace_s,
                                          settings.flag_after_failures)
            desired = decide_stack(policy, fleet, market, directives, t)
            guarded = apply_guards(fleet, market, desired,
                                   journal.memory(dwell_s=memory_window_s(cfg), now=t),
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
    policy_totals = Totals(
        energy_kwh=sum(m.energy_kwh for m in machines),
        revenue_usd=sum(m.revenue_usd for m in machines),
        energy_cost_usd=sum(m.energy_cost_usd for m in machines),
        switches=sum(m.switches for m in machines))
    return BacktestResult(start=series.start, end=series.end, step_s=settings.step_s,
                          ticks=ticks, commands=commands_sent, policy=policy_totals,
                          always_on=always_on, optimum=optimum, machines=machines, rows=rows)
