"""power_cap counts confirmed power (issue 14): an acknowledged shed that is not yet seen in
effect, a refused one and a machine flagged for lying count at what they were observed
drawing, and are never picked to shed; the cap sheds another machine instead."""

from __future__ import annotations

import dataclasses

import pytest

from curtaild.controller.loop import TickResult, predicted
from curtaild.core.snapshot import Command, Desired, Directives
from curtaild.policies.layer import everything_runs
from curtaild.policies.power_cap import PowerCapConfig, PowerCapPolicy
from tests.policies.snapshots import WED_1430_CHICAGO as NOW
from tests.policies.snapshots import fleet, market, miner

# Three sleep-only machines at 3000 W: 30, 25 and 20 J/TH (A is the worst, shed first).
A = miner("A", hashrate_ths=100.0)
C = miner("C", hashrate_ths=120.0)
B = miner("B", hashrate_ths=150.0)


def shed(*miners, cap_w: float = 7000.0) -> dict[str, str]:
    f = fleet(*miners)
    out = PowerCapPolicy(PowerCapConfig(cap_w=cap_w)).apply(
        everything_runs(f), f, market(), Directives(), NOW)
    return {k: d.action for k, d in out.items()}


def test_without_a_command_outstanding_the_worst_is_shed() -> None:
    assert shed(A, B, C) == {"A": "sleep", "B": "run", "C": "run"}


@pytest.mark.parametrize("state", ["pending", "failed", "lying"])
def test_an_unconfirmed_shed_is_counted_and_another_machine_shed(state: str) -> None:
    # A was told to sleep and is still seen hashing at 3000 W: the site is 9000 W, not 6040.
    told = dataclasses.replace(A, command_state=state)
    got = shed(told, B, C)
    assert got["C"] == "sleep"  # the next worst, so the cap is met on what is drawn
    assert got["A"] == "run"  # not picked again: its command is out, or it does not obey
    assert got["B"] == "run"


def test_a_confirmed_sleep_counts_its_idle_draw() -> None:
    asleep = dataclasses.replace(miner("A", state="sleeping"), command_state="confirmed")
    f = fleet(asleep, B, C)
    base = {**everything_runs(f), "A": Desired(action="sleep", reason="kept asleep")}
    out = PowerCapPolicy(PowerCapConfig(cap_w=7000.0)).apply(base, f, market(), Directives(),
                                                             NOW)
    # 40 + 3000 + 3000 W is under 7000 W: nothing more to shed.
    assert {k: d.action for k, d in out.items()} == {"A": "sleep", "B": "run", "C": "run"}


def test_a_pending_wake_counts_its_full_draw() -> None:
    # Asleep (40 W) but woken: it will draw 3000 W once it boots. 3000 + 3000 + 3000 > 7000,
    # and it is not put back to sleep mid-boot: another machine is shed.
    waking = dataclasses.replace(miner("A", state="sleeping"), command_state="pending")
    got = shed(waking, B, C)
    assert got["A"] == "run" and got["C"] == "sleep"


def test_a_transitioning_machine_counts_as_any_unreachable_one() -> None:
    # Silent right after our own sleep: its draw is unknown (headroom_w covers it), as for
    # every unreachable machine; 3000 + 3000 W fit the cap.
    silent = dataclasses.replace(A, state="unreachable", power_w=0.0,
                                 command_state="transitioning", error="transitioning: ...")
    assert shed(silent, B, C) == {"B": "run", "C": "run"}


def test_a_fast_tick_counts_an_acknowledged_sleep_at_its_observed_draw() -> None:
    """The fast tick decides on the last observation with its commands applied: the sleep it
    sent is "pending" there, and a cap lowered meanwhile sheds another machine rather than
    counting the sleep as done."""
    f = fleet(A, B, C)
    last = TickResult(started_at=NOW, duration_s=1.0, fleet=f, market=market(), desired={},
                      effective={}, held={}, commands=(Command(
                          key="A", ip=A.ip, action="sleep", power_limit_w=None, reason="t",
                          delta_power_w=-2960.0),), outcomes={"A": "ok: sleep"}, dry_run=False)
    seen = predicted(last)
    a = seen.by_key()["A"]
    assert (a.state, a.command_state, a.power_w) == ("sleeping", "pending", 3000.0)
    out = PowerCapPolicy(PowerCapConfig(cap_w=7000.0)).apply(
        everything_runs(seen), seen, market(), Directives(), NOW)
    assert out["C"].action == "sleep" and out["B"].action == "run"
