"""``curtaild emulate``: run an emulated fleet on loopback until SIGINT/SIGTERM.

Once every listener is bound it prints (flushed) exactly::

    control: http://HOST:PORT
    miners: N at FIRST-LAST
    families: antminer=3 whatsminer=2 luxos=2 bitaxe=1

then, when the fleet has PDUs or a meter (emulator/pdu/plan.py), ``pdus: N apc=A raritan=R``
and ``meter: HOST:PORT``.

Tests and scripts wait for the ``control:`` line. Configuration problems (bad fleet file,
non-loopback control address, a port that cannot be bound) exit 2 with one clear line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import sys
from collections import Counter

from curtaild.core.models import FAMILIES
from curtaild.emulator.control import ControlAddressError, parse_control, start_control
from curtaild.emulator.families import FamilyUnavailable, get_family
from curtaild.emulator.fleet import (
    DEFAULT_FIRST_IP,
    FleetError,
    build_miners,
    plan_count,
    plan_fleet_file,
)
from curtaild.emulator.pdu.control import SiteRuntime
from curtaild.emulator.pdu.plan import SitePlan, build_site, plan_count_site
from curtaild.emulator.physics import EmulatedMiner
from curtaild.emulator.server import BindError, FleetServer, raise_nofile_limit

DEFAULT_CONTROL = "127.0.0.1:8640"
log = logging.getLogger("emulator")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=None, metavar="N",
                        help="emulate N miners, cycling through every model (all families)")
    parser.add_argument("--first-ip", default=DEFAULT_FIRST_IP, metavar="127.A.B.C",
                        help=f"first miner address; others follow consecutively "
                             f"(default {DEFAULT_FIRST_IP})")
    parser.add_argument("--control", default=DEFAULT_CONTROL, metavar="HOST:PORT",
                        help=f"loopback address of the control API (default {DEFAULT_CONTROL})")
    parser.add_argument("--time-scale", type=float, default=None, metavar="F",
                        help="multiply every emulated duration (boot, thermal lag); 0.01 makes "
                             "a 90 s boot take 0.9 s (default 1.0, or the fleet file's)")
    parser.add_argument("--fleet", default=None, metavar="FILE",
                        help="TOML fleet description (see docs/emulator.md)")
    parser.add_argument("--no-pdus", action="store_true",
                        help="--count fleets: no emulated PDUs and meter (they bind udp/161 "
                             "and tcp/502 at the miners' addresses; see docs/pdu.md)")
    parser.add_argument("--log-level", default="WARNING",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="emulator log level on stderr (default WARNING)")


def _fail(message: str) -> int:
    print(f"curtaild emulate: {message}", file=sys.stderr, flush=True)
    return 2


def _build(args: argparse.Namespace) -> tuple[list[EmulatedMiner], SitePlan | None]:
    if args.fleet and args.count is not None:
        raise FleetError("give either --count or --fleet, not both")
    if args.fleet:
        plan = plan_fleet_file(args.fleet, args.first_ip)
    elif args.count is not None:
        plan = plan_count(args.count, args.first_ip)
    else:
        raise FleetError("nothing to emulate: give --count N or --fleet FILE")
    time_scale = args.time_scale if args.time_scale is not None else (
        plan.time_scale if plan.time_scale is not None else 1.0)
    if time_scale <= 0:
        raise FleetError(f"--time-scale: must be positive, got {time_scale}")
    if args.count is not None and not getattr(args, "no_pdus", False):
        plan.site = plan_count_site([m.ip for m in plan.miners])
    return build_miners(plan, time_scale), plan.site


def _range_text(miners: list[EmulatedMiner]) -> str:
    ips = sorted(ipaddress.IPv4Address(m.ip) for m in miners)
    return f"{ips[0]}-{ips[-1]}"


def main(args: argparse.Namespace) -> int:
    """Entry point for ``curtaild emulate``; returns the exit code."""
    logging.basicConfig(level=getattr(args, "log_level", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        host, port = parse_control(args.control)
        miners, site = _build(args)
        for name in sorted({m.spec.firmware for m in miners}):
            get_family(name)
    except (ControlAddressError, FleetError, FamilyUnavailable) as exc:
        return _fail(str(exc))
    try:
        return asyncio.run(_serve(miners, host, port, site))
    except KeyboardInterrupt:  # pragma: no cover - signal arrived before handlers were set
        return 0


async def _serve(miners: list[EmulatedMiner], host: str, port: int,
                 site_plan: SitePlan | None = None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    soft, hard = raise_nofile_limit()
    fleet = FleetServer(miners, get_family, loop)
    try:
        await fleet.start()
    except BindError as exc:
        return _fail(str(exc))
    site = None
    if site_plan is not None:  # PDUs and meter (emulator/pdu/): after the miners they power
        pdus, meter = build_site(site_plan, miners, lambda m: fleet.sync_listening(m.ip))
        site = SiteRuntime(pdus, meter)
        try:
            await site.start()
        except (OSError, ValueError) as exc:
            await fleet.close()
            return _fail(str(exc))
        fleet.site = site  # type: ignore[attr-defined]  # the control API's /pdus, /meter
    try:
        control = await start_control(fleet, host, port)
    except BindError as exc:
        if site is not None:
            await site.close()
        await fleet.close()
        return _fail(f"control API: {exc}")
    counts = Counter(m.spec.firmware for m in miners)
    families = " ".join(f"{name}={counts[name]}" for name in FAMILIES if counts[name])
    print(f"control: http://{host if ':' not in host else f'[{host}]'}:{port}", flush=True)
    print(f"miners: {len(miners)} at {_range_text(miners)}", flush=True)
    print(f"families: {families}", flush=True)
    for line in site.summary() if site is not None else []:
        print(line, flush=True)
    log.info("listening: %d sockets (RLIMIT_NOFILE %d/%d)", fleet.listener_count, soft, hard)
    await stop.wait()
    control.close()
    if site is not None:
        await site.close()
    await fleet.close()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0
