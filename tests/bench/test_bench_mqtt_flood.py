"""bench/mqtt_flood.py still runs end to end at a tiny size and prints its figures (not timed:
the flood's own assertions are in tests/controller/test_mqtt_flood.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_mqtt_flood_prints_every_answer_and_the_daemons_figures() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "mqtt_flood.py"), "--commands", "300", "--rate",
         "300", "--miners", "4", "--broker-ip", "127.154.6.1", "--first-ip", "127.154.7.1"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{out}\n{proc.stderr}"
    assert "pyasic" in out and "0.79" in out  # the machine block
    answered = re.search(r"^answered\s+(\d+) of (\d+)$", out, re.M)
    assert answered and answered.group(1) == answered.group(2), out
    assert re.search(r"^daemon MQTT connections during the flood\s+0$", out, re.M), out
    assert re.search(r"^RSS before / peak \(MB\)\s+\d+ / \d+$", out, re.M), out
    assert re.search(r"^ticks during the flood\s+\d+ ticks", out, re.M), out
