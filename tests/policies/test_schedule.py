"""schedule: windows with lead times, their end, efficiency filter, tariff demand windows."""

from __future__ import annotations

import pytest

from curtaild.core.snapshot import Desired, Directives
from curtaild.policies.layer import everything_runs
from curtaild.policies.schedule import ScheduleConfig, SchedulePolicy
from tests.policies.snapshots import WED_1430_CHICAGO as NOW
from tests.policies.snapshots import fleet, market, miner

GOOD = miner("good", hashrate_ths=200.0)  # 15 J/TH
BAD = miner("bad", hashrate_ths=100.0)  # 30 J/TH
LIM = miner("lim", hashrate_ths=100.0, limits=(1000.0, 3000.0))
FOURCP = {"name": "4CP", "months": "6-9", "days": "weekdays", "start": "15:00",
          "end": "18:00"}


def policy(**kw: object) -> SchedulePolicy:
    kw.setdefault("timezone", "America/Chicago")
    return SchedulePolicy(ScheduleConfig(**kw))  # type: ignore[arg-type]


def actions(p: SchedulePolicy, now: float, mk="fresh", *miners) -> dict[str, str]:
    f = fleet(*(miners or (GOOD, BAD)), now=now)
    out = p.apply(everything_runs(f), f, market() if mk == "fresh" else mk, Directives(), now)
    return {k: d.action for k, d in out.items()}


def test_lead_time_before_the_window() -> None:
    # 14:30: the window starts in 30 min.
    assert actions(policy(windows=[FOURCP], lead_s=3600), NOW) == {"good": "sleep",
                                                                   "bad": "sleep"}
    assert actions(policy(windows=[FOURCP], lead_s=1200), NOW) == {"good": "run", "bad": "run"}
    f = fleet(GOOD)
    d = policy(windows=[FOURCP], lead_s=3600).apply(everything_runs(f), f, market(),
                                                    Directives(), NOW)["good"]
    assert "window '4CP' starts in 30 min (lead 3600 s)" in d.reason
    assert d.priority == "normal" and d.run_margin_usd_per_day is None


def test_in_window_until_its_end_exclusive() -> None:
    p = policy(windows=[FOURCP])
    assert actions(p, NOW + 3.5 * 3600 - 60)["bad"] == "sleep"  # 17:59
    assert actions(p, NOW + 3.5 * 3600)["bad"] == "run"  # 18:00
    assert actions(p, NOW + 7 * 86400 / 7 * 3 + 3600)["bad"] == "run"  # Saturday 15:30


def test_only_worse_than_threshold() -> None:
    got = actions(policy(windows=[FOURCP], lead_s=3600, only_worse_than_j_per_th=20), NOW)
    assert got == {"good": "run", "bad": "sleep"}


def test_limit_action_uses_fraction_and_sleeps_what_cannot_limit() -> None:
    p = policy(windows=[FOURCP], lead_s=3600, action="limit", power_limit_fraction=0.5)
    f = fleet(LIM, BAD)
    out = p.apply(everything_runs(f), f, market(), Directives(), NOW)
    assert out["lim"].action == "limit" and out["lim"].power_limit_w == 1500.0
    assert out["bad"].action == "sleep"
    with pytest.raises(ValueError, match="power_limit_fraction"):
        ScheduleConfig(action="limit")


def test_deeper_base_curtailment_stands() -> None:
    f = fleet(BAD)
    base = {"bad": Desired(action="sleep", reason="margin")}
    out = policy(windows=[FOURCP]).apply(base, f, market(), Directives(), NOW + 3600)
    assert out == base


def test_tariff_demand_windows_with_lead() -> None:
    ahead = {"in_demand_window": False,
             "demand_windows_ahead": [[NOW + 1800, NOW + 1800 + 3 * 3600, "4CP"]]}
    assert actions(policy(lead_s=3600), NOW, market(tariff_extra=ahead))["bad"] == "sleep"
    assert actions(policy(lead_s=600), NOW, market(tariff_extra=ahead))["bad"] == "run"
    off = policy(lead_s=3600, use_tariff_demand_windows=False)
    assert actions(off, NOW, market(tariff_extra=ahead))["bad"] == "run"


def test_no_market_no_opinion() -> None:
    f = fleet(GOOD, BAD)
    assert policy(windows=[FOURCP], lead_s=3600).decide(f, None, NOW) == {}
    assert actions(policy(windows=[FOURCP], lead_s=3600), NOW, None) == {"good": "run",
                                                                        "bad": "run"}
