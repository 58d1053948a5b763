"""Every number in the configuration is bounded: no infinite or NaN setting anywhere, an upper
limit (with its reason in the message) on every duration and count, and a cap on the fleet.

`poll_timeout_s = inf` passed `check` and let one hung miner stall the loop for good; 16 ranges
of 65,536 addresses passed too, then took 2.5 GB and never finished a first tick. The tests
walk the config models themselves, so a numeric key added later without a bound fails here.

The addresses below are configuration data only: nothing is bound or contacted.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import tracemalloc
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from curtaild.controller.config import (
    ConfigError,
    ControllerConfig,
    SiteConfig,
    parse_config,
)
from curtaild.controller.guards import GuardConfig
from curtaild.controller.mqtt_config import MqttConfig
from curtaild.drivers.hashprice_config import (
    FixedHashprice,
    HashrateIndexHashprice,
    MempoolHashprice,
    MempoolSource,
)
from curtaild.drivers.miners_config import (
    MAX_FLEET_ADDRESSES,
    FleetConfig,
    PowerConfig,
    count_addresses,
)
from curtaild.drivers.tariff_config import (
    DemandWindow,
    FlatTariff,
    RealtimeTariff,
    TouPeriod,
    TouTariff,
)
from curtaild.policies.margin import MarginConfig
from curtaild.policies.power_cap import CapWindow, PowerCapConfig
from curtaild.policies.schedule import ScheduleConfig
from curtaild.policies.thermal import ThermalConfig

REPO = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = {
    "fleet": {"hosts": ["127.155.0.1"]},
    "hashprice": {"source": "fixed", "usd_per_th_day": 0.05},
    "tariff": {"kind": "flat", "usd_per_kwh": 0.06},
    "policy": {"name": "margin"},
}

#: (where the model's keys live, the model, what else the document needs for it to apply)
SECTIONS: list[tuple[tuple[str | int, ...], type[BaseModel], dict[str, Any]]] = [
    (("fleet",), FleetConfig, {}),
    (("fleet", "power"), PowerConfig, {}),
    (("controller",), ControllerConfig, {}),
    (("guards",), GuardConfig, {}),
    (("site",), SiteConfig, {}),
    (("mqtt",), MqttConfig, {"mqtt": {"host": "127.155.0.1", "topic_prefix": "curtaild/t"}}),
    (("hashprice",), FixedHashprice, {}),
    (("hashprice",), MempoolHashprice, {"hashprice": {"source": "mempool"}}),
    (("hashprice",), HashrateIndexHashprice,
     {"hashprice": {"source": "hashrateindex", "api_key": "k" * 24}}),
    (("hashprice", "fallbacks", 0), MempoolSource,
     {"hashprice": {"source": "mempool", "fallbacks": [{"source": "mempool"}]}}),
    (("tariff",), FlatTariff, {}),
    (("tariff",), TouTariff, {"tariff": {"kind": "tou", "timezone": "UTC", "usd_per_kwh": 0.05}}),
    (("tariff",), RealtimeTariff,
     {"tariff": {"kind": "realtime", "url": "http://127.155.0.1/p", "field": "p"}}),
    (("tariff", "periods", 0), TouPeriod,
     {"tariff": {"kind": "tou", "timezone": "UTC", "usd_per_kwh": 0.05,
                 "periods": [{"start": "14:00", "end": "20:00", "usd_per_kwh": 0.1}]}}),
    (("tariff", "demand_windows", 0), DemandWindow,
     {"tariff": {"kind": "flat", "usd_per_kwh": 0.05, "timezone": "UTC",
                 "demand_windows": [{"start": "15:00", "end": "18:00"}]}}),
    (("policy",), MarginConfig, {}),
    (("policy", "thermal"), ThermalConfig, {"policy": {"name": "margin", "thermal": {}}}),
    (("policy", "power_cap"), PowerCapConfig,
     {"policy": {"name": "margin", "power_cap": {"cap_w": 1e6}}}),
    (("policy", "power_cap", "schedule", 0), CapWindow,
     {"policy": {"name": "margin", "power_cap": {"schedule": [
         {"start": "14:00", "end": "20:00", "cap_w": 1e6}]}}}),
    (("policy", "schedule"), ScheduleConfig, {"policy": {"name": "margin", "schedule": {}}}),
]


def _numeric(model: type[BaseModel]) -> list[tuple[str, type]]:
    """The model's int and float keys (optional ones too), and which of the two each is."""
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        args = typing.get_args(ann) if isinstance(ann, types.UnionType) \
            or typing.get_origin(ann) is typing.Union else (ann,)
        kinds = [a for a in args if a is not type(None)]
        if kinds and all(a in (int, float) for a in kinds):
            out.append((name, float if float in kinds else int))
    return out


def _key(path: tuple[str | int, ...]) -> str:
    """How a problem names the key: ``a.b[0].c`` (policy layers: ``policy.x.schedule.0.y``)."""
    if path[0] == "policy":
        return ".".join(str(p) for p in path)
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else ("." if out else "") + p
    return out


def _doc(extra: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy({**BASE, **extra})
    node: Any = doc
    for p in path[:-1]:
        if isinstance(p, str):
            node = node.setdefault(p, {})
        else:
            node = node[p]
    node[path[-1]] = value
    return doc


def _problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    return info.value.problems


CASES = [((*where, name), kind, extra)
         for where, model, extra in SECTIONS for name, kind in _numeric(model)
         if not (len(where) > 1 and where[0] == "policy" and name == "pool_fee")]  # [policy] only


def test_the_walk_finds_the_keys_of_the_report() -> None:
    keys = {_key(path) for path, _, _ in CASES}
    assert {"fleet.poll_timeout_s", "fleet.discovery_timeout_s", "controller.poll_interval_s",
            "guards.min_dwell_s", "mqtt.max_event_duration_s", "hashprice.timeout_s",
            "tariff.max_age_s", "policy.thermal.derate_step_w"} <= keys
    assert len(CASES) > 80


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")],
                         ids=["inf", "-inf", "nan"])
def test_no_setting_may_be_infinite_or_nan(value: float) -> None:
    missed = []
    for path, _, extra in CASES:
        key = _key(path)
        try:
            problems = _problems(_doc(extra, path, value))
        except pytest.fail.Exception:
            missed.append(f"{key}: accepted")
            continue
        if not any(p.startswith(f"{key}: ") and "finite" in p for p in problems):
            missed.append(f"{key}: {problems}")
    assert not missed, "\n".join(missed)


def test_every_duration_and_count_has_an_upper_bound_with_a_reason() -> None:
    """``*_s`` keys and integer keys: a trillion is refused, and the line says why."""
    missed = []
    for path, kind, extra in CASES:
        name = str(path[-1])
        if not (name.endswith("_s") or kind is int):
            continue
        key = _key(path)
        try:
            problems = _problems(_doc(extra, path, kind(10**12)))
        except pytest.fail.Exception:
            missed.append(f"{key}: 1e12 accepted")
            continue
        mine = [p for p in problems if p.startswith(f"{key}: ")]
        if not mine:
            missed.append(f"{key}: {problems}")
        elif not any("allowed: " in p for p in mine):
            missed.append(f"{key}: no reason: {mine}")
    assert not missed, ("bound each with controller.bounds.at_most(limit, why) so the message "
                        "says why:\n" + "\n".join(missed))


def test_poll_timeout_message_says_what_the_value_would_do() -> None:
    problems = _problems(_doc({}, ("fleet", "poll_timeout_s"), 3600.0))
    assert problems == [
        "fleet.poll_timeout_s: 3,600 s is more than the 300 s allowed: a hung miner holds its "
        "poll slot and delays the tick this long, every tick; a miner that answers at all "
        "answers in seconds"]
    problems = _problems(_doc({}, ("fleet", "poll_timeout_s"), float("inf")))
    assert problems == [
        "fleet.poll_timeout_s: not a finite number: inf and nan are valid TOML but no setting "
        "can be infinite (an infinite timeout or interval never ends)"]


def test_shipped_values_and_the_limits_themselves_are_accepted() -> None:
    parse_config(_doc({}, ("fleet", "poll_timeout_s"), 300.0))
    parse_config(_doc({}, ("guards", "min_dwell_s"), 86400.0))
    parse_config(_doc({}, ("controller", "verify_grace_s"), 86400))


def test_check_refuses_an_infinite_poll_timeout_from_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text((REPO / "config.toml").read_text().replace(
        "poll_timeout_s = 10", "poll_timeout_s = inf"))
    assert "poll_timeout_s = inf" in cfg.read_text()
    res = subprocess.run([sys.executable, "-m", "curtaild.controller.cli", "--config", str(cfg),
                          "check"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "fleet.poll_timeout_s: not a finite number: inf and nan are valid TOML but no setting "
        "can be infinite (an infinite timeout or interval never ends)"]


# --------------------------------------------------------------------------- fleet size
SIXTEEN_FULL_RANGES = [f"127.{i}.0.0-127.{i}.255.255" for i in range(16)]


def test_sixteen_ranges_of_65536_are_refused_with_the_count() -> None:
    tracemalloc.start()
    try:
        problems = _problems(_doc({}, ("fleet",), {"ranges": SIXTEEN_FULL_RANGES}))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert problems == [
        "fleet.ranges: 1,048,576 addresses in hosts and ranges (each counted once); at most "
        "100,000: every address is polled each tick and held in memory, and curtaild is sized "
        "for sites up to that; run one curtaild per part of a larger site"]
    # Counted from the spans: a million address strings would take well over 50 MB.
    assert peak < 20 * 1024 * 1024, peak


def test_the_cap_counts_each_address_once() -> None:
    assert MAX_FLEET_ADDRESSES == 100_000
    # 65,536 + 34,464 = exactly 100,000 addresses: accepted, even listed twice, overlapping
    # and with a host inside them.
    exact = ["127.155.0.0-127.155.255.255", "127.156.0.0-127.156.134.159"]
    cfg = parse_config(_doc({}, ("fleet",), {
        "ranges": [*exact, *exact, "127.155.250.0-127.156.3.255"], "hosts": ["127.155.7.7"]}))
    assert len(cfg.fleet.addresses()) == 100_000
    # One host more, outside the ranges: refused, and the line says 100,001.
    (line,) = _problems(_doc({}, ("fleet",), {"ranges": exact, "hosts": ["127.157.0.1"]}))
    assert line.startswith("fleet.ranges: 100,001 addresses")
    # Hosts alone are capped too, under their own key.
    hosts = [f"127.{155 + i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(100_001)]
    (line,) = _problems(_doc({}, ("fleet",), {"hosts": hosts}))
    assert line.startswith("fleet.hosts: 100,001 addresses")


@pytest.mark.parametrize("seed", range(20))
def test_count_addresses_matches_the_expanded_list(seed: int) -> None:
    import random

    rnd = random.Random(seed)
    hosts = [f"127.155.{rnd.randrange(4)}.{rnd.randrange(256)}" for _ in range(rnd.randrange(30))]
    ranges = []
    for _ in range(rnd.randrange(6)):
        a = rnd.randrange(4 * 256)
        b = a + rnd.randrange(300)
        ranges.append(f"127.155.{a // 256}.{a % 256}-127.155.{b // 256}.{b % 256}")
    fleet = FleetConfig(hosts=hosts, ranges=ranges)
    assert count_addresses(hosts, ranges) == len(fleet.addresses())
