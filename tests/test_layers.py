"""Issue 17: the layers are enforced, not only written down.

``scripts/typecheck.sh`` (run by ``scripts/test.sh``, so by CI) checks .importlinter and
mypy on the real tree; these tests prove that both checks catch a deliberate mistake, on a
copy of the sources with one wrong line added, and that the package list cannot forget a
folder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("core", "controller", "drivers", "policies", "emulator")
BIN = Path(sys.executable).parent


def _copy(tmp_path: Path) -> Path:
    """The five folders as tmp/curtaild/<folder>: an importable curtaild that shadows the
    installed one for the tools run with PYTHONPATH=tmp."""
    pkg = tmp_path / "curtaild"
    for name in FOLDERS:
        shutil.copytree(ROOT / name, pkg / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return tmp_path


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "lint-imports"), "--no-cache",
                           str(ROOT / ".importlinter")], cwd=tree, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(tree)})


def test_every_package_folder_is_installed() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {"curtaild." + str(p.parent.relative_to(ROOT)).replace("/", ".")
             for name in FOLDERS for p in (ROOT / name).rglob("__init__.py")}
    assert found == listed, f"pyproject [tool.setuptools] packages: add {found - listed}, " \
                            f"drop {listed - found}"


def test_nothing_imports_the_folders_by_their_bare_names() -> None:
    """``import controller`` would load a second copy of a module beside curtaild.controller."""
    bare = re.compile(rf"^\s*(from|import)\s+({'|'.join(FOLDERS)})(\.|\s)", re.M)
    offenders = [str(p.relative_to(ROOT))
                 for d in (*FOLDERS, "tests", "bench") for p in (ROOT / d).rglob("*.py")
                 if bare.search(p.read_text())]
    assert offenders == []


@pytest.mark.integration
def test_import_contracts_catch_a_policy_importing_a_driver(tmp_path: Path) -> None:
    tree = _copy(tmp_path)
    clean = _lint(tree)
    assert clean.returncode == 0, clean.stdout[-3000:]
    (tree / "curtaild" / "policies" / "sneaky.py").write_text(
        "from curtaild.drivers.miners import MinerDriver\n")
    broken = _lint(tree)
    assert broken.returncode == 1
    assert "curtaild.policies.sneaky -> curtaild.drivers.miners" in broken.stdout


@pytest.mark.integration
def test_import_contracts_catch_the_product_importing_the_emulator(tmp_path: Path) -> None:
    tree = _copy(tmp_path)
    loop = tree / "curtaild" / "controller" / "loop.py"
    loop.write_text(loop.read_text()
                    + "\nfrom curtaild.emulator.physics import EmulatedMiner  # noqa\n")
    broken = _lint(tree)
    assert broken.returncode == 1
    assert "curtaild.controller.loop -> curtaild.emulator" in broken.stdout


@pytest.mark.integration
def test_strict_types_catch_a_wrong_type_in_the_core(tmp_path: Path) -> None:
    tree = _copy(tmp_path)

    def mypy() -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "mypy"), "--strict", "--no-incremental",
                               "--config-file", str(ROOT / "pyproject.toml"),
                               "-p", "curtaild.core", "-p", "curtaild.policies"],
                              cwd=tree, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "MYPYPATH": str(tree)})
    clean = mypy()
    assert clean.returncode == 0, clean.stdout[-3000:]
    econ = tree / "curtaild" / "core" / "economics.py"
    econ.write_text(econ.read_text() + "\n\ndef wrong() -> float:\n    return 'W'\n")
    broken = mypy()
    assert broken.returncode == 1
    assert "economics.py" in broken.stdout and "return-value" in broken.stdout
