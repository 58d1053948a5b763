"""The daemon's descriptor limit (controller/limits.py), in a child process each time so the
test runner's own limits are never touched."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

from curtaild.controller.limits import GC_THRESHOLDS, OVERHEAD_FDS, open_files_needed
from tests.support.daemon import REPO, wait_for, write_config

PROBE = """
import resource, sys
from curtaild.controller.limits import raise_open_files_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard))
print(*raise_open_files_limit(int(sys.argv[2])), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def probe(soft: int, needed: int) -> list[int]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(soft), str(needed)], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [int(x) for x in out.split()]


def test_needed_counts_both_poll_pools() -> None:
    assert open_files_needed(poll_concurrency=400, discovery_concurrency=100,
                             command_concurrency=50) == 950 + OVERHEAD_FDS


def test_tune_gc_sets_the_daemon_thresholds_and_returns_the_old_ones() -> None:
    import gc

    from curtaild.controller.limits import tune_gc

    before = gc.get_threshold()
    try:
        assert tune_gc() == before
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        gc.set_threshold(*before)


def test_soft_limit_is_raised_never_lowered_and_capped_by_the_hard_limit() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert probe(256, 1206) == [1206, 1206, 1206]
    assert probe(2048, 1206) == [2048, 1206, 2048]  # never lowered
    if hard != resource.RLIM_INFINITY:
        assert probe(256, hard + 10) == [hard, hard + 10, hard]


def test_curtaild_run_raises_its_own_limit(tmp_path: Path) -> None:
    """Started as systemd would start it (soft 1024 here 256), the daemon raises it."""
    cfg = write_config(tmp_path / "c.toml", ranges=["127.20.99.1-127.20.99.2"], hashprice=0.05,
                       tariff=0.05, state_dir=tmp_path / "state")

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    log = open(tmp_path / "d.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "curtaild.controller.cli", "--config",
                             str(cfg), "run"],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, preexec_fn=low_limit)
    try:
        wait_for(lambda: "curtaild starting" in (tmp_path / "d.log").read_text(), 60,
                 what="the daemon's start line")
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        soft = int(line.split()[3])
        assert soft >= open_files_needed(poll_concurrency=400, discovery_concurrency=100,
                                         command_concurrency=50), line
        assert (f"process: open files limit {soft}, gc thresholds {GC_THRESHOLDS}"
                in (tmp_path / "d.log").read_text())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
