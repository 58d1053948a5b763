"""The ``curtaild`` command line: one entry point for the daemon, its checks and the emulator."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from emulator import cli as emulator_cli

    parser = argparse.ArgumentParser(prog="curtaild", description=__doc__)
    parser.add_argument("--config", default="config.toml", help="path to the TOML configuration")
    sub = parser.add_subparsers(dest="command", required=True)

    emulate = sub.add_parser("emulate", help="run an emulated mining fleet on loopback")
    emulator_cli.add_arguments(emulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "emulate":
        from emulator import cli as emulator_cli

        return emulator_cli.main(args)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
