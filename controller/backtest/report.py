"""Rendering a backtest: the JSON summary, the aligned text table and the PNG plot.

The figures come from :class:`~controller.backtest.sim.BacktestResult` only; nothing here
computes money, so the table, the JSON and the plot cannot disagree.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from curtaild.controller.backtest.sim import BacktestResult, Totals

OPTIMUM_NOTE = ("optimum = per price row and machine the best of run, sleep and the best power "
                "target on the row's real price, with no guards, no boot time and no switching "
                "cost -- a loose upper bound no controller reaches")
FORESIGHT_NOTE = ("foresight = per machine the best schedule knowing every real price, paying "
                  "the same boots, ramps and power-limit restarts -- the tight upper bound")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _totals(t: Totals, hours: float) -> dict:
    return {
        "energy_kwh": round(t.energy_kwh, 3),
        "revenue_usd": round(t.revenue_usd, 4),
        "energy_cost_usd": round(t.energy_cost_usd, 4),
        "margin_usd": round(t.margin_usd, 4),
        "switches": t.switches,
        "mean_power_kw": round(t.energy_kwh / hours, 3) if hours > 0 else 0.0,
    }


def captured_share(r: BacktestResult, bound: Totals | None = None) -> float | None:
    """Share of a bound's gain over always-on that the policy earned (None: no gain); the
    bound is the optimum unless given (``r.foresight``)."""
    bound = r.optimum if bound is None else bound
    gain = bound.margin_usd - r.always_on.margin_usd
    if gain <= 1e-9:
        return None
    return (r.policy.margin_usd - r.always_on.margin_usd) / gain


def summary(r: BacktestResult, *, policy_name: str, prices: str,
            plot: str | None) -> dict:
    hours = (r.end - r.start) / 3600.0
    share = captured_share(r)
    share_f = captured_share(r, r.foresight)
    return {
        "prices": prices,
        "policy": policy_name,
        "start": _iso(r.start),
        "end": _iso(r.end),
        "hours": round(hours, 3),
        "rows": len(r.rows.at),
        "step_s": r.step_s,
        "price_lag_s": r.price_lag_s,
        "ticks": r.ticks,
        "commands": r.commands,
        "fleet": dict(Counter(m.model for m in r.machines)),
        "fleet_nameplate_kw": round(sum(m.spec.power_w for m in r.machines) / 1000.0, 3),
        "strategies": {
            "policy": _totals(r.policy, hours),
            "always_on": _totals(r.always_on, hours),
            "optimum": _totals(r.optimum, hours),
            "foresight": _totals(r.foresight, hours),
        },
        "policy_vs_always_on_margin_usd": round(r.policy.margin_usd - r.always_on.margin_usd, 4),
        "policy_vs_optimum_margin_usd": round(r.policy.margin_usd - r.optimum.margin_usd, 4),
        "captured_share_of_optimum_gain": None if share is None else round(share, 4),
        "policy_vs_foresight_margin_usd": round(r.policy.margin_usd - r.foresight.margin_usd, 4),
        "captured_share_of_foresight_gain": None if share_f is None else round(share_f, 4),
        "forecast_ahead_s": r.forecast_ahead_s,
        "max_limit_changes_per_machine_day": max(
            (m.max_limit_changes_per_day(r.start) for m in r.machines), default=0),
        "optimum_note": OPTIMUM_NOTE,
        "foresight_note": FORESIGHT_NOTE,
        "machines": [{
            "key": m.key, "ip": m.ip, "model": m.model, "firmware": m.spec.firmware,
            "energy_kwh": round(m.energy_kwh, 3), "revenue_usd": round(m.revenue_usd, 4),
            "energy_cost_usd": round(m.energy_cost_usd, 4),
            "margin_usd": round(m.revenue_usd - m.energy_cost_usd, 4),
            "switches": m.switches, "sleeps": m.sleeps, "wakes": m.wakes,
            "limit_changes": m.limit_changes,
            "max_limit_changes_per_day": m.max_limit_changes_per_day(r.start),
            "hours_mining": round(m.mining_s / 3600.0, 3),
            "hours_limited": round(m.limited_s / 3600.0, 3),
            "hours_asleep": round(m.sleeping_s / 3600.0, 3),
            "hours_booting": round(m.booting_s / 3600.0, 3),
        } for m in r.machines],
        "plot": plot,
    }


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def table(s: dict) -> str:
    """The operator's view: totals per strategy, the comparison, then per model."""
    out = [f"backtest {s['prices']}: {s['start']} .. {s['end']} ({s['hours']:g} h, "
           f"{s['rows']} price rows, tick {s['step_s']:g} s), policy {s['policy']}, "
           f"{sum(s['fleet'].values())} machines ({s['fleet_nameplate_kw']:g} kW nameplate)", ""]
    header = ["strategy", "energy kWh", "revenue USD", "energy USD", "margin USD", "switches",
              "mean kW"]
    rows = [[name, f"{t['energy_kwh']:,.1f}", f"{t['revenue_usd']:,.2f}",
             f"{t['energy_cost_usd']:,.2f}", f"{t['margin_usd']:,.2f}",
             "n/a" if t["switches"] is None else str(t["switches"]),
             f"{t['mean_power_kw']:,.2f}"]
            for name, t in (("policy", s["strategies"]["policy"]),
                            ("always-on", s["strategies"]["always_on"]),
                            ("optimum*", s["strategies"]["optimum"]),
                            ("foresight†", s["strategies"]["foresight"]))]
    out += _grid(header, rows)
    share = s["captured_share_of_optimum_gain"]
    share_f = s["captured_share_of_foresight_gain"]
    ahead = (f"; the forecast column {s['forecast_ahead_s']:g} s ahead (--forecast-ahead-s)"
             if s["forecast_ahead_s"] else "; no forecast")
    out += ["", f"prices seen by the policy {s['price_lag_s']:g} s after each row starts "
                f"(--price-lag-s){ahead}; settled on the real price",
            f"policy vs always-on: {s['policy_vs_always_on_margin_usd']:+,.2f} USD margin; "
            f"vs foresight: {s['policy_vs_foresight_margin_usd']:+,.2f} USD"
            + (f" ({share_f:.1%} of foresight's gain over always-on captured)"
               if share_f is not None else " (foresight gains nothing over always-on)")
            + f"; vs optimum: {s['policy_vs_optimum_margin_usd']:+,.2f} USD"
            + (f" ({share:.1%})" if share is not None else ""),
            f"* {s['optimum_note']}", f"† {s['foresight_note']}", ""]
    per_model: dict[str, list[dict]] = {}
    for m in s["machines"]:
        per_model.setdefault(m["model"], []).append(m)
    header = ["model", "n", "margin USD", "switches", "limit chg/day max", "h asleep",
              "h limited", "kWh"]
    rows = [[model, str(len(ms)), f"{sum(m['margin_usd'] for m in ms):,.2f}",
             str(sum(m["switches"] for m in ms)),
             str(max(m["max_limit_changes_per_day"] for m in ms)),
             f"{sum(m['hours_asleep'] for m in ms) / len(ms):,.1f}",
             f"{sum(m['hours_limited'] for m in ms) / len(ms):,.1f}",
             f"{sum(m['energy_kwh'] for m in ms):,.1f}"] for model, ms in per_model.items()]
    out += ["per model under the policy (hours are per machine):", *_grid(header, rows)]
    if s["plot"]:
        out += ["", f"plot: {s['plot']}"]
    return "\n".join(out)


def plot(r: BacktestResult, path: str | Path, *, title: str) -> Path:
    """Three panels over time: prices; fleet power (policy, always-on); cumulative margin."""
    import matplotlib

    matplotlib.use("Agg")
    from itertools import accumulate

    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    rows = r.rows
    # Step plots: each row's value holds until the next row; close the last step at the end.
    at = [datetime.fromtimestamp(t, UTC) for t in [*rows.at, r.end]]
    def steps(values: list[float]) -> list[float]:
        return [*values, values[-1]]
    fig, (ax_p, ax_w, ax_m) = plt.subplots(3, 1, figsize=(12, 9), sharex=True,
                                           constrained_layout=True)
    fig.suptitle(title)
    ax_p.step(at, steps(rows.tariff_usd_per_kwh), where="post", color="tab:red",
              label="tariff USD/kWh")
    ax_p.set_ylabel("tariff USD/kWh", color="tab:red")
    ax_h = ax_p.twinx()
    ax_h.step(at, steps(rows.hashprice_usd_per_th_day), where="post", color="tab:blue",
              label="hash price USD/TH/day")
    ax_h.set_ylabel("hash price USD/TH/day", color="tab:blue")
    ax_p.set_title("prices")
    ax_w.step(at, steps([w / 1000.0 for w in rows.always_on_power_w]), where="post",
              color="grey", label="always-on")
    ax_w.step(at, steps([w / 1000.0 for w in rows.optimum_power_w]), where="post",
              color="tab:orange", linestyle="--", linewidth=0.8, label="optimum")
    ax_w.step(at, steps([w / 1000.0 for w in rows.foresight_power_w]), where="post",
              color="tab:purple", linestyle=":", linewidth=0.8, label="foresight")
    ax_w.step(at, steps([w / 1000.0 for w in rows.policy_power_w]), where="post",
              color="tab:green", label="policy (mean per row)")
    ax_w.set_ylabel("fleet power kW")
    ax_w.set_ylim(bottom=0)
    ax_w.legend(loc="lower left")
    ax_w.set_title("fleet power")
    start = [0.0]
    ax_m.plot(at, start + list(accumulate(rows.optimum_margin_usd)), color="tab:orange",
              linestyle="--", label=f"optimum (upper bound) {r.optimum.margin_usd:,.2f}")
    ax_m.plot(at, start + list(accumulate(rows.foresight_margin_usd)), color="tab:purple",
              linestyle=":", label=f"foresight (tight bound) {r.foresight.margin_usd:,.2f}")
    ax_m.plot(at, start + list(accumulate(rows.policy_margin_usd)), color="tab:green",
              label=f"policy {r.policy.margin_usd:,.2f}")
    ax_m.plot(at, start + list(accumulate(rows.always_on_margin_usd)), color="grey",
              label=f"always-on {r.always_on.margin_usd:,.2f}")
    ax_m.set_ylabel("cumulative margin USD")
    ax_m.legend(loc="upper left")
    ax_m.set_title("cumulative margin (revenue after pool fee - energy)")
    ax_m.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=UTC))
    ax_m.set_xlabel("time (UTC)")
    for ax in (ax_p, ax_w, ax_m):
        ax.grid(True, alpha=0.3)
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
