"""A config for ``curtaild plan`` against a fake market feed, written once for every test.

Tests of market sources run ``curtaild plan --json`` in its own process and vary only the
``[hashprice]`` and ``[tariff]`` tables; the rest (one miner address that answers nothing, so
discovery ends quickly; the margin policy; a state directory under the test's tmp_path) is
the same, and is written here.
"""

from __future__ import annotations

from pathlib import Path


def write_plan_config(tmp_path: Path, hashprice: str, tariff: str, host: str) -> Path:
    """``tmp_path/curtaild.toml`` with these ``[hashprice]`` and ``[tariff]`` tables (TOML
    text, headers included) and ``host`` (the test's own loopback address) as the fleet."""
    path = tmp_path / "curtaild.toml"
    path.write_text(f"""
[fleet]
hosts = ["{host}"]
discovery_timeout_s = 2
poll_timeout_s = 2

{hashprice}

{tariff}

[policy]
name = "margin"
pool_fee = 0.02

[controller]
state_dir = "{tmp_path / 'state'}"
""")
    return path
