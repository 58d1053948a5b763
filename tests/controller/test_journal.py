"""The journal: write-ahead intents, ownership that survives restarts, verification."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from curtaild.controller.journal import Journal
from curtaild.core.snapshot import Command


def _cmd(action: str, limit: float | None = None) -> Command:
    return Command(key="AA:BB", ip="127.0.0.1", action=action, power_limit_w=limit,  # type: ignore[arg-type]
                   reason="test", delta_power_w=-3000.0)


def test_sleep_intent_takes_ownership_that_survives_reopen(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.record_intent(_cmd("sleep"), observed_limit_w=None, dry_run=False, now=100.0)
    j.record_outcome(_cmd("sleep"), "ok", now=101.0)
    j.close()
    j = Journal(tmp_path)
    mem = j.memory()["AA:BB"]
    assert mem.curtailed_by_us and mem.curtailed_action == "sleep"
    assert mem.last_change_at == 100.0
    kinds = [e["kind"] for e in j.events()]
    assert kinds == ["outcome", "intent"]


def test_ownership_released_only_when_observed_running(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.record_intent(_cmd("sleep"), observed_limit_w=None, dry_run=False, now=100.0)
    j.record_intent(_cmd("run"), observed_limit_w=None, dry_run=False, now=200.0)
    assert j.curtailed()["AA:BB"].releasing
    assert j.memory()["AA:BB"].curtailed_by_us  # still ours until seen running
    j.mark_verified("AA:BB", "127.0.0.1", "run", now=210.0)
    assert "AA:BB" not in j.curtailed()
    assert "AA:BB" not in j.memory()


def test_owned_keys_are_the_machines_with_rows(tmp_path: Path) -> None:
    """What a warm start reads the identity of first (drivers/miners.py _from_cache)."""
    j = Journal(tmp_path)
    assert j.owned_keys() == set()
    j.record_intent(_cmd("sleep"), observed_limit_w=None, dry_run=False, now=100.0)
    other = dataclasses.replace(_cmd("run"), key="CC:DD")
    j.record_intent(other, observed_limit_w=None, dry_run=False, now=100.0)  # verified later
    assert j.owned_keys() == {"AA:BB", "CC:DD"}
    j.record_intent(_cmd("run"), observed_limit_w=None, dry_run=False, now=200.0)
    j.mark_verified("AA:BB", "127.0.0.1", "run", now=210.0)
    assert j.owned_keys() == {"CC:DD"}


def test_limit_keeps_the_first_restore_value(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.record_intent(_cmd("limit", 2500), observed_limit_w=3300, dry_run=False, now=1.0)
    j.record_intent(_cmd("limit", 2000), observed_limit_w=2500, dry_run=False, now=2.0)
    row = j.curtailed()["AA:BB"]
    assert row.power_limit_w == 2000 and row.restore_power_limit_w == 3300


def test_dry_run_journals_but_takes_no_ownership(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.record_intent(_cmd("sleep"), observed_limit_w=None, dry_run=True, now=1.0)
    assert j.curtailed() == {} and j.memory() == {}
    assert j.events()[0]["dry_run"] == 1


def test_mismatches_flag_after_n(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.record_intent(_cmd("sleep"), observed_limit_w=None, dry_run=False, now=1.0)
    assert j.mark_mismatch("AA:BB", "127.0.0.1", "sleep", "mining", flag_after=2, now=5.0) == 1
    assert not j.memory()["AA:BB"].flagged
    # Re-sending the same action keeps the failure count (it is the same decision).
    j.record_intent(_cmd("sleep"), observed_limit_w=None, dry_run=False, now=6.0)
    assert j.mark_mismatch("AA:BB", "127.0.0.1", "sleep", "mining", flag_after=2, now=9.0) == 2
    assert j.memory()["AA:BB"].flagged
    assert j.memory()["AA:BB"].last_change_at == 1.0
    j.mark_verified("AA:BB", "127.0.0.1", "sleep", now=10.0)
    assert not j.memory()["AA:BB"].flagged


def test_min_dwell_outlives_a_verified_wake(tmp_path: Path) -> None:
    """A woken machine loses its rows once seen running; dwell must still hold it there."""
    from curtaild.controller.guards import GuardConfig, RampBucket, apply_guards
    from curtaild.core.snapshot import Desired, FleetSnapshot, MarketSnapshot, MinerReading

    j = Journal(tmp_path)
    j.record_intent(_cmd("sleep"), observed_limit_w=None, dry_run=False, now=100.0)
    j.record_outcome(_cmd("sleep"), "ok", now=100.5)
    j.record_intent(_cmd("run"), observed_limit_w=None, dry_run=False, now=1000.0)
    j.record_outcome(_cmd("run"), "ok", now=1001.0)
    j.mark_verified("AA:BB", "127.0.0.1", "run", now=1100.0)
    assert j.memory(now=1200.0) == {}  # no rows left: without dwell_s nothing remembers
    mem = j.memory(dwell_s=600.0, now=1200.0)["AA:BB"]
    assert mem.last_change_at == 1001.0 and not mem.curtailed_by_us
    assert j.memory(dwell_s=600.0, now=1700.0) == {}  # past the dwell: forgotten

    r = MinerReading(key="AA:BB", ip="127.0.0.1", make="Bitmain", model="S19", firmware="antminer",
                     state="mining", hashrate_ths=95.0, power_w=3250.0,
                     power_source="model_table", power_limit_w=None, temp_c=70.0,
                     nameplate_hashrate_ths=95.0, nameplate_power_w=3250.0, observed_at=1200.0)
    market = MarketSnapshot(hashprice_usd_per_th_day=0.03, hashprice_source="fixed",
                            hashprice_age_s=0.0, tariff_usd_per_kwh=0.09, tariff_source="flat",
                            tariff_age_s=0.0)
    want = {"AA:BB": Desired(action="sleep", reason="loses", run_margin_usd_per_day=-4.2)}
    cfg = GuardConfig(min_dwell_s=600.0, ramp_w_per_min=1e6)
    bucket = RampBucket(budget_w=1e6, updated_at=1200.0)
    held = apply_guards(FleetSnapshot((r,), 1200.0), market, want,
                        j.memory(dwell_s=600.0, now=1200.0), bucket, cfg, 1200.0)
    assert not held.commands and "min dwell" in held.held["AA:BB"]
    r = dataclasses.replace(r, observed_at=1700.0)
    later = apply_guards(FleetSnapshot((r,), 1700.0), market, want,
                         j.memory(dwell_s=600.0, now=1700.0), bucket, cfg, 1700.0)
    assert [c.action for c in later.commands] == ["sleep"]
