"""The margin policy: run a machine when it earns more than it costs, else limit or sleep it.

Per reachable miner, three marginal margins (revenue after pool fee minus energy, USD/day; sunk
costs stay out, see core/economics.py):

- **run**: at full power. Measured hashrate and power when the machine is mining unlimited;
  nameplate when it is asleep (what a wake would give); when it is power-limited, the
  measured point scaled back up to nameplate power along the efficiency curve.
- **sleep**: minus the energy of its idle draw (control board and fans keep running).
- **limit** (firmware that takes a power target, when ``use_power_limits``): the best margin
  over power targets in [min_power_limit_w, min(max_power_limit_w, nameplate)], estimated with
  hashrate ~ (P - idle)^exponent (``economics.hashrate_at_power_ths``): the closed-form optimum
  of that concave curve plus a grid of ``limit_search_steps`` targets, whichever is best. The
  curve runs through the *nameplate* point with the configured idle draw, never through this
  poll's measured figures: the chosen limit is a function of the model and the prices only, so
  noise in a reading cannot produce a "new" limit (each costs a Whatsminer a ~2 min restart).

The best of the three wins, with two biases an operator expects: a tie between run and sleep
runs (a site is built to mine), and a limit is chosen only if it beats both run and sleep by
``min_limit_gain_usd_per_day`` -- except that a machine *already* limited stays limited until
running at full power beats the limit by that gain (a band, so run <-> limit does not flap; the
guards apply their own band only around zero margin). Machines whose firmware cannot sleep are
never asked to.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Annotated, ClassVar

from pydantic import Field

from curtaild.core import economics, switching
from curtaild.core.bounds import at_most
from curtaild.core.snapshot import Desired, FleetSnapshot, MarketSnapshot, MinerReading
from curtaild.policies.base import PolicyConfig
from curtaild.policies.lookahead import ASLEEP, Plan, State, plans, price_path

_FULL = "full power"


def _limit_tolerance_w(target_w: float) -> float:
    """Power limits within max(25 W, 2 %) are the same limit (same rule as the guards)."""
    return max(25.0, 0.02 * target_w)


class MarginConfig(PolicyConfig):
    """``[policy]`` keys of the margin policy (``name = "margin"``)."""

    efficiency_exponent: float = Field(0.75, gt=0.0, le=1.0)
    """Hashrate ~ (power - idle)^exponent under a power limit; < 1 means a limited machine is
    more efficient (lower voltage). 1.0 assumes constant J/TH."""

    idle_power_w: Annotated[float, at_most(
        5000.0, "a sleeping machine draws tens of watts (board and fans)", unit="W")] = Field(
        40.0, ge=0.0)
    """Draw of a sleeping machine (control board, fans), W, when its firmware reports none."""

    use_power_limits: bool = True
    """Power-limit machines whose firmware allows it, when that earns more than run or sleep."""

    limit_search_steps: Annotated[int, at_most(
        10_000, "every step is evaluated for every machine on every tick", unit="")] = Field(
        41, ge=2)
    """Power targets tried between the firmware's lowest and highest (plus the closed form)."""

    min_limit_gain_usd_per_day: float = Field(0.05, ge=0.0)
    """A limit must beat both running and sleeping by at least this much to be chosen."""

    switching_costs: bool = True
    """Change a machine's state or power limit only when the gain over decision_horizon_s beats
    what the change costs: the boot and ramp of a wake, the restart of a new limit
    (core/switching.py; [guards] limit_restart_s). false: follow the price of the moment."""

    decision_horizon_s: Annotated[float, at_most(
        7 * 86400.0, "a change is weighed over the time it is expected to stand; prices move "
        "within a day")] = Field(3600.0, gt=0.0)
    """How long a change is expected to stand, s: its gain over this horizon -- on the tariff
    forecast where the market has rows ahead, else on the price now -- must beat its cost."""


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """A (power, hashrate) pair and where it came from, for the numbers in a reason."""

    power_w: float
    hashrate_ths: float
    basis: str


@dataclass(frozen=True, slots=True)
class Option:
    action: str
    margin_usd_per_day: float
    point: OperatingPoint | None = None


class MarginPolicy:
    """Sleep (or power-limit) machines whose marginal margin is negative."""

    name: ClassVar[str] = "margin"
    Config: ClassVar[type[MarginConfig]] = MarginConfig

    def __init__(self, config: MarginConfig | None = None):
        self.config = config if config is not None else MarginConfig()

    # ---------------------------------------------------------------- public
    def decide(
        self, fleet: FleetSnapshot, market: MarketSnapshot, now: float
    ) -> dict[str, Desired]:
        """One Desired per reachable miner whose full-power figures are known."""
        out: dict[str, Desired] = {}
        for r in fleet.miners:
            d = self.decide_one(r, market, now)
            if d is not None:
                out[r.key] = d
        return out

    def decide_one(self, r: MinerReading, market: MarketSnapshot,
                   now: float | None = None) -> Desired | None:
        """``now`` (default: the reading's time) places the tariff forecast's rows."""
        if r.state == "unreachable":
            return None
        idle = self._idle_w(r)
        full = self.full_power_point(r, idle)
        if full is None or full.power_w <= idle:
            return None
        run = Option("run", self._margin(full.power_w, full.hashrate_ths, market), full)
        sleep = Option("sleep", -self._energy(idle, market))
        # The limit is chosen on the model (nameplate, efficiency curve, config idle draw) and
        # the prices, never on this poll's measured power and hashrate: those carry noise, and
        # a target that moves with them made every Whatsminer restart for a "new" limit each
        # time its last restart ended (issue 15). Run vs limit is compared on the same model.
        model = self.model_point(r, full)
        curve_idle = self.config.idle_power_w
        limit = self.best_limit(r, model, curve_idle, market)
        run_model = self._margin(model.power_w, model.hashrate_ths, market)
        choice = self._choose(r, run, sleep, limit, run_model)
        weighed = ""
        if self.config.switching_costs:
            choice, weighed = self._weigh(r, market, r.observed_at if now is None else now,
                                          run, sleep, choice, model, curve_idle, idle)
        ref = model if choice.action == "limit" else full  # the basis of choice's margin
        return Desired(
            action=choice.action,  # type: ignore[arg-type]
            reason=_with_weighing(self._reason(r, choice, run, sleep, idle, market), weighed),
            power_limit_w=choice.point.power_w if choice.action == "limit" and choice.point
            else None,
            margin_usd_per_day=choice.margin_usd_per_day,
            run_margin_usd_per_day=run.margin_usd_per_day,
            hold_margin_usd_per_day=self.hold_margin(r, ref, curve_idle, sleep, market),
            sleep_margin_usd_per_day=sleep.margin_usd_per_day,
        )

    # ------------------------------------------------------------- operating
    def _idle_w(self, r: MinerReading) -> float:
        """A sleeping machine's own firmware figure if it reports one, else the config's."""
        if r.state == "sleeping" and r.power_source == "firmware" and r.power_w > 0:
            return r.power_w
        return self.config.idle_power_w

    @staticmethod
    def is_limited(r: MinerReading) -> bool:
        """Mining under a power limit meaningfully below nameplate (set by anyone)."""
        plate = r.nameplate_power_w
        if r.state != "mining" or r.power_limit_w is None or not plate:
            return False
        return r.power_limit_w < plate - _limit_tolerance_w(plate)

    def full_power_point(self, r: MinerReading, idle_w: float) -> OperatingPoint | None:
        """What the machine hashes and draws at full power; None when unknown."""
        plate_h, plate_p = r.nameplate_hashrate_ths, r.nameplate_power_w
        nameplate = (
            OperatingPoint(plate_p, plate_h, "nameplate") if plate_h and plate_p else None
        )
        if r.state != "mining":
            return nameplate
        if self.is_limited(r):
            return self._scaled_to_nameplate(r, idle_w) or nameplate
        if r.hashrate_ths > 0 and r.power_w > 0 and r.power_source != "none":
            return OperatingPoint(r.power_w, r.hashrate_ths, "measured")
        return nameplate

    @staticmethod
    def model_point(r: MinerReading, full: OperatingPoint) -> OperatingPoint:
        """The full-power point a power limit is chosen from: the nameplate when known (a
        constant of the machine, so the chosen limit is a function of the prices alone), else
        ``full`` (no nameplate: measured; the guards' limit band absorbs its noise)."""
        plate_h, plate_p = r.nameplate_hashrate_ths, r.nameplate_power_w
        if plate_h and plate_p:
            return OperatingPoint(plate_p, plate_h, "nameplate")
        return full

    def hold_margin(self, r: MinerReading, ref: OperatingPoint, idle_w: float, sleep: Option,
                    market: MarketSnapshot) -> float:
        """Margin of leaving the machine as it is, on the curve through ``ref``: asleep, at
        its present power limit, or at full power. The guards weigh a limit change's gain
        (chosen margin minus this) against the hashing its restart costs."""
        if r.state == "sleeping":
            return sleep.margin_usd_per_day
        if self.is_limited(r) and r.power_limit_w is not None:
            return self._curve_margin(r.power_limit_w, ref, idle_w, market)
        return self._margin(ref.power_w, ref.hashrate_ths, market)

    def _curve_margin(self, power_w: float, ref: OperatingPoint, idle_w: float,
                      market: MarketSnapshot) -> float:
        """Margin at ``power_w`` along hashrate ~ (P - idle)^exponent through ``ref``."""
        h = 0.0 if power_w <= idle_w else economics.hashrate_at_power_ths(
            power_w=power_w, ref_power_w=ref.power_w, ref_hashrate_ths=ref.hashrate_ths,
            idle_power_w=idle_w, exponent=self.config.efficiency_exponent)
        return self._margin(power_w, h, market)

    def _scaled_to_nameplate(self, r: MinerReading, idle_w: float) -> OperatingPoint | None:
        """A limited machine's measured point moved up the curve to nameplate power."""
        assert r.nameplate_power_w is not None and r.power_limit_w is not None
        # Without a firmware wattage the power figure is a table value, not the limited draw.
        ref_p = r.power_w if r.power_source == "firmware" and r.power_w > 0 else r.power_limit_w
        if r.hashrate_ths <= 0 or ref_p <= idle_w:
            return None
        h = economics.hashrate_at_power_ths(
            power_w=r.nameplate_power_w, ref_power_w=ref_p, ref_hashrate_ths=r.hashrate_ths,
            idle_power_w=idle_w, exponent=self.config.efficiency_exponent,
        )
        return OperatingPoint(r.nameplate_power_w, h, f"measured at {ref_p:.0f} W, scaled")

    # ------------------------------------------------------------------ limit
    def limit_range_w(self, r: MinerReading, full: OperatingPoint) -> tuple[float, float] | None:
        """[lowest, highest] power target worth trying, whole watts; None when none."""
        if not (self.config.use_power_limits and r.supports_power_limit):
            return None
        if r.min_power_limit_w is None:
            return None
        hi = min(r.max_power_limit_w or math.inf, r.nameplate_power_w or full.power_w)
        lo, hi = math.ceil(r.min_power_limit_w), math.floor(hi)
        return (float(lo), float(hi)) if lo < hi else None

    def best_limit(self, r: MinerReading, full: OperatingPoint, idle_w: float,
                   market: MarketSnapshot) -> Option | None:
        """The most profitable power target meaningfully below full power, if any."""
        bounds = self.limit_range_w(r, full)
        if bounds is None:
            return None
        lo, hi = bounds
        best: Option | None = None
        for p in self._candidates(lo, hi, full, idle_w, market):
            if p >= full.power_w - _limit_tolerance_w(full.power_w) or p <= idle_w:
                continue  # the same as running, or nothing left to hash with
            h = economics.hashrate_at_power_ths(
                power_w=p, ref_power_w=full.power_w, ref_hashrate_ths=full.hashrate_ths,
                idle_power_w=idle_w, exponent=self.config.efficiency_exponent,
            )
            m = self._margin(p, h, market)
            if best is None or m > best.margin_usd_per_day:
                best = Option("limit", m, OperatingPoint(p, h, "curve"))
        return best

    def _candidates(self, lo: float, hi: float, full: OperatingPoint, idle_w: float,
                    market: MarketSnapshot) -> list[float]:
        n = self.config.limit_search_steps
        grid = {float(round(lo + (hi - lo) * i / (n - 1))) for i in range(n)}
        opt = self.optimal_power_w(full, idle_w, market)
        if opt is not None:
            grid.add(float(min(hi, max(lo, round(opt)))))
        return sorted(grid)

    def optimal_power_w(self, full: OperatingPoint, idle_w: float,
                        market: MarketSnapshot) -> float | None:
        """Closed form: d/dP [R (x^e) - c P] = 0 with x = (P - idle)/(P_full - idle).

        R is full-power revenue and c the energy cost per watt-day; the curve is concave for
        e < 1, so the clamped optimum is the best target in any interval. None when it has no
        interior optimum (e = 1, no revenue, or free/negative energy).
        """
        e = self.config.efficiency_exponent
        span = full.power_w - idle_w
        rev = economics.revenue_usd_per_day(
            hashrate_ths=full.hashrate_ths,
            hashprice_usd_per_th_day=market.hashprice_usd_per_th_day,
            pool_fee=self.config.pool_fee,
        )
        c = self._energy(1.0, market)
        if e >= 1.0 or rev <= 0 or c <= 0 or span <= 0:
            return None
        x = (c * span / (e * rev)) ** (1.0 / (e - 1.0))
        return float(idle_w + span * x)

    # ----------------------------------------------------------------- choose
    def _choose(self, r: MinerReading, run: Option, sleep: Option,
                limit: Option | None, run_model_usd_per_day: float) -> Option:
        """``run_model_usd_per_day``: full power on the model the limit was chosen on (the
        limit is compared with running on one basis, so noise cannot tip run <-> limit)."""
        can_sleep = r.supports_sleep
        base = run if (not can_sleep or run.margin_usd_per_day >= sleep.margin_usd_per_day) \
            else sleep
        if limit is None:
            return base
        gain = self.config.min_limit_gain_usd_per_day
        need_vs_run = -gain if self.is_limited(r) else gain
        beats_run = limit.margin_usd_per_day - run_model_usd_per_day >= need_vs_run
        beats_sleep = not can_sleep or limit.margin_usd_per_day - sleep.margin_usd_per_day >= gain
        return limit if beats_run and beats_sleep else base

    # -------------------------------------------------------------- switching
    def _present(self, r: MinerReading, full: OperatingPoint, model: OperatingPoint,
                 curve_idle_w: float, idle_w: float) -> State:
        """Where the machine is -- or is heading, while curtaild's last command to it is
        pending (a booting machine reads asleep: its wake is already paid for)."""
        action, limit_w = None, None
        if r.command_state in ("pending", "transitioning") and r.commanded_action:
            action, limit_w = r.commanded_action, r.commanded_power_limit_w
        elif r.state == "sleeping":
            action = "sleep"
        elif self.is_limited(r):
            action, limit_w = "limit", r.power_limit_w
        if action == "sleep":
            return State(ASLEEP, idle_w, 0.0)
        if limit_w is not None and limit_w < full.power_w - _limit_tolerance_w(full.power_w):
            return self._limit_state(limit_w, model, curve_idle_w)
        return State(_FULL, full.power_w, full.hashrate_ths)

    def _limit_state(self, power_w: float, model: OperatingPoint, curve_idle_w: float) -> State:
        h = 0.0 if power_w <= curve_idle_w else economics.hashrate_at_power_ths(
            power_w=power_w, ref_power_w=model.power_w, ref_hashrate_ths=model.hashrate_ths,
            idle_power_w=curve_idle_w, exponent=self.config.efficiency_exponent)
        return State(f"limit {power_w:.0f} W", power_w, h)

    def _weigh(self, r: MinerReading, market: MarketSnapshot, now: float, run: Option,
               sleep: Option, choice: Option, model: OperatingPoint, curve_idle_w: float,
               idle_w: float) -> tuple[Option, str]:
        """The state the price now prefers (``choice``), weighed over the horizon against what
        changing costs (policies/lookahead.py): the option to take now, and why in words."""
        cfg = self.config
        full = run.point
        assert full is not None
        path = price_path(market, now, cfg.decision_horizon_s)
        costs = r.switching or switching.costs_for(r.firmware, r.model)
        present = self._present(r, full, model, curve_idle_w, idle_w)
        if present.label == _FULL:
            present = State(_FULL, model.power_w, model.hashrate_ths) \
                if self.limit_range_w(r, full) is not None else present
        asleep = State(ASLEEP, idle_w, 0.0)
        # Full power on the basis limits are compared on (the model, where the machine takes
        # limits: noise in a reading must not tip run <-> limit), else as measured.
        tunable = self.limit_range_w(r, full) is not None
        top = model if tunable else full
        states = [State(_FULL, top.power_w, top.hashrate_ths)]
        if r.supports_sleep:
            states.append(asleep)
        if present.label not in (_FULL, ASLEEP) and tunable:
            states.append(present)  # holding a limit: only where the policy may limit
        # The limit worth holding over the horizon: chosen at its mean price (margins are
        # linear in the tariff, so that is the best fixed target for the whole path).
        lim = choice
        if path.from_forecast:
            mean = replace(market, tariff_usd_per_kwh=path.mean_tariff_usd_per_kwh())
            m_limit = self.best_limit(r, model, curve_idle_w, mean)
            m_run = Option("run", self._margin(full.power_w, full.hashrate_ths, mean), full)
            m_sleep = Option("sleep", -self._energy(idle_w, mean))
            lim = self._choose(r, m_run, m_sleep, m_limit,
                               self._margin(model.power_w, model.hashrate_ths, mean))
        if lim.action == "limit" and lim.point is not None and not any(
                _same_power(s, lim.point.power_w) for s in states):
            states.append(State(f"limit {lim.point.power_w:.0f} W", lim.point.power_w,
                                lim.point.hashrate_ths))

        revenue_per_ths = market.hashprice_usd_per_th_day * (1.0 - cfg.pool_fee)

        def margin(s: State, tariff: float) -> float:
            """USD/day in ``s`` at ``tariff`` (economics.margin_usd_per_day, inlined: this runs
            for every state, segment and machine on every tick)."""
            return s.hashrate_ths * revenue_per_ths - s.power_w / 1000.0 * 24.0 * tariff

        def same(a: State, b: State) -> bool:
            if a.asleep or b.asleep:
                return a.asleep and b.asleep
            return _same_power(a, b.power_w)

        revenue = economics.revenue_usd_per_day(
            hashrate_ths=full.hashrate_ths,
            hashprice_usd_per_th_day=market.hashprice_usd_per_th_day, pool_fee=cfg.pool_fee)
        found = plans(present, states, path, margin, costs, idle=asleep,
                      exponent=cfg.efficiency_exponent, revenue_usd_per_day=revenue, same=same,
                      limit_band_usd=cfg.min_limit_gain_usd_per_day * path.horizon_s / 86_400.0)
        best = max(found.values(), key=lambda p: (p.value_usd, same(p.first, present)))
        stay = next((p for p in found.values() if same(p.first, present)), None)
        if stay is None:  # staying is not an option (a limit the policy may not hold)
            return self._option_of(best.first, run, sleep, choice, margin, market), ""
        want = next((p for p in found.values() if same(p.first, self._state_of(choice, full,
                                                                              idle_w))), best)
        over = (f"over the next {path.horizon_s / 3600:.1f} h"
                + (" of forecast" if path.from_forecast else ""))
        if same(best.first, present):
            if same(want.first, present):
                return self._option_of(best.first, run, sleep, choice, margin, market), ""
            gain = want.value_usd + want.switch_cost_usd - stay.value_usd
            return self._option_of(present, run, sleep, choice, margin, market), (
                f"kept ({self._move(want)} would gain {gain:.4f} USD {over}, not more than "
                f"its {self._cost(want, costs)})")
        gain = best.value_usd + best.switch_cost_usd - stay.value_usd
        return self._option_of(best.first, run, sleep, choice, margin, market), (
            f"gains {gain:.4f} USD {over} > {self._cost(best, costs)}")

    @staticmethod
    def _state_of(o: Option, full: OperatingPoint, idle_w: float) -> State:
        if o.action == "sleep":
            return State(ASLEEP, idle_w, 0.0)
        p = o.point if o.action == "limit" and o.point is not None else full
        return State("", p.power_w, p.hashrate_ths)

    @staticmethod
    def _option_of(s: State, run: Option, sleep: Option, choice: Option,
                   margin: Callable[[State, float], float], market: MarketSnapshot) -> Option:
        """The Option that puts the machine in ``s`` (its margin at the price now)."""
        if s.asleep:
            return sleep
        if s.label == _FULL:
            return run
        if choice.action == "limit" and choice.point is not None and \
                _same_power(s, choice.point.power_w):
            return choice
        # a limit chosen on the horizon's mean price, or the machine's present limit
        return Option("limit", margin(s, market.tariff_usd_per_kwh),
                      OperatingPoint(s.power_w, s.hashrate_ths, "curve"))

    @staticmethod
    def _move(p: Plan) -> str:
        s = p.first
        return "sleep" if s.asleep else ("run at full power" if s.label == _FULL else s.label)

    @staticmethod
    def _cost(p: Plan, costs: switching.SwitchingCosts) -> str:
        what = {"wake": costs.describe_wake(), "later wake": costs.describe_wake(),
                "restart": f"restart {costs.limit_restart_s:.0f} s"}.get(p.cost_kind, "")
        return (f"{p.cost_kind} cost {p.switch_cost_usd:.4f} USD ({what})" if what
                else "cost 0.0000 USD")

    # ---------------------------------------------------------------- numbers
    def _margin(self, power_w: float, hashrate_ths: float, market: MarketSnapshot) -> float:
        return economics.margin_usd_per_day(
            hashrate_ths=hashrate_ths, power_w=power_w,
            hashprice_usd_per_th_day=market.hashprice_usd_per_th_day,
            tariff_usd_per_kwh=market.tariff_usd_per_kwh, pool_fee=self.config.pool_fee,
        )

    @staticmethod
    def _energy(power_w: float, market: MarketSnapshot) -> float:
        return economics.energy_cost_usd_per_day(
            power_w=power_w, tariff_usd_per_kwh=market.tariff_usd_per_kwh)

    def _reason(self, r: MinerReading, choice: Option, run: Option, sleep: Option,
                idle_w: float, market: MarketSnapshot) -> str:
        full = run.point
        assert full is not None
        mk = (f"at {market.hashprice_usd_per_th_day:.4f} USD/TH/day, "
              f"{market.tariff_usd_per_kwh:.3f} USD/kWh, pool fee {self.config.pool_fee:.1%}")
        at_full = (f"margin {run.margin_usd_per_day:+.2f} USD/day at full power "
                   f"({full.hashrate_ths:.1f} TH/s, {full.power_w:.0f} W, {full.basis})")
        asleep = f"{sleep.margin_usd_per_day:+.2f} asleep (idle {idle_w:.0f} W)"
        if choice.action == "limit":
            p = choice.point
            assert p is not None
            return (f"limit {p.power_w:.0f} W: margin {choice.margin_usd_per_day:+.2f} USD/day "
                    f"(~{p.hashrate_ths:.1f} TH/s) vs {run.margin_usd_per_day:+.2f} at full "
                    f"power, {asleep}, {mk}")
        if choice.action == "sleep":
            return f"sleep: {at_full} vs {asleep}, {mk}"
        if not r.supports_sleep:
            fw = r.firmware or "its"
            return f"run (cannot sleep: {fw} firmware has no sleep): {at_full}, {mk}"
        return f"run: {at_full} vs {asleep}, {mk}"


def _same_power(s: State, power_w: float) -> bool:
    """A hashing state at ``power_w`` (within the limit tolerance)."""
    return not s.asleep and abs(s.power_w - power_w) <= _limit_tolerance_w(
        max(s.power_w, power_w))


def _with_weighing(reason: str, weighed: str) -> str:
    """``weighed`` right after the reason's action ("sleep: <weighed>; margin ..."), where a
    reason cut to a table's width still shows it."""
    if not weighed:
        return reason
    head, sep, rest = reason.partition(": ")
    return f"{head}: {weighed}; {rest}" if sep else f"{reason}; {weighed}"
