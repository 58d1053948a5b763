"""Suite-wide options: the soak test's size (small by default, so CI runs it every time)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("soak", "tests/system/test_soak.py size")
    group.addoption("--soak-seconds", type=float, default=75.0,
                    help="seconds of random faults before convergence is judged (default 75)")
    group.addoption("--soak-miners", type=int, default=20,
                    help="emulated miners in the soak fleet (default 20)")
    group.addoption("--soak-seed", type=int, default=None,
                    help="random seed (default: a new one per run, printed on failure)")
