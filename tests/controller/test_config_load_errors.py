"""Every way a config file can fail to load is a configuration error -- `ConfigError` with
`file: reason` or `key: reason` lines, exit 2 from `check` and `run` -- never a traceback
(exit 1: systemd then restarts into the same file, over and over).

The daemon's side of it (a SIGHUP with such a file keeps the running config) is in
test_daemon_reload_pathological.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from curtaild.controller.config import (
    MAX_CONFIG_BYTES,
    MAX_NESTING,
    ConfigError,
    as_config_error,
    load_config,
    parse_config,
)
from curtaild.policies.base import PolicyConfig

REPO = Path(__file__).resolve().parents[2]
SHIPPED = (REPO / "config.toml").read_text()
#: The file from the report: a 5,000-deep nested array (tomllib recurses per level).
DEEP_ARRAY = SHIPPED + "\n[site_notes]\nx = " + "[" * 5000 + "]" * 5000 + "\n"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curtaild.controller.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_a_5000_deep_array_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text(DEEP_ARRAY)
    (line,) = _problems(path)
    assert line.startswith(f"{path}: ") and "nested too deeply" in line, line


def test_deep_inline_tables_are_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text(SHIPPED + "\n[site_notes]\nx = " + "{a=" * 5000 + "1" + "}" * 5000 + "\n")
    (line,) = _problems(path)
    assert line.startswith(f"{path}: ") and "nested too deeply" in line, line


def test_nesting_the_parser_survives_is_still_refused_past_the_limit(tmp_path: Path) -> None:
    """A file shallow enough for the parser but deeper than any key is refused by the same
    rule wherever it is loaded (the daemon's stack is deeper than `check`'s)."""
    path = tmp_path / "deep.toml"
    depth = MAX_NESTING + 10
    path.write_text(SHIPPED + "\n[site_notes]\nx = " + "[" * depth + "]" * depth + "\n")
    (line,) = _problems(path)
    assert line == (f"{path}: arrays or tables nested more than {MAX_NESTING} levels deep; "
                    "no curtaild key nests that deep")


def test_not_utf8_directory_and_oversized_files(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(SHIPPED.encode() + b"# caf\xe9\n")
    (line,) = _problems(latin1)
    assert line.startswith(f"{latin1}: not UTF-8 text"), line
    (line,) = _problems(tmp_path)  # a directory: IsADirectoryError
    assert line == f"{tmp_path}: cannot read: Is a directory"
    huge = tmp_path / "huge.toml"
    with huge.open("wb") as f:  # sparse: no disk used
        f.truncate(MAX_CONFIG_BYTES + 1)
    (line,) = _problems(huge)
    assert line.startswith(f"{huge}: larger than 16 MiB"), line


class ExplodingPolicy:
    """A plug-in policy whose constructor fails with something other than PolicyError."""

    name: ClassVar[str] = "exploding"
    Config: ClassVar[type[PolicyConfig]] = PolicyConfig

    def __init__(self, config: Any) -> None:
        raise RuntimeError("model file /var/lib/x.bin missing")

    def decide(self, fleet: Any, market: Any, now: float) -> dict:
        return {}


def test_a_plugin_policy_that_raises_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from curtaild.policies import base

    monkeypatch.setattr(base, "available_policies", lambda: {
        "exploding": "tests.controller.test_config_load_errors:ExplodingPolicy"})
    data: dict[str, Any] = {
        "fleet": {"hosts": ["127.155.0.1"]},
        "hashprice": {"source": "fixed", "usd_per_th_day": 0.05},
        "tariff": {"kind": "flat", "usd_per_kwh": 0.06},
        "policy": {"name": "exploding"},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, "site.toml")
    assert info.value.problems == [
        "policy: RuntimeError: model file /var/lib/x.bin missing"]


def test_as_config_error_keeps_key_lines_and_names_the_rest() -> None:
    keyed = as_config_error(ValueError("hashprice.api_key: no Hashrate Index API key"), "f.toml")
    assert keyed.problems == ["hashprice.api_key: no Hashrate Index API key"]
    plain = as_config_error(OSError("disk on fire"), "f.toml")
    assert plain.problems == ["f.toml: OSError: disk on fire"]
    assert as_config_error(MemoryError(), "f.toml").problems == [
        "f.toml: too large to process (out of memory)"]


def test_check_exits_2_with_one_clear_line_for_the_deep_file(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text(DEEP_ARRAY)
    res = _cli("--config", str(path), "check")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith(f"{path}: not valid TOML: nested too deeply"), line


def test_run_exits_2_not_1_for_the_deep_file(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text(DEEP_ARRAY.replace('state_dir = "state"',
                                       f'state_dir = "{tmp_path / "state"}"'))
    res = _cli("--config", str(path), "run")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert f"refusing to start, invalid configuration {path}: {path}: not valid TOML: " \
           "nested too deeply" in res.stderr, res.stderr[-2000:]
