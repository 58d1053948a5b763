"""thermal: derate stepwise, sleep, hysteresis recovery read from the observation."""

from __future__ import annotations

import pytest

from curtaild.core.snapshot import Desired, Directives
from curtaild.policies.thermal import ThermalConfig, ThermalPolicy
from tests.policies.snapshots import WED_1430_CHICAGO as NOW
from tests.policies.snapshots import fleet, miner

T = ThermalPolicy(ThermalConfig(max_temp_c=80, sleep_temp_c=90, recovery_band_c=5,
                                derate_step_w=300))
LIMITS = (1000.0, 3000.0)


def test_cool_machines_have_no_opinion() -> None:
    assert T.decide_one(miner("a", temp_c=79.9, limits=LIMITS)) is None
    assert T.decide_one(miner("a", temp_c=None)) is None
    assert T.decide_one(miner("a", state="unreachable", temp_c=99.0)) is None


def test_derate_steps_from_the_present_limit() -> None:
    d = T.decide_one(miner("a", temp_c=82.0, limits=LIMITS))
    assert d is not None and d.action == "limit" and d.power_limit_w == 2700.0
    assert d.priority == "emergency" and "82 C >= max_temp_c 80 C" in d.reason
    d = T.decide_one(miner("a", temp_c=82.0, limits=LIMITS, limit_w=2000.0))
    assert d is not None and d.power_limit_w == 1700.0
    d = T.decide_one(miner("a", temp_c=82.0, limits=LIMITS, limit_w=1150.0))
    assert d is not None and d.power_limit_w == 1000.0  # not below the firmware's floor


def test_at_the_floor_or_without_targets_it_sleeps() -> None:
    d = T.decide_one(miner("a", temp_c=82.0, limits=LIMITS, limit_w=1000.0))
    assert d is not None and d.action == "sleep" and "lowest target" in d.reason
    d = T.decide_one(miner("a", temp_c=82.0))
    assert d is not None and d.action == "sleep" and "no power targets" in d.reason
    off = ThermalPolicy(ThermalConfig(derate=False))
    assert off.decide_one(miner("a", temp_c=82.0, limits=LIMITS)).action == "sleep"


def test_sleep_temp_sleeps_and_no_sleep_firmware_gets_its_floor() -> None:
    assert T.decide_one(miner("a", temp_c=90.0, limits=LIMITS)).action == "sleep"
    d = T.decide_one(miner("a", temp_c=95.0, limits=LIMITS, sleep=False))
    assert d is not None and d.action == "limit" and d.power_limit_w == 1000.0


def test_recovery_hysteresis() -> None:
    # Derated and cooled to 77 C (inside the 5 C band): held at its limit.
    d = T.decide_one(miner("a", temp_c=77.0, limits=LIMITS, limit_w=2400.0))
    assert d is not None and d.action == "limit" and d.power_limit_w == 2400.0
    assert "held until below 75 C" in d.reason
    # Below 75 C: no opinion, the base restores it.
    assert T.decide_one(miner("a", temp_c=74.9, limits=LIMITS, limit_w=2400.0)) is None
    # Unlimited at 77 C: nothing to recover from.
    assert T.decide_one(miner("a", temp_c=77.0, limits=LIMITS)) is None
    # Asleep and still warm: stays asleep; cool: no opinion.
    d = T.decide_one(miner("a", state="sleeping", temp_c=76.0))
    assert d is not None and d.action == "sleep" and d.priority == "emergency"
    assert T.decide_one(miner("a", state="sleeping", temp_c=60.0)) is None


def test_apply_only_lowers_power() -> None:
    hot = miner("a", temp_c=85.0, limits=LIMITS)
    f = fleet(hot)
    deeper = {"a": Desired(action="limit", reason="margin", power_limit_w=1500.0)}
    assert T.apply(deeper, f, None, Directives(), NOW) == deeper
    out = T.apply({"a": Desired(action="run", reason="margin: run")}, f, None, Directives(),
                  NOW)
    assert out["a"].power_limit_w == 2700.0 and "[overrides: margin: run]" in out["a"].reason
    assert T.decide(f, None, NOW)["a"].action == "limit"  # standalone, no market needed


def test_config_sleep_must_be_above_max() -> None:
    with pytest.raises(ValueError, match="sleep_temp_c"):
        ThermalConfig(max_temp_c=85, sleep_temp_c=85)
