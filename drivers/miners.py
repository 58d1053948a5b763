"""Miners through pyasic: discovery, polling and commands, each under a deadline.

pyasic's calls have no overall deadline (a miner that accepts and never answers stalls a
``get_data()`` for minutes) and unbounded concurrency makes discovery fail silently, so every
call here runs under ``asyncio.wait_for`` behind a semaphore. Miner objects are kept between
polls (they cache tokens and sessions) and dropped for re-discovery after repeated failures.
No decisions are made here: this module only turns the fleet into readings and commands into
pyasic calls.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pyasic
from pyasic.miners.data import DataOptions
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from controller.config import FleetConfig
from controller.snapshot import Command, FleetSnapshot, MinerReading, PowerSource
from drivers.nameplate import lookup

log = logging.getLogger("curtaild.miners")

#: What the loop needs from get_data (asking for less is cheaper: design.md).
POLL_FIELDS = [
    DataOptions.HASHRATE,
    DataOptions.HASHBOARDS,
    DataOptions.WATTAGE,
    DataOptions.WATTAGE_LIMIT,
    DataOptions.FANS,
    DataOptions.IS_MINING,
]
IDENTITY_FIELDS = [DataOptions.MAC, DataOptions.SERIAL_NUMBER]

#: Firmware families whose pyasic backends implement power targets.
POWER_LIMIT_FAMILIES = {"whatsminer", "luxos", "braiins", "vnish", "epic"}
#: Families whose pyasic backend has no source for is_mining (always True).
NO_IS_MINING_FAMILIES = {"luxos"}
#: Families pyasic cannot stop (hobby miners with no sleep command).
NO_SLEEP_FAMILIES = {"bitaxe"}


class CommandFailed(Exception):
    """The firmware refused or did not confirm a command."""


def family_of(miner: Any) -> str:
    """A short firmware family name from pyasic's make/firmware attributes."""
    firmware = str(getattr(miner, "firmware", "") or "")
    make = str(getattr(miner, "make", "") or "")
    if firmware == "LuxOS":
        return "luxos"
    if firmware == "BOS+":
        return "braiins"
    if firmware in ("VNish", "ePIC", "Hive", "MaraFW"):
        return firmware.lower()
    if make.lower() == "whatsminer":
        return "whatsminer"
    if make.lower() == "bitaxe":
        return "bitaxe"
    if make.lower() == "antminer":
        return "antminer"
    return make.lower() or "unknown"


@dataclass
class _Tracked:
    """What is remembered about one address between polls."""

    ip: str
    miner: Any | None = None
    mac: str | None = None
    serial: str | None = None
    failures: int = 0
    next_discovery_at: float = 0.0
    discovery_attempts: int = 0
    last: MinerReading | None = None
    errors: dict[str, int] = field(default_factory=dict)


class MinerDriver:
    """Owns the pyasic miner objects of one fleet."""

    def __init__(self, cfg: FleetConfig, *, poll_interval_s: float = 30.0):
        self.cfg = cfg
        self.poll_interval_s = poll_interval_s
        self._tracked: dict[str, _Tracked] = {}
        self._discover_sem = asyncio.Semaphore(cfg.discovery_concurrency)
        self._poll_sem = asyncio.Semaphore(cfg.poll_concurrency)
        #: poll errors by kind since start (timeout, refused, garbage, discovery)
        self.error_counts: dict[str, int] = {}

    def reconfigure(self, cfg: FleetConfig) -> None:
        self.cfg = cfg
        self._discover_sem = asyncio.Semaphore(cfg.discovery_concurrency)
        self._poll_sem = asyncio.Semaphore(cfg.poll_concurrency)

    # ------------------------------------------------------------------ observe
    async def observe(self) -> FleetSnapshot:
        """Poll every configured address once; a hung miner costs one deadline, not a sweep."""
        addresses = self.cfg.addresses()
        for ip in list(self._tracked):
            if ip not in addresses:
                del self._tracked[ip]
        readings = await asyncio.gather(*(self._observe_one(ip) for ip in addresses))
        return FleetSnapshot(tuple(r for r in readings if r is not None), time.time())

    def _count(self, kind: str) -> None:
        self.error_counts[kind] = self.error_counts.get(kind, 0) + 1

    async def _discover(self, t: _Tracked) -> bool:
        now = time.monotonic()
        if now < t.next_discovery_at:
            return False
        async with self._discover_sem:
            try:
                miner = await asyncio.wait_for(
                    pyasic.get_miner(t.ip), timeout=self.cfg.discovery_timeout_s
                )
            except (TimeoutError, OSError, ValueError, KeyError, TypeError) as exc:
                log.debug("%s: discovery failed: %r", t.ip, exc)
                miner = None
        if miner is None:
            t.discovery_attempts += 1
            backoff = min(600.0, self.poll_interval_s * 2 ** min(t.discovery_attempts - 1, 6))
            t.next_discovery_at = now + backoff
            self._count("discovery")
            return False
        t.miner = miner
        t.discovery_attempts = 0
        t.failures = 0
        return True

    async def _observe_one(self, ip: str) -> MinerReading | None:
        t = self._tracked.setdefault(ip, _Tracked(ip))
        if t.miner is None and not await self._discover(t):
            return self._unreachable(t, "not discovered") if t.last else None
        miner = t.miner
        fields = POLL_FIELDS if t.mac or t.serial else POLL_FIELDS + IDENTITY_FIELDS
        try:
            async with self._poll_sem:
                data = await asyncio.wait_for(
                    miner.get_data(include=fields), timeout=self.cfg.poll_timeout_s
                )
        except TimeoutError:
            return self._failed(t, "timeout", f"no answer within {self.cfg.poll_timeout_s:g}s")
        except ConnectionRefusedError as exc:
            return self._failed(t, "refused", str(exc))
        except Exception as exc:
            return self._failed(t, "error", f"{type(exc).__name__}: {exc}")
        try:
            reading = self._reading(t, miner, data)
        except Exception as exc:
            return self._failed(t, "garbage", f"{type(exc).__name__}: {exc}")
        if reading.error:
            return self._failed(t, "garbage", reading.error)
        t.failures = 0
        t.last = reading
        return reading

    def _failed(self, t: _Tracked, kind: str, detail: str) -> MinerReading:
        self._count(kind)
        t.failures += 1
        if t.failures >= self.cfg.rediscover_after_failures:
            t.miner = None  # re-discover: the address may now hold another machine or firmware
            t.next_discovery_at = 0.0
        return self._unreachable(t, f"{kind}: {detail}")

    def _unreachable(self, t: _Tracked, error: str) -> MinerReading:
        last = t.last
        return MinerReading(
            key=self.key_of(t),
            ip=t.ip,
            make=last.make if last else "",
            model=last.model if last else "",
            firmware=last.firmware if last else "",
            state="unreachable",
            hashrate_ths=0.0,
            power_w=0.0,
            power_source="none",
            power_limit_w=None,
            temp_c=None,
            nameplate_hashrate_ths=last.nameplate_hashrate_ths if last else None,
            nameplate_power_w=last.nameplate_power_w if last else None,
            supports_sleep=last.supports_sleep if last else False,
            supports_power_limit=last.supports_power_limit if last else False,
            observed_at=time.time(),
            error=error,
            mac=t.mac,
            serial=t.serial,
        )

    @staticmethod
    def key_of(t: _Tracked) -> str:
        return (t.mac or t.serial or t.ip).upper() if (t.mac or t.serial) else t.ip

    def _reading(self, t: _Tracked, miner: Any, data: Any) -> MinerReading:
        if data.mac and not t.mac:
            t.mac = str(data.mac).upper()
        if data.serial_number and not t.serial:
            t.serial = str(data.serial_number)
        hashrate = data.hashrate
        hashrate_ths = float(hashrate) if hashrate is not None else 0.0
        if not math.isfinite(hashrate_ths) or hashrate_ths < 0:
            return self._unreachable(t, f"garbage: hashrate {hashrate_ths!r}")
        model = str(getattr(miner, "raw_model", None) or miner.model or "")
        family = family_of(miner)
        plate = lookup(model)
        nameplate_ths = plate.hashrate_ths if plate else None
        # is_mining defaults to True when firmware does not say (pyasic's LuxOS backend never
        # does), so it is not trusted alone: a machine that claims to be asleep while hashing
        # is mining (it burns power), and where is_mining has no source, no hashing = asleep.
        hashing = hashrate_ths > max(0.05 * (nameplate_ths or 0.0), 0.0)
        says_asleep = data.is_mining is False or family in NO_IS_MINING_FAMILIES
        state = "sleeping" if (says_asleep and not hashing) else "mining"
        power_w, source = self._power(t, model, data.wattage, state, plate)
        temps = [
            v
            for hb in data.hashboards
            for v in (hb.chip_temp, hb.temp)
            if isinstance(v, (int, float)) and v > -50
        ]
        fans = tuple(int(f.speed) for f in data.fans if f.speed is not None)
        limit = data.wattage_limit
        supports_limit = family in POWER_LIMIT_FAMILIES
        return MinerReading(
            key=self.key_of(t),
            ip=t.ip,
            make=str(getattr(miner, "make", "") or ""),
            model=model,
            firmware=family,
            state=state,  # type: ignore[arg-type]
            hashrate_ths=round(hashrate_ths, 4),
            power_w=power_w,
            power_source=source,
            power_limit_w=float(limit) if limit else None,
            temp_c=max(temps) if temps else None,
            fan_rpm=fans,
            nameplate_hashrate_ths=nameplate_ths,
            nameplate_power_w=self._nameplate_power(t, model, plate),
            supports_sleep=family not in NO_SLEEP_FAMILIES,
            supports_power_limit=supports_limit,
            min_power_limit_w=(plate.min_limit_w if plate and supports_limit else None),
            max_power_limit_w=(plate.max_limit_w if plate and supports_limit else None),
            observed_at=time.time(),
            mac=t.mac,
            serial=t.serial,
        )

    def _nameplate_power(self, t: _Tracked, model: str, plate: Any) -> float | None:
        power = self.cfg.power
        for k in (t.mac, t.serial, t.ip):
            if k and k in power.overrides_w:
                return power.overrides_w[k]
        if model in power.models_w:
            return power.models_w[model]
        return plate.power_w if plate else None

    def _power(self, t: _Tracked, model: str, wattage: Any, state: str,
               plate: Any) -> tuple[float, PowerSource]:
        """Firmware -> per-miner override -> per-model table -> nameplate; idle when asleep."""
        if isinstance(wattage, (int, float)) and wattage > 0:
            return float(wattage), "firmware"
        if state == "sleeping":
            return self.cfg.power.idle_w, "idle_estimate"
        power = self.cfg.power
        for k in (t.mac, t.serial, t.ip):
            if k and k in power.overrides_w:
                return power.overrides_w[k], "override"
        if model in power.models_w:
            return power.models_w[model], "model_table"
        if plate:
            return plate.power_w, "nameplate"
        return 0.0, "none"

    # ------------------------------------------------------------------- act
    async def execute(self, cmd: Command, *, observed_state: str, timeout_s: float,
                      attempts: int) -> str:
        """Send one command with jittered retries under an overall deadline.

        Returns a short outcome text; raises CommandFailed when every attempt failed.
        """
        t = self._tracked.get(cmd.ip)
        if t is None or t.miner is None:
            raise CommandFailed("miner not discovered")
        miner = t.miner
        per_try = max(1.0, timeout_s / attempts)
        fresh_session = family_of(miner) == "luxos" and getattr(miner, "rpc", None) is not None

        async def once() -> str:
            if fresh_session:
                # LuxOS sessions expire 60 s after last use and on reboot, but pyasic keeps its
                # session id forever: start each attempt with a fresh logon.
                miner.rpc.session_token = None
            steps: list[tuple[str, Callable[[], Awaitable[bool]]]] = []
            if cmd.action == "sleep":
                steps.append(("stop_mining", miner.stop_mining))
            else:
                if observed_state != "mining":
                    steps.append(("resume_mining", miner.resume_mining))
                if cmd.power_limit_w is not None:
                    watts = round(cmd.power_limit_w)
                    steps.append(("set_power_limit", lambda: miner.set_power_limit(watts)))
            done = []
            for name, call in steps:
                ok = await asyncio.wait_for(call(), timeout=per_try)
                if ok is False:
                    raise CommandFailed(f"{name} returned False")
                done.append(name)
            return "+".join(done) or "nothing to send"

        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(attempts) | stop_after_delay(timeout_s),
                wait=wait_random_exponential(multiplier=0.5, max=5.0),
                retry=retry_if_exception_type(Exception),
                reraise=True,
            ):
                with attempt:
                    return await once()
        except CommandFailed:
            raise
        except TimeoutError as exc:
            raise CommandFailed(f"no answer within {per_try:g}s") from exc
        except Exception as exc:
            raise CommandFailed(f"{type(exc).__name__}: {exc}") from exc
        raise CommandFailed("no attempt made")  # pragma: no cover
