"""Fleet building, unit level: address assignment, the fleet-file format and its errors."""

from __future__ import annotations

import pytest

from curtaild.core.models import FAMILIES, MODELS
from curtaild.emulator.fleet import (
    FleetError,
    build_miners,
    consecutive,
    parse_loopback,
    plan_count,
    plan_fleet_text,
)


def test_count_cycles_every_model_and_family() -> None:
    plan = plan_count(len(MODELS) + 2, "127.10.0.1")
    models = [m.model for m in plan.miners]
    assert models[: len(MODELS)] == list(MODELS)
    assert models[len(MODELS):] == list(MODELS)[:2]
    assert {MODELS[m].firmware for m in models} == set(FAMILIES)
    assert [m.ip for m in plan.miners[:3]] == ["127.10.0.1", "127.10.0.2", "127.10.0.3"]


def test_consecutive_skips_network_and_broadcast_octets() -> None:
    ips = consecutive(parse_loopback("127.10.0.253"))
    assert [next(ips) for _ in range(4)] == ["127.10.0.253", "127.10.0.254", "127.10.1.1",
                                             "127.10.1.2"]


@pytest.mark.parametrize("bad", ["10.0.0.1", "127.1.0.0", "127.1.0.255", "nonsense", "::1"])
def test_first_ip_must_be_usable_loopback(bad: str) -> None:
    with pytest.raises(FleetError, match="--first-ip"):
        plan_count(2, bad)


def test_count_must_be_positive() -> None:
    with pytest.raises(FleetError, match="--count"):
        plan_count(0)


def test_fleet_file_full_example() -> None:
    plan = plan_fleet_text("""
time_scale = 0.05
ambient_c = 30

[[miner]]
model = "S19j Pro"
count = 2
fault = "slow"
delay_s = 1.5

[[miner]]
model = "M50"
ip = "127.10.0.2"
firmware = "whatsminer"
power_limit_w = 2500
ambient_c = 35

[[miner]]
model = "BitAxe Gamma"
""", "127.10.0.1")
    assert plan.time_scale == 0.05 and plan.ambient_c == 30
    # The explicit 127.10.0.2 is skipped by the automatic addresses.
    assert [(m.ip, m.model) for m in plan.miners] == [
        ("127.10.0.1", "S19j Pro"), ("127.10.0.3", "S19j Pro"), ("127.10.0.2", "M50"),
        ("127.10.0.4", "BitAxe Gamma")]
    miners = build_miners(plan, time_scale=0.05)
    s19, _, m50, axe = miners
    assert s19.fault.kind == "slow" and s19.fault.delay_s == 1.5
    assert s19.ambient_c == 30 and m50.ambient_c == 35
    assert m50.power_limit_w == 2500
    assert axe.fault.kind == "none" and axe.time_scale == 0.05


def test_explicit_ip_with_count_is_a_consecutive_block() -> None:
    plan = plan_fleet_text('[[miner]]\nmodel = "S21"\nip = "127.10.0.254"\ncount = 3\n')
    assert [m.ip for m in plan.miners] == ["127.10.0.254", "127.10.1.1", "127.10.1.2"]


@pytest.mark.parametrize(("text", "where"), [
    ('[[miner]]\nmodel = "S9"\n', r"miner\[0\]\.model: unknown model 'S9'"),
    ('[[miner]]\nip = "127.1.0.1"\n', r"miner\[0\]\.model: missing"),
    ('[[miner]]\nmodel = "S21"\n[[miner]]\nmodel = "M50"\nfirmware = "antminer"\n',
     r"miner\[1\]\.firmware: 'antminer' does not match model 'M50'"),
    ('[[miner]]\nmodel = "S21"\ncolour = "red"\n', r"miner\[0\]: unknown key\(s\) colour"),
    ('[[miner]]\nmodel = "S21"\ncount = 0\n', r"miner\[0\]\.count"),
    ('[[miner]]\nmodel = "S21"\ncount = true\n', r"miner\[0\]\.count"),
    ('[[miner]]\nmodel = "S21"\nfault = "fire"\n', r"miner\[0\]\.fault: unknown fault 'fire'"),
    ('[[miner]]\nmodel = "S21"\ndelay_s = "soon"\n', r"miner\[0\]\.delay_s: expected a number"),
    ('[[miner]]\nmodel = "S19j Pro"\npower_limit_w = 2500\n',
     r"miner\[0\]\.power_limit_w: model 'S19j Pro' \(antminer firmware\) does not accept"),
    ('[[miner]]\nmodel = "M50"\npower_limit_w = 9000\n',
     r"miner\[0\]\.power_limit_w: 9000 W outside"),
    ('[[miner]]\nmodel = "S21"\nip = "10.1.1.1"\n',
     r"miner\[0\]\.ip: 10\.1\.1\.1 is not a loopback"),
    ('[[miner]]\nmodel = "S21"\nip = "127.1.0.1"\n[[miner]]\nmodel = "S21"\nip = "127.1.0.1"\n',
     r"miner\[1\]\.ip: address 127\.1\.0\.1 is also used by miner\[0\]"),
    ('[[miner]]\nmodel = "S21"\nambient_c = 500\n', r"miner\[0\]\.ambient_c: 500 out of range"),
    ('speed = 3\n[[miner]]\nmodel = "S21"\n', r"unknown top-level key\(s\) speed"),
    ('time_scale = -1\n[[miner]]\nmodel = "S21"\n', r"time_scale: -1 out of range"),
    ("", r"no \[\[miner\]\] tables"),
    ("[[miner]\n", r"not valid TOML"),
    ('miner = "S21"\n', r"'miner' must be an array of tables"),
])
def test_fleet_file_errors_name_table_and_key(text: str, where: str) -> None:
    with pytest.raises(FleetError, match=where):
        plan_fleet_text(text, "127.1.0.1", source="fleet.toml")


def test_error_messages_start_with_the_source() -> None:
    with pytest.raises(FleetError) as info:
        plan_fleet_text('[[miner]]\nmodel = "S9"\n', source="site-a.toml")
    assert str(info.value).startswith("site-a.toml: miner[0].model")
