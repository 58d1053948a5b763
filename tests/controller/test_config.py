"""Configuration validation: every problem named by key path, nothing accepted silently."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from curtaild.controller.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]

GOOD = {
    "fleet": {"hosts": ["127.0.0.5"], "ranges": ["127.0.1.1-127.0.1.3", "127.0.2.250-127.0.3.2"]},
    "hashprice": {"source": "fixed", "usd_per_th_day": 0.05},
    "tariff": {"kind": "flat", "usd_per_kwh": 0.06},
    "policy": {"name": "margin", "pool_fee": 0.02},
    "controller": {"dry_run": True, "state_dir": "/tmp/x", "poll_interval_s": 30},
}


def test_shipped_config_is_valid() -> None:
    cfg = load_config(REPO / "config.toml")
    assert cfg.hashprice.source == "fixed"
    assert cfg.tariff.kind == "flat"
    assert cfg.policy["name"] == "margin"
    assert len(cfg.fleet.addresses()) == 16


def test_ranges_expand_inclusive_and_dedupe() -> None:
    cfg = parse_config({**GOOD, "fleet": {"hosts": ["127.0.1.2"], "ranges": ["127.0.1.1-3"]}})
    assert cfg.fleet.addresses() == ["127.0.1.2", "127.0.1.1", "127.0.1.3"]
    cfg = parse_config(GOOD)
    assert cfg.fleet.addresses()[-3:] == ["127.0.3.0", "127.0.3.1", "127.0.3.2"]


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"fleet": {"hosts": ["miner-1"]}}, "fleet.hosts: "),
        ({"fleet": {"ranges": ["127.0.0.9-127.0.0.1"]}}, "fleet.ranges: "),
        ({"hashprice": {"source": "fixed", "usd_per_th_day": -1}}, "hashprice.usd_per_th_day: "),
        ({"hashprice": {"source": "magic"}}, "hashprice: "),
        ({"tariff": {"kind": "flat"}}, "tariff.usd_per_kwh: "),
        ({"controller": {"poll_intervall_s": 30}}, "controller.poll_intervall_s: "),
        ({"policy": {"name": "margin", "pool_fee": 1.5}}, "policy.pool_fee: "),
        ({"policy": {"name": "nope"}}, "policy"),
        ({"guards": {"ramp_w_per_min": -5}}, "guards.ramp_w_per_min: "),
    ],
)
def test_bad_values_name_the_key(patch: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**GOOD, **patch})
    assert any(line.startswith(expected) for line in info.value.problems), info.value.problems


def test_several_problems_one_line_each() -> None:
    bad = {**GOOD, "fleet": {"hosts": ["x"]}, "tariff": {"kind": "flat", "usd_per_kwh": "a"}}
    with pytest.raises(ConfigError) as info:
        parse_config(bad)
    assert len(info.value.problems) == 2


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curtaild.controller.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_check_command_exit_codes(tmp_path: Path) -> None:
    ok = _cli("--config", str(REPO / "config.toml"), "check")
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text((REPO / "config.toml").read_text().replace(
        'usd_per_kwh = 0.07', 'usd_per_kwh = "cheap"').replace(
        "poll_interval_s = 10", "poll_interval_s = 0"))
    res = _cli("--config", str(bad), "check")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert any(line.startswith("tariff.usd_per_kwh: ") for line in lines), lines
    assert any(line.startswith("controller.poll_interval_s: ") for line in lines), lines
    missing = _cli("--config", str(tmp_path / "nope.toml"), "check")
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    garbled = tmp_path / "garbled.toml"
    garbled.write_text("[fleet\nhosts = ")
    res = _cli("--config", str(garbled), "check")
    assert res.returncode == 2 and "not valid TOML" in res.stderr


def test_run_refuses_a_broken_config_and_says_which_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text((REPO / "config.toml").read_text().replace(
        "[guards]\n", "[guards]\nhysteresys_usd_per_day = 0.1\n", 1))
    res = _cli("--config", str(bad), "run")
    assert res.returncode == 2
    assert (f"refusing to start, invalid configuration {bad}: guards.hysteresys_usd_per_day"
            in res.stderr), res.stderr


def test_a_verify_grace_shorter_than_a_boot_is_an_advisory_not_an_error(tmp_path: Path) -> None:
    from curtaild.controller.config import SLOWEST_BOOT_S, advisories, load_config

    shipped = load_config(REPO / "config.toml")
    assert advisories(shipped) == []
    short = tmp_path / "short.toml"
    short.write_text((REPO / "config.toml").read_text().replace(
        "verify_grace_s = 240", "verify_grace_s = 30"))
    lines = advisories(load_config(short))
    assert len(lines) == 1 and lines[0].startswith("controller.verify_grace_s: 30 s")
    assert f"{SLOWEST_BOOT_S:g} s" in lines[0]
    res = _cli("--config", str(short), "check")
    assert res.returncode == 0, res.stderr
    assert "warning: controller.verify_grace_s: 30 s is shorter" in res.stderr
