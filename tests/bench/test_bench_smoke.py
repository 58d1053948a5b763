"""The bench scripts still run end to end at a tiny size and print their figures.

They are not timed tests: only that each script exits 0 against a real emulator and prints its
table with every miner polled is checked, so a refactor of the driver, the emulator or the
daemon cannot silently break the benchmarks documented in docs/benchmarks.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def run(script: str, *args: str, timeout: float = 50.0) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert "pyasic" in proc.stdout and "0.79" in proc.stdout  # the machine block
    return proc.stdout


def test_sweep_prints_both_sides_for_the_whole_fleet() -> None:
    out = run("sweep.py", "--counts", "16", "--sweeps", "1", "--first-ip", "127.130.0.1")
    assert re.search(r"^curtaild sweep 1\s+16/16\s", out, re.M), out
    assert re.search(r"^baseline get_data 1\s+16/16\s", out, re.M), out
    row = re.search(r"^16\s+(\d+)\s+(\d+)\s+([\d.]+)x\s", out, re.M)
    assert row, out
    assert int(row.group(1)) > 0 and int(row.group(2)) > 0


def test_hung_miners_cost_at_most_one_deadline() -> None:
    out = run("hung.py", "--count", "20", "--hung-pct", "10", "--poll-timeout", "1.5",
              "--clean-sweeps", "1", "--hung-sweeps", "2", "--first-ip", "127.130.1.1")
    assert re.search(r"^sweep 1, 2 hung\s+18/20\s", out, re.M), out
    assert "timeout" in out  # the driver counted the hung miners' deadlines
    assert re.search(r"against a budget of one deadline \(1\.5 s\): met", out), out


def test_memory_reports_rss_and_a_scrape_of_a_running_daemon() -> None:
    out = run("memory.py", "--count", "16", "--ticks", "2", "--poll-interval", "2",
              "--scrapes", "2", "--first-ip", "127.130.2.1")
    assert re.search(r"^RSS after 2 ticks\s+\d+ MB", out, re.M), out
    assert re.search(r"^/metrics size, gzip\s+[\d.]+ MB", out, re.M), out
    assert re.search(r"^daemon exit code on SIGTERM\s+0$", out, re.M), out


def test_gc_ab_alternates_default_and_daemon_thresholds() -> None:
    from curtaild.controller.limits import GC_THRESHOLDS

    out = run("gc_ab.py", "--count", "16", "--pairs", "1", "--first-ip", "127.130.3.1")
    assert re.search(r"^\(700, 10, 10\)\s+16\s", out, re.M), out
    assert re.search(rf"^{re.escape(str(GC_THRESHOLDS))}\s+16\s", out, re.M), out
    assert re.search(r"^daemon\s+mean ctl CPU [\d.]+ s, gc [\d.]+ s per sweep", out, re.M), out


def test_warm_start_times_both_starts() -> None:
    out = run("warm_start.py", "--miners", "16", "--per-emulator", "8", "--then-ticks", "2",
              "--poll-interval", "5", "--restart", timeout=300)
    for start in ("cold", "warm"):
        row = re.search(rf"^{start} \(.*?\)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out,
                        re.M)
        assert row, out
        decided, acked, ticked = (float(row.group(i)) for i in (1, 2, 3))
        assert 0 < decided <= acked <= ticked, out
    assert re.findall(r"^([23])\s+[\d.]+\s+[\d.]+$", out, re.M) == ["2", "3"], out
    restarted = re.search(r"first tick done ([\d.]+) s after exec, daemon CPU [\d.]+ s; the "
                          r"journal held rows for (\d+) machines", out)
    assert restarted and float(restarted.group(1)) > 0 and int(restarted.group(2)) > 0, out


def test_shards_counts_the_polls_of_each_layout() -> None:
    out = run("shards.py", "--miners", "16", "--per-emulator", "8", "--window", "4",
              "--warmup", "1", timeout=240)
    rates = re.search(r"^site polls/s: one shard (\d+), two shards (\d+)", out, re.M)
    assert rates and int(rates.group(1)) > 0 and int(rates.group(2)) > 0, out
    assert re.search(r"^s2\s+s2\s+\d+\s", out, re.M), out
