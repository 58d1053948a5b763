"""``curtaild --config PATH backtest --prices FILE [--fleet FILE|SPEC] [--plot FILE.png]``.

The I/O edge around the pure core: reads the config (for the policy, the guards, the pool fee,
``[controller] verify_grace_s``/``flag_after_failures`` and ``[fleet.power] idle_w``), the
prices CSV and the fleet, runs :func:`controller.backtest.sim.simulate`, prints the table (or
``--json``) and writes the plot. The config's ``[hashprice]``, ``[tariff]`` and ``[fleet]``
addresses are not used: the prices are the file's and the fleet is simulated. Nothing is sent
to any machine and nothing is written but the plot.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

DEFAULT_PLOT = "backtest.png"
DEFAULT_STEP_S = 60.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prices", required=True, metavar="FILE",
                   help="CSV: timestamp,hashprice_usd_per_th_day,tariff_usd_per_kwh"
                        "[,power_cap_w][,forecast_tariff_usd_per_kwh]")
    p.add_argument("--fleet", metavar="FILE|SPEC",
                   help="emulator fleet TOML (docs/emulator.md) or MODEL=COUNT,... "
                        "(default: the demo's 16 machines, every model twice)")
    p.add_argument("--plot", default=DEFAULT_PLOT, metavar="FILE.png",
                   help=f"PNG to write (default: {DEFAULT_PLOT} in the current directory)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    p.add_argument("--price-lag-s", type=float, default=None, metavar="S",
                   help="seconds after a price row starts until the policy sees it (default: "
                        "one row, as an ISO real-time price is published after its interval; "
                        "0: decide on each row's own price). Settlement always uses the real "
                        "price")
    p.add_argument("--forecast-ahead-s", type=float, default=0.0, metavar="S",
                   help="give the policy the prices file's forecast_tariff_usd_per_kwh for the "
                        "rows starting within S seconds ahead, as a realtime tariff with rows "
                        "ahead would (e.g. 36000: a day-ahead market is known >= 10 h ahead); "
                        "default 0: no forecast")
    p.add_argument("--step-s", type=float, default=DEFAULT_STEP_S, metavar="S",
                   help=f"simulated seconds between ticks (default {DEFAULT_STEP_S:g}; "
                        "[controller] poll_interval_s for full fidelity, slower)")


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 2


def run(config_path: str, args: argparse.Namespace) -> int:
    from curtaild.controller.backtest.machines import build_machines, fleet_plan
    from curtaild.controller.backtest.prices import PriceError, load_prices
    from curtaild.controller.backtest.report import plot, summary, table
    from curtaild.controller.backtest.sim import SimSettings, simulate
    from curtaild.controller.config import ConfigError, load_config
    from curtaild.controller.daemon import build_policy
    from curtaild.core.fleet import FleetError

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return _fail("\n".join(exc.problems))
    if not (args.step_s > 0 and args.step_s < float("inf")):
        return _fail(f"--step-s: must be a positive number of seconds, got {args.step_s:g}")
    lag = args.price_lag_s
    if lag is not None and not (lag >= 0 and lag < float("inf")):
        return _fail(f"--price-lag-s: must be 0 or more seconds, got {lag:g}")
    ahead = args.forecast_ahead_s
    if not (ahead >= 0 and ahead < float("inf")):
        return _fail(f"--forecast-ahead-s: must be 0 or more seconds, got {ahead:g}")
    if not args.no_plot and not str(args.plot).lower().endswith(".png"):
        return _fail(f"--plot: {args.plot!r} must name a .png file")
    if not args.no_plot and importlib.util.find_spec("matplotlib") is None:
        return _fail("--plot: matplotlib is not installed; it is the optional plot extra: "
                     "pip install 'curtaild[plot]' (or pass --no-plot)")
    try:
        series = load_prices(args.prices)
    except PriceError as exc:
        return _fail(str(exc))
    try:
        machines = build_machines(fleet_plan(args.fleet))
    except FleetError as exc:
        return _fail(str(exc))
    policy = build_policy(config)
    settings = SimSettings(
        guards=config.guards, pool_fee=policy.config.pool_fee, step_s=args.step_s,
        verify_grace_s=config.controller.verify_grace_s,
        flag_after_failures=config.controller.flag_after_failures,
        idle_estimate_w=config.fleet.power.idle_w, price_lag_s=lag, forecast_ahead_s=ahead)
    result = simulate(policy, machines, series, settings)
    plot_path = None if args.no_plot else str(args.plot)
    s = summary(result, policy_name=str(config.policy["name"]), prices=str(args.prices),
                plot=plot_path)
    if plot_path is not None:
        try:
            plot(result, plot_path, title=f"curtaild backtest: {args.prices}, policy "
                                          f"{config.policy['name']}")
        except OSError as exc:
            return _fail(f"--plot {plot_path}: cannot write: {exc.strerror or exc}")
    print(json.dumps(s, indent=2) if args.json else table(s))
    return 0
