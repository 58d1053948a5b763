"""bench/hostile.py still runs end to end at a tiny size and prints its figures (not timed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_hostile_prints_rss_ticks_and_the_stop() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "hostile.py"), "--count", "12",
                           "--seconds", "6", "--clean-ticks", "1", "--poll-interval", "2",
                           "--poll-timeout", "2", "--first-ip", "127.151.30.1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{out}\n{proc.stderr}"
    assert "pyasic" in out and "0.79" in out  # the machine block
    assert re.search(r"^peak RSS \(VmHWM\)\s+\d+ MB$", out, re.M), out
    assert re.search(r"^hostile ticks \(6 s\)\s+\d+ ticks, median [\d.]+ s", out, re.M), out
    assert re.search(r"^SIGTERM to exit\s+[\d.]+ s$", out, re.M), out
    assert re.search(r"^exit code\s+0$", out, re.M), out
