"""A woken machine gets the power curtaild wants, never curtaild's old limit (issue 16, item 1).

Firmware keeps a power limit through sleep. When curtaild limited a machine whose firmware
reported no limit (none recorded to restore), then slept it, the wake used to be a plain
resume: the machine came back at curtaild's old limit (often its floor), the wake released
ownership, and from then on the limit passed for the operator's and was never lifted.

Guards (pure) and the reconciler (real Journal, scripted Whatsminer that keeps its limit
through sleep). The daemon against the emulator: tests/controller/test_wake_limit_integration.py.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from curtaild.controller.config import parse_config
from curtaild.controller.daemon import build_policy
from curtaild.controller.guards import GuardConfig, MinerMemory, RampBucket, apply_guards
from curtaild.controller.journal import Journal
from curtaild.controller.loop import Reconciler
from curtaild.core.snapshot import Command, Desired, FleetSnapshot, MarketSnapshot, MinerReading

T0 = 1_800_000_000.0
PLATE_W = 3306.0
IP = "127.163.1.1"
MARKET = MarketSnapshot(hashprice_usd_per_th_day=0.09, hashprice_source="test",
                        hashprice_age_s=0.0, tariff_usd_per_kwh=0.03, tariff_source="test",
                        tariff_age_s=0.0, pool_fee=0.02)


def m50(state: str = "sleeping", limit: float | None = None) -> MinerReading:
    running = state == "mining"
    power = (limit or PLATE_W) if running else 35.0
    return MinerReading(key="A", ip=IP, make="WhatsMiner", model="M50", firmware="whatsminer",
                        state=state,  # type: ignore[arg-type]
                        hashrate_ths=114.0 * (power / PLATE_W) ** 0.75 if running else 0.0,
                        power_w=power, power_source="firmware", power_limit_w=limit,
                        temp_c=60.0, nameplate_hashrate_ths=114.0, nameplate_power_w=PLATE_W,
                        supports_sleep=True, supports_power_limit=True,
                        min_power_limit_w=1500.0, max_power_limit_w=3600.0, observed_at=T0)


def slept_by_us(action: str = "sleep", restore: float | None = None) -> MinerMemory:
    return MinerMemory(key="A", curtailed_by_us=True, curtailed_action=action,  # type: ignore[arg-type]
                       restore_power_limit_w=restore, last_change_at=T0 - 3600, flagged=False)


def guard(r: MinerReading, mem: MinerMemory) -> list[Command]:
    run = Desired(action="run", reason="policy: run", margin_usd_per_day=5.0,
                  run_margin_usd_per_day=5.0)
    out = apply_guards(FleetSnapshot((r,), T0), MARKET, {"A": run}, {"A": mem},
                       RampBucket(budget_w=1e9, updated_at=T0),
                       GuardConfig(min_dwell_s=0.0, ramp_w_per_min=1e9), T0)
    return out.commands


# ---------------------------------------------------------------------------- guards
@pytest.mark.parametrize("reported", [1500.0, None])
def test_wake_with_no_recorded_limit_sends_nameplate_not_a_plain_resume(
        reported: float | None) -> None:
    """Asleep under curtaild's old 1500 W (reported, or a firmware that reports none)."""
    [c] = guard(m50("sleeping", reported), slept_by_us())
    assert (c.action, c.power_limit_w) == ("run", PLATE_W)
    assert c.delta_power_w == pytest.approx(PLATE_W - 35.0)


def test_wake_restores_the_recorded_limit_and_resumes_plainly_when_already_there() -> None:
    [c] = guard(m50("sleeping", 1500.0), slept_by_us(restore=2800.0))
    assert c.power_limit_w == 2800.0  # the operator's limit from before curtaild: put back
    [c] = guard(m50("sleeping", 3300.0), slept_by_us())
    assert c.power_limit_w is None  # already at nameplate: no needless restart


def test_ours_found_running_at_a_stale_limit_is_restored_not_released() -> None:
    [c] = guard(m50("mining", 1500.0), slept_by_us())
    assert (c.action, c.power_limit_w) == ("run", PLATE_W)
    [c] = guard(m50("mining", PLATE_W), slept_by_us())
    assert (c.action, c.power_limit_w, c.delta_power_w) == ("run", None, 0.0)  # release only


# ------------------------------------------------------------------------- reconciler
class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class KeepsLimitThroughSleep:
    """A Whatsminer as the driver sees it: a limit survives sleep (``power_off``/``power_on``);
    it reports its limit once one is set, none before."""

    def __init__(self) -> None:
        self.reading = m50("mining", None)
        self.sent: list[Command] = []

    def reconfigure(self, cfg) -> None:
        pass

    async def observe(self) -> FleetSnapshot:
        now = time.time()
        return FleetSnapshot((replace(self.reading, observed_at=now),), now)

    async def execute(self, cmd: Command, *, observed_state: str, timeout_s: float,
                      attempts: int) -> str:
        self.sent.append(cmd)
        limit = self.reading.power_limit_w
        if cmd.power_limit_w is not None:
            limit = cmd.power_limit_w
        state = "sleeping" if cmd.action == "sleep" else "mining"
        self.reading = m50(state, limit)
        return "ok"


class Market:
    async def snapshot(self, now: float | None = None) -> MarketSnapshot:
        return MARKET

    def cached(self, now: float | None = None) -> MarketSnapshot:
        return MARKET


def test_reconciler_limit_sleep_wake_ends_at_nameplate_and_only_then_released(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    config = parse_config({
        "fleet": {"ranges": [f"{IP}-{IP}"]},
        "hashprice": {"source": "fixed", "usd_per_th_day": 0.09},
        "tariff": {"kind": "flat", "usd_per_kwh": 0.03},
        "policy": {"name": "margin", "pool_fee": 0.02},
        "guards": {"min_dwell_s": 0.0, "limit_dwell_s": 0.0, "ramp_w_per_min": 1e9},
        "controller": {"state_dir": str(tmp_path / "state"), "verify_grace_s": 5.0},
    })
    driver = KeepsLimitThroughSleep()
    journal = Journal(None)
    loop = Reconciler(config, journal, driver, Market(), build_policy(config))  # type: ignore[arg-type]
    # curtaild limited the machine (the firmware reported no limit: nothing to restore), then
    # slept it: the firmware keeps 1500 W through the sleep.
    for cmd in (Command(key="A", ip=IP, action="limit", power_limit_w=1500.0, reason="t",
                        delta_power_w=-1800.0),
                Command(key="A", ip=IP, action="sleep", power_limit_w=None, reason="t",
                        delta_power_w=-1400.0)):
        journal.record_intent(cmd, observed_limit_w=driver.reading.power_limit_w,
                              dry_run=False, now=clock.now)
        asyncio.run(driver.execute(cmd, observed_state="mining", timeout_s=5, attempts=1))
        clock.now += 3600
    assert (driver.reading.state, driver.reading.power_limit_w) == ("sleeping", 1500.0)
    for _ in range(6):  # cheap power: every tick wants the machine at full power
        asyncio.run(loop.tick())
        clock.now += 60
    assert (driver.reading.state, driver.reading.power_limit_w) == ("mining", PLATE_W)
    assert [(c.action, c.power_limit_w) for c in driver.sent[2:]] == [("run", PLATE_W)]
    assert journal.curtailed() == {}  # released once seen at nameplate, not before
