"""A flagged machine is tried again after ``[controller] flag_retry_s``.

The flag clears only when a machine is seen in the expected state; a machine flagged for
ignoring a wake, never commanded again, is never seen awake, so it stayed asleep for good once
its firmware obeyed again (soak seed 123). The retry is one command through the guards (so the
policy must still want it), after which a machine that still does not obey waits another
``flag_retry_s``.
"""

from __future__ import annotations

from pathlib import Path

from curtaild.controller.config import ControllerConfig
from curtaild.controller.guards import GuardConfig, MinerMemory, RampBucket, apply_guards
from curtaild.controller.journal import Journal
from curtaild.core.snapshot import Command, Desired, FleetSnapshot, MarketSnapshot, MinerReading

KEY, IP = "AA:BB", "127.0.0.9"
RETRY_S = 1800.0


def _cmd(action: str) -> Command:
    return Command(key=KEY, ip=IP, action=action,  # type: ignore[arg-type]
                   power_limit_w=None, reason="test", delta_power_w=0.0)


def _flagged_wake(tmp_path: Path) -> Journal:
    """Slept by curtaild at 100, woken at 200, ignored the wake: flagged at 500."""
    j = Journal(tmp_path)
    j.record_intent(_cmd("sleep"), observed_limit_w=None, dry_run=False, now=100.0)
    j.mark_verified(KEY, IP, "sleep", now=150.0)
    j.record_intent(_cmd("run"), observed_limit_w=None, dry_run=False, now=200.0)
    assert j.mark_mismatch(KEY, IP, "run", "sleeping", flag_after=1, now=500.0) == 1
    return j


def test_a_flagged_machine_is_due_for_a_retry_after_flag_retry_s(tmp_path: Path) -> None:
    j = _flagged_wake(tmp_path)
    early = j.memory(now=500.0 + RETRY_S - 1, flag_retry_s=RETRY_S)[KEY]
    assert early.flagged and not early.retry_due
    due = j.memory(now=500.0 + RETRY_S, flag_retry_s=RETRY_S)[KEY]
    assert not due.flagged and due.retry_due and due.curtailed_by_us
    never = j.memory(now=500.0 + 100 * RETRY_S, flag_retry_s=0.0)[KEY]
    assert never.flagged and not never.retry_due


def test_a_retry_that_fails_again_waits_another_flag_retry_s(tmp_path: Path) -> None:
    j = _flagged_wake(tmp_path)
    retry_at = 500.0 + RETRY_S
    j.record_intent(_cmd("run"), observed_limit_w=None, dry_run=False, now=retry_at)
    assert j.expectations()[KEY].flagged  # still reported as disobedient meanwhile
    after = j.memory(now=retry_at + 60, flag_retry_s=RETRY_S)[KEY]
    assert after.flagged and not after.retry_due
    assert j.memory(now=retry_at + RETRY_S, flag_retry_s=RETRY_S)[KEY].retry_due
    j.mark_verified(KEY, IP, "run", now=retry_at + 90)  # it obeyed: flag and ownership gone
    assert KEY not in j.memory(now=retry_at + 90, flag_retry_s=RETRY_S)


def _asleep() -> MinerReading:
    return MinerReading(
        key=KEY, ip=IP, make="AntMiner", model="S19", firmware="antminer", state="sleeping",
        hashrate_ths=0.0, power_w=40.0, power_source="idle_estimate", power_limit_w=None,
        temp_c=None, nameplate_hashrate_ths=95.0, nameplate_power_w=3250.0,
        observed_at=10_000.0)


def _guard(memory: MinerMemory) -> tuple[list[Command], dict[str, str]]:
    market = MarketSnapshot(hashprice_usd_per_th_day=0.08, hashprice_source="test",
                            hashprice_age_s=0.0, tariff_usd_per_kwh=0.03, tariff_source="test",
                            tariff_age_s=0.0, pool_fee=0.02)
    desired = {KEY: Desired(action="run", reason="margin says run", margin_usd_per_day=5.0,
                            run_margin_usd_per_day=5.0)}
    result = apply_guards(FleetSnapshot(miners=(_asleep(),), taken_at=10_000.0), market,
                          desired, {KEY: memory}, RampBucket(budget_w=1e9, updated_at=10_000.0),
                          GuardConfig(min_dwell_s=0.0), 10_000.0)
    return result.commands, result.held


def test_the_guards_send_the_retry_the_policy_still_wants(tmp_path: Path) -> None:
    j = _flagged_wake(tmp_path)
    commands, held = _guard(j.memory(now=600.0, flag_retry_s=RETRY_S)[KEY])
    assert commands == [] and held[KEY].startswith("flagged")
    commands, _ = _guard(j.memory(now=500.0 + RETRY_S, flag_retry_s=RETRY_S)[KEY])
    assert [(c.key, c.action) for c in commands] == [(KEY, "run")]


def test_flag_retry_s_is_on_by_default_and_bounded() -> None:
    assert ControllerConfig().flag_retry_s == RETRY_S
    assert "flag_retry_s" in ControllerConfig.model_fields
