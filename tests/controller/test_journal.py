"""The journal: write-ahead intents, ownership that survives restarts, verification."""

from __future__ import annotations

from pathlib import Path

from controller.journal import Journal
from controller.snapshot import Command


def _cmd(action: str, limit: float | None = None) -> Command:
    return Command(key="AA:BB", ip="10.0.0.1", action=action, power_limit_w=limit,  # type: ignore[arg-type]
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
    j.mark_verified("AA:BB", "10.0.0.1", "run", now=210.0)
    assert "AA:BB" not in j.curtailed()
    assert "AA:BB" not in j.memory()


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
    assert j.mark_mismatch("AA:BB", "10.0.0.1", "sleep", "mining", flag_after=2, now=5.0) == 1
    assert not j.memory()["AA:BB"].flagged
    # Re-sending the same action keeps the failure count (it is the same decision).
    j.record_intent(_cmd("sleep"), observed_limit_w=None, dry_run=False, now=6.0)
    assert j.mark_mismatch("AA:BB", "10.0.0.1", "sleep", "mining", flag_after=2, now=9.0) == 2
    assert j.memory()["AA:BB"].flagged
    assert j.memory()["AA:BB"].last_change_at == 1.0
    j.mark_verified("AA:BB", "10.0.0.1", "sleep", now=10.0)
    assert not j.memory()["AA:BB"].flagged
