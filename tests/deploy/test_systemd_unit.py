"""deploy/systemd/curtaild.service: `systemd-analyze verify` silent, hardening exposure <= 2.0.

systemd-analyze comes with Debian's `systemd` package. Locally these tests skip without it;
with CI=true they fail instead, so a CI image that lost the package cannot pass silently.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tools import missing

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = ROOT / "deploy" / "systemd"
UNIT = SYSTEMD_DIR / "curtaild.service"
DROPINS = SYSTEMD_DIR / "curtaild.service.d"
PROD_EXEC = "/opt/curtaild/venv/bin/curtaild"
EXEC_START = f"ExecStart={PROD_EXEC} --config /etc/curtaild/config.toml run"
MAX_EXPOSURE = 2.0
EXPOSURE_RE = re.compile(r"Overall exposure level for \S+:\s+(\d+(?:\.\d+)?)")


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        missing("systemd-analyze not installed (Debian: apt-get install systemd)")
    return path


@pytest.fixture(scope="module")
def curtaild_bin() -> str:
    """The installed console script: verify checks that ExecStart= is executable."""
    beside = Path(sys.executable).parent / "curtaild"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("curtaild")
    if found is None:
        missing("curtaild console script not installed (pip install -e .)")
    return found


def _unit_copy(dest: Path, curtaild_bin: str, dropins: tuple[str, ...] = ()) -> Path:
    """The unit with only ExecStart's program path pointed at the real install."""
    text = UNIT.read_text()
    assert text.count(EXEC_START) == 1, "ExecStart= changed: update this test and install.md"
    unit = dest / "curtaild.service"
    unit.write_text(text.replace(f"ExecStart={PROD_EXEC} ", f"ExecStart={curtaild_bin} "))
    if dropins:
        d = dest / "curtaild.service.d"
        d.mkdir()
        for name in dropins:
            shutil.copy(DROPINS / name, d / name.removesuffix(".example"))
    return unit


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def _exposure(systemd_analyze: str, unit: Path) -> float:
    threshold = int(MAX_EXPOSURE * 10)
    proc = _run([systemd_analyze, "security", "--offline=true", f"--threshold={threshold}",
                 "--no-pager", str(unit)], unit.parent)
    match = EXPOSURE_RE.search(proc.stdout)
    assert match, f"no exposure line:\n{proc.stdout}\n{proc.stderr}"
    assert "Unknown key" not in proc.stderr and "Failed to parse" not in proc.stderr, proc.stderr
    # --threshold makes the exit status fail above MAX_EXPOSURE as well.
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return float(match.group(1))


def test_unit_contract_with_the_daemon() -> None:
    """Lines the daemon's code relies on (sd_notify, SIGHUP reload, $STATE_DIRECTORY)."""
    lines = {line.strip() for line in UNIT.read_text().splitlines()}
    for expected in (
        "Type=notify",
        "NotifyAccess=main",
        EXEC_START,
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=curtaild",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "SyslogIdentifier=curtaild",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    ):
        assert expected in lines, expected
    assert any(line.startswith("WatchdogSec=") for line in lines)
    # No credential is required by the default config; a missing source fails the unit.
    assert not any(line.startswith("LoadCredential=") for line in lines)


def test_verify_prints_nothing(systemd_analyze: str, curtaild_bin: str, tmp_path: Path) -> None:
    unit = _unit_copy(tmp_path, curtaild_bin)
    proc = _run([systemd_analyze, "verify", str(unit)], tmp_path)
    assert (proc.stdout, proc.stderr, proc.returncode) == ("", "", 0)


@pytest.mark.parametrize("dropin", sorted(p.name for p in DROPINS.glob("*.conf.example")))
def test_verify_with_example_dropin(
    systemd_analyze: str, curtaild_bin: str, tmp_path: Path, dropin: str
) -> None:
    # verify reads drop-ins next to the unit and warns (exit 0!) about unknown keys.
    unit = _unit_copy(tmp_path, curtaild_bin, (dropin,))
    proc = _run([systemd_analyze, "verify", str(unit)], tmp_path)
    assert (proc.stdout, proc.stderr, proc.returncode) == ("", "", 0)


def test_security_exposure(systemd_analyze: str, curtaild_bin: str, tmp_path: Path) -> None:
    exposure = _exposure(systemd_analyze, _unit_copy(tmp_path, curtaild_bin))
    assert exposure <= MAX_EXPOSURE


def test_network_allow_list_lowers_exposure(
    systemd_analyze: str, curtaild_bin: str, tmp_path: Path
) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "net").mkdir()
    base = _exposure(systemd_analyze, _unit_copy(tmp_path / "base", curtaild_bin))
    net = _exposure(systemd_analyze, _unit_copy(tmp_path / "net", curtaild_bin,
                                                 ("network.conf.example",)))
    assert net < base
