"""The ``curtaild`` command line: the daemon, its checks, a plan preview and the emulator."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from curtaild.emulator import cli as emulator_cli

    parser = argparse.ArgumentParser(prog="curtaild", description=__doc__)
    parser.add_argument("--config", default="config.toml", help="path to the TOML configuration")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="validate the configuration (exit 2 with one line per problem)")
    plan = sub.add_parser("plan", help="observe once and show the decisions; sends nothing")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("run", help="run the controller daemon until SIGTERM")
    status = sub.add_parser("status", help="what the running daemon is doing now")
    status.add_argument("--json", action="store_true")
    adopt = sub.add_parser(
        "adopt", help="after a lost journal: hand machines of unknown owner to curtaild "
        "(it may wake them when the margin says run), or with --operator leave them to the "
        "operator; without arguments, list them")
    adopt.add_argument("miners", nargs="*", metavar="KEY|IP",
                       help="machines of unknown owner, by key (MAC/serial) or IP")
    adopt.add_argument("--all", action="store_true", help="every machine of unknown owner")
    adopt.add_argument("--operator", action="store_true",
                       help="record them as the operator's: curtaild never wakes them")
    backtest = sub.add_parser("backtest", help="replay a price series against a simulated "
                              "fleet under the configured policy and guards")
    from curtaild.controller.backtest import command as backtest_command

    backtest_command.add_arguments(backtest)
    emulate = sub.add_parser("emulate", help="run an emulated mining fleet on loopback")
    emulator_cli.add_arguments(emulate)
    return parser


def _setup_logging(level: str) -> None:
    import os

    import pyasic  # noqa: F401 - importing pyasic reconfigures the root logger; do it first

    # Under systemd the journal timestamps each line itself.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=fmt,
        stream=sys.stderr,
        force=True,
    )
    # Secrets (firmware and MQTT passwords) never reach a log line, whoever logs it.
    from curtaild.drivers.secret import RedactingFilter

    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    # pyasic logs every unreachable miner at WARNING; the loop reports those itself.
    logging.getLogger("pyasic").setLevel(logging.ERROR)
    # httpx logs every request at INFO; market sources report their own failures.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _load_or_report(config_path: str, build: bool = False):
    """Load the config, or print one `key: reason` line per problem to stderr.

    ``build``: also build the policy stack and the market sources, as `run` does at start, so
    that a file `check` accepts is one the daemon starts with (every failure is a config
    error, exit 2, never a traceback).
    """
    from curtaild.controller.config import ConfigError, config_errors, load_config

    try:
        config = load_config(config_path)
        if build:
            from curtaild.controller.daemon import build_policy
            from curtaild.drivers.hashprice import build_hashprice_source
            from curtaild.drivers.tariff import build_tariff_source

            with config_errors(config_path):
                build_policy(config)
                build_hashprice_source(config.hashprice)
                build_tariff_source(config.tariff)
                if config.pdu:  # SNMP secrets readable, as `run` needs them (issue 18)
                    from curtaild.drivers.pdu.build import build_pdus

                    build_pdus(config.pdu)
        return config
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return None


def cmd_check(config_path: str) -> int:

    from curtaild.controller.config import advisories

    config = _load_or_report(config_path, build=True)
    if config is None:
        return 2
    for line in advisories(config):
        print(f"warning: {line}", file=sys.stderr)
    from curtaild.drivers.credentials import check_warnings

    for line in check_warnings(config.fleet.credentials):
        print(f"warning: {line}", file=sys.stderr)
    from curtaild.controller.journal import inspect_state_dir

    problems, warnings = inspect_state_dir(config.controller.state_dir)
    for line in warnings:
        print(f"warning: controller.state_dir: {line}", file=sys.stderr)
    if problems:
        for line in problems:
            print(f"controller.state_dir: {line}", file=sys.stderr)
        return 2
    print(f"{config_path}: OK ({len(config.fleet.addresses())} addresses, policy "
          f"{config.policy['name']}, hashprice {config.hashprice.source}, tariff "
          f"{config.tariff.kind}, dry_run={config.controller.dry_run})")
    return 0


async def _plan(config_path: str, as_json: bool) -> int:
    from curtaild.controller.config import ConfigError
    from curtaild.controller.daemon import build_reconciler
    from curtaild.controller.journal import Journal, JournalError
    from curtaild.controller.report import plan_table, tick_summary

    config = _load_or_report(config_path, build=True)
    if config is None:
        return 2
    # Read the daemon's journal if there is one (ownership matters to the guards); never
    # create one: plan changes nothing.
    state = Path(config.controller.state_dir)
    try:
        journal = Journal(state if (state / "journal.sqlite").exists() else None)
    except JournalError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    try:
        result = await build_reconciler(config, journal).tick(send=False)
    except ConfigError as exc:  # e.g. a firmware password file plan cannot read
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    finally:
        journal.close()
    if as_json:
        print(json.dumps(tick_summary(result), indent=2, default=str))
    else:
        print(plan_table(result))
    return 0


def cmd_status(config_path: str, as_json: bool) -> int:

    config = _load_or_report(config_path)
    if config is None:
        return 2
    path = Path(config.controller.state_dir) / "status.json"
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        print(f"no status at {path}: is `curtaild run` running with this config?",
              file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(status, indent=2))
        return 0
    age = time.time() - status["at"]
    fleet, market = status["fleet"], status["market"] or {}
    cluster = status.get("cluster")
    print(f"last tick {age:.0f}s ago, took {status['duration_s']:.2f}s"
          f"{' (dry run)' if status['dry_run'] and not cluster else ''}")
    if cluster:  # [cluster]: a standby decides and never commands (docs/cluster.md)
        shard = f", shard {cluster['shard']}" if cluster.get("shard") else ""
        print(f"cluster: {cluster['role']} (term {cluster['term']}, leader "
              f"{cluster['leader'] or 'unknown'}{shard})"
              + ("; decides, never commands" if cluster["role"] != "leader" else ""))
    print(f"fleet: {fleet['miners']} miners, {fleet['power_w'] / 1000:.1f} kW, "
          f"{fleet['hashrate_ths']:.1f} TH/s; " +
          ", ".join(f"{k} {v}" for k, v in sorted(fleet["states"].items())))
    if market:
        print(f"hash price {market['hashprice_usd_per_th_day']:.4f} USD/TH/day "
              f"({market['hashprice_source']}, {market['hashprice_age_s']:.0f}s old); tariff "
              f"{market['tariff_usd_per_kwh']:.4f} USD/kWh ({market['tariff_source']}, "
              f"{market['tariff_age_s']:.0f}s old)")
    print(f"curtailed by curtaild: {len(status.get('curtailed', []))}")
    commands = fleet.get("command_states") or {}
    if commands:  # where curtaild's last commands stand; the unusual ones by machine
        print("commands: " + ", ".join(f"{k} {v}" for k, v in sorted(commands.items())))
        for row in status.get("miners", []):
            if row.get("command_state") in ("lying", "failed", "transitioning"):
                print(f"  {row['command_state']:<13} {row['ip']:<15} {row['key']} "
                      f"{row.get('error') or row.get('held') or ''}")
    _print_recovery(config_path, status)
    for e in status.get("recent_events", [])[:10]:
        print(f"  {time.strftime('%H:%M:%S', time.localtime(e['ts']))} {e['kind']:<9} "
              f"{e['action'] or '':<6} {e['ip'] or e['miner']:<15} {e['result'] or ''} "
              f"{e['reason'] or ''}")
    return 0


def _print_recovery(config_path: str, status: dict) -> None:
    """The lost-journal part of `status`: every machine of unknown owner, and what to type."""
    review, unknown = status.get("journal_review"), status.get("unknown_owner") or []
    if review:
        print(f"JOURNAL REVIEW open: {review.get('reason')}")
    if not unknown:
        return
    print(f"UNKNOWN OWNER: {len(unknown)} machine(s) asleep or power-limited that the journal "
          "has no record of; curtaild never wakes them on its own:")
    for u in unknown:
        what = "asleep" if u["state"] == "sleeping" else (
            f"power-limited at {u['power_limit_w']:.0f} W" if u.get("power_limit_w")
            else "power-limited")
        print(f"  {u['ip'] or u['key']:<15} {u['key']:<20} {what}")
    print(f"  hand them to curtaild: curtaild --config {config_path} adopt KEY|IP ...|--all")
    print(f"  leave them to the operator: curtaild --config {config_path} adopt --operator "
          "KEY|IP ...|--all")


def cmd_adopt(config_path: str, targets: list[str], *, every: bool, operator: bool) -> int:
    """Resolve machines of unknown owner (controller/recovery.py) in the daemon's journal.

    Bad input changes nothing: every name must match an open machine of unknown owner, or
    nothing is written. The running daemon reads ownership from the journal each tick, so
    an adopted machine is woken on its next tick if the margin says run."""
    from curtaild.controller.journal import (
        CLI_BUSY_TIMEOUT_S,
        JOURNAL_FILE,
        Journal,
        JournalError,
    )
    from curtaild.controller.recovery import describe

    config = _load_or_report(config_path)
    if config is None:
        return 2
    path = Path(config.controller.state_dir) / JOURNAL_FILE
    if not path.exists() or path.stat().st_size == 0:
        print(f"no journal at {path}: run `curtaild run` with this config first (a relative "
              "state_dir resolves against $STATE_DIRECTORY when set, else the config file's "
              "directory)", file=sys.stderr)
        return 1
    if every and targets:
        print("adopt: give machines or --all, not both", file=sys.stderr)
        return 2
    try:
        journal = Journal(config.controller.state_dir, busy_timeout_s=CLI_BUSY_TIMEOUT_S)
    except JournalError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    try:
        open_ = journal.unknown_owner()
        if not targets and not every:
            if not open_:
                print("no machine of unknown owner")
            for u in open_.values():
                print(f"{u.ip or u.miner:<15} {u.miner:<20} {describe(u)} (first seen "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(u.seen_at))})")
            return 0
        by_name: dict[str, str] = {}
        for u in open_.values():
            by_name[u.miner.casefold()] = u.miner
            if u.ip:
                by_name[u.ip.casefold()] = u.miner
        keys: list[str] = list(open_) if every else []
        bad = []
        for name in targets:
            key = by_name.get(name.strip().casefold())
            if key is None:
                bad.append(name)
            elif key not in keys:
                keys.append(key)
        if bad:
            for name in bad:
                print(f"adopt: {name}: not a machine of unknown owner (`curtaild --config "
                      f"{config_path} adopt` lists them); nothing changed", file=sys.stderr)
            return 2
        if not keys:
            print("no machine of unknown owner")
            return 0
        try:
            if operator:
                journal.resolve_unknown(keys, "operator")
            else:
                journal.adopt(keys)
        except JournalError as exc:
            print(f"{exc}; nothing changed", file=sys.stderr)
            return 1
        for key in keys:
            u = open_[key]
            who = f"{u.ip or key} ({key}), {describe(u)}"
            if operator:
                print(f"left to the operator: {who}: curtaild never wakes it")
            else:
                print(f"adopted: {who}: curtaild owns it now and wakes it on a tick where "
                      "the margin says run")
        return 0
    finally:
        journal.close()


def main(argv: list[str] | None = None) -> int:
    if "run" in (sys.argv[1:] if argv is None else argv):
        from curtaild.controller.signals import hold_reload_signal

        hold_reload_signal()  # before the slow imports: a reload must never kill the daemon
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    if args.command == "emulate":
        from curtaild.emulator import cli as emulator_cli

        return emulator_cli.main(args)
    if args.command == "check":
        return cmd_check(args.config)
    if args.command == "plan":
        return asyncio.run(_plan(args.config, args.json))
    if args.command == "status":
        return cmd_status(args.config, args.json)
    if args.command == "adopt":
        return cmd_adopt(args.config, args.miners, every=args.all, operator=args.operator)
    if args.command == "backtest":
        from curtaild.controller.backtest import command as backtest_command

        return backtest_command.run(args.config, args)
    if args.command == "run":
        from curtaild.controller.daemon import run

        return run(args.config)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
