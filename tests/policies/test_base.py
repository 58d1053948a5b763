"""The policy plug-in surface: lookup by name, entry points, errors that name the key."""

from __future__ import annotations

import sys
import types
from importlib import metadata

import pytest
from pydantic import Field

from curtaild.core.snapshot import Desired, FleetSnapshot, MarketSnapshot
from curtaild.policies import base
from curtaild.policies.base import (
    ENTRY_POINT_GROUP,
    Policy,
    PolicyConfig,
    PolicyError,
    available_policies,
    load_policy,
)
from curtaild.policies.margin import MarginConfig, MarginPolicy


def _problems(name: str, params: dict) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy(name, params)
    assert str(info.value).splitlines() == info.value.problems
    return info.value.problems


def test_margin_loads_with_defaults() -> None:
    policy = load_policy("margin", {})
    assert isinstance(policy, MarginPolicy)
    assert isinstance(policy, Policy)
    assert policy.name == "margin"
    assert policy.config.pool_fee == 0.02
    assert policy.config == MarginConfig()


def test_params_reach_the_config() -> None:
    policy = load_policy("margin", {"pool_fee": 0.01, "use_power_limits": False,
                                    "efficiency_exponent": 0.8})
    assert policy.config.pool_fee == 0.01
    assert policy.config.use_power_limits is False
    assert policy.config.efficiency_exponent == 0.8


def test_unknown_name_lists_available() -> None:
    (line,) = _problems("nope", {})
    assert line.startswith("policy.name: ")
    assert "'nope'" in line and "available: margin" in line


def test_every_invalid_param_named_on_its_own_line() -> None:
    lines = _problems("margin", {"pool_fee": 1.5, "limit_search_steps": 0, "pool_fe": 0.02,
                                 "use_power_limits": "maybe"})
    assert len(lines) == 4
    by_key = {line.split(":", 1)[0]: line for line in lines}
    assert set(by_key) == {"policy.pool_fee", "policy.limit_search_steps", "policy.pool_fe",
                           "policy.use_power_limits"}
    assert "less than 1" in by_key["policy.pool_fee"]
    assert "unknown key" in by_key["policy.pool_fe"]
    assert "pool_fee" in by_key["policy.pool_fe"]  # the valid keys are listed


def test_negative_pool_fee_rejected() -> None:
    (line,) = _problems("margin", {"pool_fee": -0.01})
    assert line.startswith("policy.pool_fee: ")


def test_builtin_registered_as_entry_point() -> None:
    eps = {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert eps.get("margin") == "curtaild.policies.margin:MarginPolicy"
    assert available_policies()["margin"] == "curtaild.policies.margin:MarginPolicy"


# ------------------------------------------------------------------ third parties
class _AlwaysRunConfig(PolicyConfig):
    note: str = Field("hi")


class _AlwaysRun:
    name = "always_run"
    Config = _AlwaysRunConfig

    def __init__(self, config: _AlwaysRunConfig):
        self.config = config

    def decide(self, fleet: FleetSnapshot, market: MarketSnapshot,
               now: float) -> dict[str, Desired]:
        return {m.key: Desired(action="run", reason=self.config.note) for m in fleet.miners}


class _NoFeeConfig(PolicyConfig.__base__):  # a bare BaseModel, without pool_fee
    pass


class _NoFee(_AlwaysRun):
    Config = _NoFeeConfig


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = types.ModuleType("curtaild_test_plugin")
    mod.AlwaysRun = _AlwaysRun  # type: ignore[attr-defined]
    mod.NoFee = _NoFee  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "curtaild_test_plugin", mod)
    real = metadata.entry_points(group=ENTRY_POINT_GROUP)
    extra = [
        metadata.EntryPoint("always_run", "curtaild_test_plugin:AlwaysRun", ENTRY_POINT_GROUP),
        metadata.EntryPoint("no_fee", "curtaild_test_plugin:NoFee", ENTRY_POINT_GROUP),
        metadata.EntryPoint("broken", "curtaild_missing_module:X", ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(base.metadata, "entry_points",
                        lambda group: [*real, *extra] if group == ENTRY_POINT_GROUP else [])


@pytest.mark.usefixtures("plugin")
def test_third_party_policy_loads_through_entry_point() -> None:
    policy = load_policy("always_run", {"note": "x", "pool_fee": 0.0})
    assert isinstance(policy, _AlwaysRun)
    assert policy.config.note == "x" and policy.config.pool_fee == 0.0
    (line,) = _problems("always_run", {"nope": 1})
    assert line.startswith("policy.nope: unknown key")
    assert "always_run" in _problems("nope", {})[0]


@pytest.mark.usefixtures("plugin")
def test_broken_plugins_are_config_errors() -> None:
    (line,) = _problems("broken", {})
    assert line.startswith("policy.name: ") and "failed to load" in line
    (line,) = _problems("no_fee", {})
    assert line.startswith("policy.name: ") and "pool_fee" in line
    assert isinstance(load_policy("margin", {}), MarginPolicy)  # others unaffected


def test_builtins_without_package_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base.metadata, "entry_points", lambda group: [])
    assert isinstance(load_policy("margin", {}), MarginPolicy)

    def broken(group: str) -> list:
        raise RuntimeError("no metadata")

    monkeypatch.setattr(base.metadata, "entry_points", broken)
    assert isinstance(load_policy("margin", {}), MarginPolicy)
