"""Driving emulated miners from a test: curtaild's MinerDriver, and the emulator's truth.

Integration tests of a firmware family look at one machine from two sides -- what the driver
(through unmodified pyasic) reads of it, and what the emulator says it really is
(``GET /miners``) -- and wait until one of them reaches a state. These helpers are that, once,
so that every family's tests poll and judge the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from curtaild.controller.config import FleetConfig
from curtaild.core.snapshot import Command, MinerReading
from curtaild.drivers.credentials_config import CredentialsConfig
from curtaild.drivers.miners import MinerDriver
from tests.support.daemon import DEMO_WHATSMINER_PASSWORD_FILE
from tests.support.emulator import EmulatorProcess

T = TypeVar("T")


def site_credentials() -> CredentialsConfig:
    """``[fleet.credentials]`` of a site that commands its Whatsminers: their admin password
    (the demo's file; emulated Whatsminers given ``SITE_WHATSMINER_PASSWORD`` have it, and
    their write API on)."""
    return CredentialsConfig.model_validate(
        {"whatsminer": {"password_file": str(DEMO_WHATSMINER_PASSWORD_FILE)}})


def driver_for(*ips: str) -> MinerDriver:
    """A driver of exactly these machines, quick to give up and re-discover (after 2 failed
    polls), so that a test sees a machine's silence within seconds; with the site's
    credentials (``site_credentials``)."""
    cfg = FleetConfig(ranges=[f"{ip}-{ip}" for ip in ips], poll_timeout_s=5.0,
                      discovery_timeout_s=8.0, rediscover_after_failures=2,
                      credentials=site_credentials())
    return MinerDriver(cfg, poll_interval_s=0.2)


def cmd(ip: str, action: str, limit: float | None = None) -> Command:
    """A command as the loop would send it (the machine's key is its address here)."""
    return Command(key=ip, ip=ip, action=action, power_limit_w=limit,  # type: ignore[arg-type]
                   reason="test", delta_power_w=0.0)


async def reading(d: MinerDriver, ip: str) -> MinerReading:
    """What one observe() reads of ``ip``."""
    snap = await d.observe()
    return next(r for r in snap.miners if r.ip == ip)


async def until(d: MinerDriver, ip: str, pred: Callable[[MinerReading], bool],
                within_s: float = 30.0) -> MinerReading:
    """The driver's reading of ``ip`` once ``pred`` holds; AssertionError with the last one
    if it does not within ``within_s``."""
    return await _poll(lambda: reading(d, ip), pred, within_s, 0.1,
                       f"{ip}: not reached; last reading")


async def truth(emu: EmulatorProcess, ip: str) -> dict:
    """The emulator's view of ``ip`` (its control API is blocking: off the event loop)."""
    return await asyncio.to_thread(emu.miner, ip)


async def wait_for(emu: EmulatorProcess, ip: str, pred: Callable[[dict], bool],
                   within_s: float = 20.0) -> dict:
    """The emulator's truth of ``ip`` once ``pred`` holds; AssertionError with the last one
    if it does not within ``within_s``."""
    return await _poll(lambda: truth(emu, ip), pred, within_s, 0.05,
                       f"{ip}: condition not reached; last")


async def _poll(get: Callable[[], Awaitable[T]], pred: Callable[[T], bool], within_s: float,
                interval_s: float, failure: str) -> T:
    """``get()`` again every ``interval_s`` until ``pred`` holds; past ``within_s`` an
    AssertionError saying ``failure`` and the last value seen."""
    deadline = time.monotonic() + within_s
    while True:
        value = await get()
        if pred(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{failure} {value}")
        await asyncio.sleep(interval_s)
