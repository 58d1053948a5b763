"""power_cap on hand-made snapshots: what counts, who is shed first, limit before sleep, DR."""

from __future__ import annotations

import dataclasses

import pytest

from curtaild.core.snapshot import Desired, Directives
from curtaild.policies.layer import everything_runs
from curtaild.policies.power_cap import PowerCapConfig, PowerCapPolicy
from tests.policies.snapshots import WED_1430_CHICAGO as NOW
from tests.policies.snapshots import fleet, market, miner

# Three sleep-only machines at 3000 W: 30, 25 and 20 J/TH.
A = miner("A", hashrate_ths=100.0)
C = miner("C", hashrate_ths=120.0)
B = miner("B", hashrate_ths=150.0)


def cap(**kw: object) -> PowerCapPolicy:
    return PowerCapPolicy(PowerCapConfig(**kw))  # type: ignore[arg-type]


def run(policy: PowerCapPolicy, *miners, mk="fresh", directives=None, pinned=()):
    f = fleet(*miners)
    return policy.apply(everything_runs(f), f, market() if mk == "fresh" else mk,
                        directives or Directives(), NOW, pinned=pinned)


def test_under_the_cap_nothing_changes() -> None:
    out = run(cap(cap_w=9000), A, B, C)
    assert {k: d.action for k, d in out.items()} == {"A": "run", "B": "run", "C": "run"}


@pytest.mark.parametrize("mk", ["fresh", None])
def test_sheds_worst_first_until_under_the_cap(mk) -> None:
    # 9000 W under "everything runs", budget 6500: one sleep (2960 W) is enough -> the worst.
    out = run(cap(cap_w=7000, headroom_w=500), A, B, C, mk=mk)
    assert {k: d.action for k, d in out.items()} == {"A": "sleep", "B": "run", "C": "run"}
    assert out["A"].priority == "emergency"  # a cap is a limit, not a price decision
    assert "power cap 7000 W (cap_w)" in out["A"].reason
    assert "site ~9000 W" in out["A"].reason and "budget 6500 W" in out["A"].reason
    assert out["A"].run_margin_usd_per_day is None  # the hysteresis band must not veto it
    # budget 3500: two sleeps, worst then next worst.
    out = run(cap(cap_w=3500), A, B, C, mk=mk)
    assert {k: d.action for k, d in out.items()} == {"A": "sleep", "B": "run", "C": "sleep"}


def test_without_market_orders_by_j_per_th() -> None:
    out = run(cap(cap_w=7000), A, B, C, mk=None)
    assert "worst J/TH first, 30.0 J/TH" in out["A"].reason


def test_priced_order_keeps_the_best_earner() -> None:
    out = run(cap(cap_w=6000), A, B, C, mk=market(hashprice=0.05, tariff=0.06))
    assert out["B"].action == "run" and out["A"].action == "sleep"


def test_power_targets_before_sleep_and_only_as_far_as_needed() -> None:
    lim = miner("L", hashrate_ths=100.0, limits=(1000.0, 3000.0))
    out = run(cap(cap_w=8000), lim, B, C)  # 9000 W: 1000 W over
    # L is the worst (30 J/TH) and can take a target: limited by exactly 1000 W, not slept.
    assert out["L"].action == "limit" and out["L"].power_limit_w == 2000.0
    assert out["B"].action == "run" and out["C"].action == "run"
    # With limits off it is slept.
    out = run(cap(cap_w=8000, use_power_limits=False), lim, B, C)
    assert out["L"].action == "sleep"


def test_limit_to_the_floor_then_the_next_machine() -> None:
    lim = miner("L", hashrate_ths=100.0, limits=(1000.0, 3000.0))
    out = run(cap(cap_w=5000), lim, B, C)  # 4000 W over: L gives 2000 at its floor
    assert out["L"].action == "limit" and out["L"].power_limit_w == 1000.0
    assert out["C"].action == "sleep" and out["B"].action == "run"


def test_base_decision_is_what_is_counted() -> None:
    f = fleet(A, B, C)
    base = everything_runs(f)
    base["A"] = Desired(action="sleep", reason="margin says sleep")
    out = cap(cap_w=6500).apply(base, f, market(), Directives(), NOW)
    assert out == base  # 40 + 3000 + 3000 fits: nothing more to shed


def test_demand_response_event_is_emergency_and_names_the_event() -> None:
    dr = Directives(power_cap_w=6500.0, power_cap_event_id="ev-42", power_cap_until=NOW + 60)
    out = run(cap(), A, B, C, directives=dr)  # no cap configured: the DR event alone
    assert out["A"].action == "sleep" and out["A"].priority == "emergency"
    assert "demand-response event ev-42" in out["A"].reason
    # The lower of a fixed cap and an event is in force, and names itself in the reason.
    out = run(cap(cap_w=3500), A, B, C, directives=dr)
    assert out["A"].priority == "emergency" and "(cap_w)" in out["A"].reason
    # An event past its end is ignored.
    old = Directives(power_cap_w=100.0, power_cap_event_id="old", power_cap_until=NOW - 1)
    assert all(d.action == "run" for d in run(cap(), A, B, C, directives=old).values())


def test_scheduled_cap_only_inside_its_window() -> None:
    window = {"name": "peak", "start": "14:00", "end": "20:00", "days": "weekdays",
              "cap_w": 7000, "timezone": "America/Chicago"}
    out = run(cap(schedule=[window]), A, B, C)
    assert out["A"].action == "sleep" and "scheduled cap 'peak' 14:00-20:00" in out["A"].reason
    later = {**window, "start": "15:00"}
    assert all(d.action == "run" for d in run(cap(schedule=[later]), A, B, C).values())


def test_pinned_machines_count_but_are_not_shed() -> None:
    out = run(cap(cap_w=7000), A, B, C, pinned={"A"})
    assert out["A"].action == "run" and out["C"].action == "sleep"


def test_standalone_decide_uses_market_cap_as_dr() -> None:
    from dataclasses import replace

    f = fleet(A, B, C)
    out = PowerCapPolicy().decide(f, replace(market(), power_cap_w=6500.0), NOW)
    assert out["A"].action == "sleep" and out["A"].priority == "emergency"
    assert PowerCapPolicy().decide(f, market(), NOW) == everything_runs(f)


def test_config_rejects_bad_windows() -> None:
    with pytest.raises(ValueError, match="cap_w"):
        PowerCapConfig(schedule=[{"start": "14:00", "end": "15:00"}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="time zone"):
        PowerCapConfig(timezone="Mars/Olympus")


def test_a_fixed_cap_holds_through_stale_prices_and_the_ramp() -> None:
    """The stale-market fail-safe releases economic curtailment only: a feeder cap is shed
    through stale inputs, an empty ramp bucket and a recent change (minimum dwell)."""
    from curtaild.controller.guards import GuardConfig, MinerMemory, RampBucket, apply_guards
    from curtaild.policies.compose import build_policy_stack, decide_stack

    stack = build_policy_stack({"name": "margin", "power_cap": {"cap_w": 7000}})
    f = fleet(A, B, C)
    stale = dataclasses.replace(market(hashprice=0.5), hashprice_age_s=7200.0)  # 2 h old
    want = decide_stack(stack, f, stale, Directives(), NOW)
    assert [k for k, d in want.items() if d.action != "run"] == ["A"]
    recent = {"A": MinerMemory(key="A", curtailed_by_us=False, curtailed_action=None,
                               restore_power_limit_w=None, last_change_at=NOW - 5,
                               flagged=False)}
    got = apply_guards(f, stale, want, recent, RampBucket(budget_w=0.0, updated_at=NOW),
                       GuardConfig(stale_market_after_s=1800, min_dwell_s=600), NOW)
    assert [(c.key, c.action) for c in got.commands] == [("A", "sleep")]
