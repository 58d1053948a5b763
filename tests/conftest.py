"""Suite-wide options: the soak test's size (small by default, so CI runs it every time), and
the order test files reach parallel workers in (scripts/test.sh): slow files first."""

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow tests first, then other integration tests, then unit tests (a stable sort).

    pytest-xdist hands whole files to workers in collection order; a two-minute file
    collected last would leave one worker running it while the others idle. Serial runs do
    the same tests in a different order only.
    """
    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("slow"):
            return 0
        return 1 if item.get_closest_marker("integration") else 2
    items.sort(key=rank)
