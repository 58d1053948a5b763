"""Rule 6c (at most ``max_limit_changes_per_day`` power-limit changes a day per machine) and
the sheds' own ramp (``shed_ramp_w_per_min``), issue 16.

The policy prices each new limit against its restart, but on a day when prices hover at a
machine's breakeven every change can pay for itself and a tunable machine still re-limits
eight or nine times; the cap bounds that without ever keeping a machine curtailed (a return to
full power and a wake are not held). The journal (SQLite and the backtest's) counts a change
once: a re-sent command is not a new change, nor is a limit the firmware already reports.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from pydantic import ValidationError

from curtaild.controller.backtest.journal import SimJournal
from curtaild.controller.guards import (
    GuardConfig,
    RampBucket,
    attach_limit_changes,
    is_limit_change,
    limit_window_s,
)
from curtaild.controller.journal import Journal
from curtaild.core.snapshot import Command
from tests.controller.test_guards import miner, ours, run, want
from tests.controller.test_guards_limit_dwell import NOW, economic, guard, m30s, mem, sent
from tests.controller.test_guards_limit_dwell import cfg as limit_cfg

DAY_S = 86400.0


def _limit(key: str = "W", w: float = 2500.0, action: str = "limit") -> Command:
    return Command(key=key, ip="127.152.9.1", action=action, power_limit_w=w,  # type: ignore
                   reason="test", delta_power_w=500.0)


def test_config_key_is_checked() -> None:
    assert GuardConfig().max_limit_changes_per_day == 0  # no cap unless the site sets one
    with pytest.raises(ValidationError, match="max_limit_changes_per_day"):
        GuardConfig(max_limit_changes_per_day=-1)
    with pytest.raises(ValidationError, match="one a minute is no cap"):
        GuardConfig(max_limit_changes_per_day=5000)
    with pytest.raises(ValidationError, match="shed_ramp_w_per_min"):
        GuardConfig(shed_ramp_w_per_min=0)
    assert limit_window_s(GuardConfig()) == 0.0
    assert limit_window_s(GuardConfig(max_limit_changes_per_day=4)) == DAY_S


def test_a_fifth_change_within_a_day_is_held_until_the_oldest_leaves_the_window() -> None:
    # a cheap restart, so that only the cap can hold the change (not rule 6c's escalation)
    c = limit_cfg(max_limit_changes_per_day=4, limit_dwell_s=600.0,
                  limit_restart_s={"whatsminer": 5.0})
    times = (NOW - 80_000, NOW - 50_000, NOW - 20_000, NOW - 3_000)
    m = replace(mem(changed=NOW - 3_000), limit_changes_at=times)
    r = guard(m30s(limit_w=2000.0), economic(limit=2600.0), m, config=c)
    assert sent(r) is None
    why = r.held["W"]
    assert why.startswith("limit changes: 4 in the last 24 h (max_limit_changes_per_day = 4)")
    assert "kept at 2000 W for 107 min more" in why  # NOW - 80,000 + 86,400 = NOW + 6,400 s
    # once the oldest is a day old, the change goes
    later = NOW + 6_401
    r = guard(m30s(limit_w=2000.0, observed_at=later - 2), economic(limit=2600.0), m,
              config=c, now=later)
    assert sent(r) is not None and sent(r).power_limit_w == 2600.0
    # without a cap nothing is held
    r = guard(m30s(limit_w=2000.0), economic(limit=2600.0), m,
              config=limit_cfg(limit_dwell_s=600.0))
    assert sent(r) is not None


def test_the_cap_never_keeps_a_machine_curtailed_nor_asleep() -> None:
    c = limit_cfg(max_limit_changes_per_day=2, limit_dwell_s=600.0)
    m = replace(mem(changed=NOW - 3_000, restore=3344.0),
                limit_changes_at=(NOW - 9_000, NOW - 3_000))
    # back to full power: a release of curtaild's limit goes through
    r = guard(m30s(limit_w=2000.0), economic("run", None, new=1.5), m, config=c)
    assert sent(r) is not None and sent(r).action == "run"
    # a wake (into a limit) goes through: the cap must not keep a machine asleep
    asleep = m30s(limit_w=2000.0, state="sleeping")
    r = guard(asleep, economic(limit=2500.0, hold=-0.07), replace(m, curtailed_action="sleep"),
              config=c)
    assert sent(r) is not None
    # an emergency shed (demand response) is not judged by rule 6c
    r = guard(m30s(limit_w=2600.0), economic(limit=1600.0, priority="emergency"), m, config=c)
    assert sent(r) is not None and sent(r).power_limit_w == 1600.0


def test_what_counts_as_a_change() -> None:
    assert is_limit_change(_limit(w=2500.0), 2000.0, None)
    assert not is_limit_change(_limit(w=2500.0), 2510.0, None)  # the firmware has it already
    assert not is_limit_change(_limit(w=2500.0), 2000.0, ("limit", 2500.0))  # a re-send
    assert is_limit_change(_limit(w=2500.0), 2000.0, ("limit", 2200.0))
    assert is_limit_change(_limit(w=3344.0, action="run"), 2000.0, ("limit", 2000.0))
    assert not is_limit_change(replace(_limit(), action="sleep"), 2000.0, None)
    assert not is_limit_change(replace(_limit(), power_limit_w=None, action="run"), 2000.0, None)


@pytest.mark.parametrize("kind", ["sqlite", "sim"])
def test_both_journals_count_changes_once_and_forget_them_after_a_day(kind: str,
                                                                     tmp_path) -> None:
    j = Journal(tmp_path / "j.sqlite") if kind == "sqlite" else SimJournal()

    def intent(cmd: Command, observed: float | None, t: float) -> None:
        if kind == "sqlite":
            j.record_intent(cmd, observed_limit_w=observed, dry_run=False, now=t)
        else:
            j.record_intent(cmd, observed, t)

    intent(_limit(w=2500.0), 2000.0, NOW - 90_000)  # older than a day
    intent(_limit(w=2000.0), 2500.0, NOW - 7_000)
    intent(_limit(w=2000.0), 2500.0, NOW - 6_900)  # the same command re-sent: not counted
    intent(_limit(w=2600.0), 2000.0, NOW - 100)
    intent(_limit(key="X", w=1500.0), 1500.0, NOW - 50)  # already at that limit
    if kind == "sqlite":
        j.record_intent(_limit(key="D", w=1800.0), observed_limit_w=3000.0, dry_run=True,
                        now=NOW - 10)  # a dry run changes nothing
    memory = j.memory(now=NOW, limit_window_s=DAY_S)
    assert memory["W"].limit_changes_at == (NOW - 7_000, NOW - 100)
    assert memory.get("X") is None or memory["X"].limit_changes_at == ()
    assert "D" not in memory or memory["D"].limit_changes_at == ()
    assert all(m.limit_changes_at == () for m in j.memory(now=NOW).values())  # not asked


def test_a_machine_curtaild_released_keeps_its_count() -> None:
    memory = {}
    attach_limit_changes(memory, {"W": (NOW - 10.0,)})
    assert memory["W"].limit_changes_at == (NOW - 10.0,) and not memory["W"].curtailed_by_us


# ------------------------------------------------------------------ shed_ramp_w_per_min
def _fleet(n: int = 6):
    miners = [miner(f"L{i}", j_per_th=38.0, power_w=3344) for i in range(n)]
    return miners, {m.key: want("sleep", -1.0) for m in miners}


def test_sheds_spend_their_own_bucket_and_restores_keep_the_ramp() -> None:
    miners, desired = _fleet()
    shared = GuardConfig(min_dwell_s=0.0, ramp_w_per_min=6000)
    r = run(miners, desired, config=shared, bucket=RampBucket(6000.0, NOW))
    assert len(r.commands) == 1  # 6 kW a minute: one 3.3 kW machine fits, in both directions
    own = GuardConfig(min_dwell_s=0.0, ramp_w_per_min=6000, shed_ramp_w_per_min=60_000)
    r = run(miners, desired, config=own,
            bucket=RampBucket(6000.0, NOW, shed_budget_w=60_000.0))
    assert len(r.commands) == 6
    assert r.bucket.shed_budget_w == pytest.approx(60_000 - 6 * 3304, abs=50)
    assert r.bucket.budget_w == 6000.0  # restores' bucket untouched
    # restores still at the restore ramp: six asleep machines, one goes per 6 kW
    asleep = [replace(m, state="sleeping", hashrate_ths=0.0, power_w=40.0) for m in miners]
    wake = {m.key: want("run", 1.0) for m in asleep}
    r = run(asleep, wake, {m.key: ours(m.key) for m in asleep}, config=own,
            bucket=RampBucket(6000.0, NOW, shed_budget_w=60_000.0))
    assert len(r.commands) == 1
    assert r.bucket.shed_budget_w == 60_000.0
    held = [v for v in r.held.values()]
    assert held and all(v.startswith("ramp limit") and "for sheds" not in v for v in held)


def test_shed_bucket_refills_at_its_rate_and_is_saved() -> None:
    miners, desired = _fleet()
    own = GuardConfig(min_dwell_s=0.0, ramp_w_per_min=600, shed_ramp_w_per_min=6000)
    r = run(miners, desired, config=own, bucket=RampBucket(0.0, NOW - 20))  # 2000 W in 20 s
    assert r.commands == []
    assert r.held["L0"] == "ramp limit: needs 3304 W, 2000 W available (6000 W/min for sheds)"
    assert r.bucket.shed_budget_w == pytest.approx(2000.0)
    assert r.bucket.budget_w == pytest.approx(200.0)
    saved = r.bucket.to_meta()
    assert RampBucket.from_meta(saved, NOW + 99) == r.bucket
    assert RampBucket.from_meta(None, NOW) == RampBucket(0.0, NOW)
    assert "shed_budget_w" not in RampBucket(5.0, NOW).to_meta()


def test_from_half_the_cap_on_a_new_limit_must_beat_its_restart_twice_then_four_times() -> None:
    from curtaild.controller.guards import _day_cap_factor

    c = GuardConfig(max_limit_changes_per_day=4)
    assert [_day_cap_factor(n, c) for n in range(5)] == [1.0, 1.0, 2.0, 4.0, 8.0]
    assert _day_cap_factor(10, GuardConfig()) == 1.0  # no cap, no escalation
    # A gain that pays for one restart (0.40 USD/day over 600 s = 0.0028 USD against 120 s
    # of restart = 0.0019 USD) but not for two: sent after one change today, held after two.
    c = limit_cfg(max_limit_changes_per_day=4, limit_dwell_s=600.0)
    d = economic(limit=2600.0, new=1.40, hold=1.00, sleep=0.0)
    one_change = replace(mem(changed=NOW - 3_000), limit_changes_at=(NOW - 3_000,))
    assert sent(guard(m30s(limit_w=2000.0), d, one_change, config=c)) is not None
    two = replace(one_change, limit_changes_at=(NOW - 9_000, NOW - 3_000))
    r = guard(m30s(limit_w=2000.0), d, two, config=c)
    assert sent(r) is None
    assert "restart x 2 (the day's limit changes run short)" in r.held["W"]
    # a return to full power is not escalated
    r = guard(m30s(limit_w=2000.0), economic("run", None, new=1.40, sleep=0.0),
              replace(two, restore_power_limit_w=3344.0), config=c)
    assert sent(r) is not None and sent(r).action == "run"


def test_at_the_cap_a_sleeping_machine_wakes_at_full_power_not_at_a_new_limit() -> None:
    c = limit_cfg(max_limit_changes_per_day=2, limit_dwell_s=600.0)
    asleep = m30s(limit_w=2000.0, state="sleeping")
    d = economic(limit=2500.0, hold=-0.07)
    spent = replace(mem(action="sleep", changed=NOW - 3_000),
                    limit_changes_at=(NOW - 9_000, NOW - 3_000))
    cmd = sent(guard(asleep, d, spent, config=c))
    assert cmd is not None and cmd.action == "run" and cmd.power_limit_w == 3344.0
    assert "woken at full power instead: 2 limit changes in the last 24 h" in cmd.reason
    # under the cap it wakes at the limit the policy chose
    fresh = replace(spent, limit_changes_at=(NOW - 3_000,))
    cmd = sent(guard(asleep, d, fresh, config=c))
    assert cmd is not None and cmd.action == "limit" and cmd.power_limit_w == 2500.0
    # at the cap, a wake at the limit the firmware already holds is no change: kept
    same = economic(limit=2000.0, hold=-0.07)
    cmd = sent(guard(asleep, same, spent, config=c))
    assert cmd is not None and cmd.power_limit_w == 2000.0
