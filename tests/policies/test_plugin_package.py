"""Issue 17: a policy written outside this repository, as its own pip package, registers under
the entry-point group ``curtaild.policies`` and drives ``plan`` and ``backtest``.

The package (tests/policies/example_plugin) imports only the public policy API
(``curtaild.policies``, ``curtaild.core``). It is installed with pip into a fresh virtualenv
that sees this curtaild installation, never into the project's own environment, so the test
leaves nothing behind and proves what a site does: ``pip install`` beside curtaild, then
``[policy] name = "peak_guard"``.
"""

from __future__ import annotations

import json
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
PLUGIN = HERE / "example_plugin"


@pytest.fixture(scope="module")
def plugin_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with the example plug-in installed by pip, on top of this curtaild."""
    venv = tmp_path_factory.mktemp("plugin") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    inner = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    # This environment's site-packages (curtaild, pyasic, pip...) with its .pth files run,
    # as a system-site-packages venv would see the system's.
    outer = next(p for p in site.getsitepackages() if p.endswith("site-packages"))
    Path(inner, "curtaild-outer.pth").write_text(f"import site; site.addsitedir({outer!r})\n")
    build = tmp_path_factory.mktemp("plugin-src")
    # --no-deps: curtaild is already there; the build backend comes from the package index
    out = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(PLUGIN)],
                         capture_output=True, text=True, cwd=build, timeout=300)
    assert out.returncode == 0, out.stderr
    return python


def _config(tmp_path: Path, hosts: list[str]) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[controller]
state_dir = "{tmp_path / 'state'}"
[fleet]
hosts = {json.dumps(hosts)}
[hashprice]
source = "fixed"
usd_per_th_day = 0.05
[tariff]
kind = "flat"
usd_per_kwh = 0.12
[policy]
name = "peak_guard"
max_tariff_usd_per_kwh = 0.10
""")
    return cfg


def _curtaild(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-m", "curtaild.controller.cli", *args],
                          capture_output=True, text=True, timeout=180, cwd="/")


def test_the_entry_point_is_found_and_checked(plugin_python: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, [])
    out = _curtaild(plugin_python, "--config", str(cfg), "check")
    assert out.returncode == 0, out.stderr
    assert "policy peak_guard" in out.stdout
    # its config model is strict, like a built-in's
    cfg.write_text(cfg.read_text().replace("max_tariff_usd_per_kwh", "max_tarif_usd_per_kwh"))
    out = _curtaild(plugin_python, "--config", str(cfg), "check")
    assert out.returncode == 2 and "policy.max_tarif_usd_per_kwh" in out.stderr
    # and without the package the same config names the missing policy
    out = subprocess.run([sys.executable, "-m", "curtaild.controller.cli", "--config",
                          str(_config(tmp_path, [])), "check"],
                         capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 2 and "peak_guard" in out.stderr


def test_plan_decides_with_the_plugin(plugin_python: Path, tmp_path: Path) -> None:
    with EmulatorProcess(count=2, first_ip="127.176.0.1") as emu:
        ips = [m["ip"] for m in emu.miners()]
        out = _curtaild(plugin_python, "--config", str(_config(tmp_path, ips)), "plan", "--json")
    assert out.returncode == 0, out.stderr
    miners = json.loads(out.stdout)["miners"]
    assert len(miners) == 2
    for m in miners:
        assert m["desired"] == "sleep", m
        assert m["reason"].startswith("peak guard: tariff 0.120 > 0.100"), m


def test_backtest_replays_the_plugin(plugin_python: Path, tmp_path: Path) -> None:
    prices = tmp_path / "prices.csv"
    prices.write_text("timestamp,hashprice_usd_per_th_day,tariff_usd_per_kwh\n"
                      "1767225600,0.05,0.05\n1767229200,0.05,0.50\n1767232800,0.05,0.05\n")
    out = _curtaild(plugin_python, "--config", str(_config(tmp_path, [])), "backtest",
                    "--prices", str(prices), "--fleet", "S21=2", "--price-lag-s", "0",
                    "--no-plot", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["policy"] == "peak_guard" or "peak_guard" in json.dumps(report)[:2000]
    policy = report["strategies"]["policy"]
    always = report["strategies"]["always_on"]
    # asleep through the 0.50 USD/kWh hour only: less energy than always-on
    assert policy["energy_kwh"] < always["energy_kwh"]
