"""Storage faults: clear errors at start, `check` tests the state directory, a locked journal
costs a tick a fraction of a second (and no command goes out unjournaled), files are 0600.

Processes: `curtaild run`/`check` as the operator starts them; for the locked journal, the
emulator on 127.153.20.0/24 and a second SQLite connection holding the journal's write lock.
Tests run as root, so "unwritable" is a state_dir whose parent is a regular file (permission
bits do not stop root).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curtaild.controller.journal import Journal, JournalError, state_dir_problem
from tests.support.daemon import REPO, DaemonProcess, ticks, wait_for, write_config
from tests.support.emulator import EmulatorProcess

NOWHERE = "127.153.21.1-127.153.21.2"  # nothing listens: these tests never reach a miner


def _cli(cfg: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curtaild.controller.cli", "--config", str(cfg),
                           *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _config(tmp_path: Path, state: Path) -> Path:
    return write_config(tmp_path / "config.toml", ranges=[NOWHERE], hashprice=0.045,
                        tariff=0.07, state_dir=state)


def _blocked(tmp_path: Path) -> Path:
    """A state_dir that cannot be created, even by root: its parent is a regular file."""
    (tmp_path / "afile").write_text("not a directory\n")
    return tmp_path / "afile" / "state"


# ------------------------------------------------------------------- start: exit 2
def test_run_refuses_a_state_dir_under_a_file(tmp_path: Path) -> None:
    state = _blocked(tmp_path)
    out = _cli(_config(tmp_path, state), "run")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert f"state_dir {state} cannot be created: {tmp_path / 'afile'} is not a directory" \
        in out.stderr


def test_run_refuses_a_journal_that_is_not_a_database(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "journal.sqlite").write_bytes(b"this is not SQLite " * 100)
    out = _cli(_config(tmp_path, state), "run")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert f"journal {state / 'journal.sqlite'}: not an SQLite database" in out.stderr


def test_run_refuses_a_journal_path_that_is_a_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "journal.sqlite").mkdir(parents=True)
    out = _cli(_config(tmp_path, state), "run")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"journal {state / 'journal.sqlite'}: cannot open for writing: Is a directory" \
        in out.stderr


def test_journal_error_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match=r"is not a directory"):
        Journal(_blocked(tmp_path))


# ---------------------------------------------------------------------------- check
def test_check_refuses_an_unwritable_state_dir(tmp_path: Path) -> None:
    state = _blocked(tmp_path)
    out = _cli(_config(tmp_path, state), "check")
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"controller.state_dir: {state} cannot be created: {tmp_path / 'afile'} is not a " \
           "directory" in out.stderr
    assert not state.parent.is_dir()


def test_check_refuses_a_state_dir_that_is_a_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("")
    out = _cli(_config(tmp_path, state), "check")
    assert out.returncode == 2
    assert f"controller.state_dir: {state} exists and is not a directory" in out.stderr


def test_check_accepts_a_missing_but_creatable_state_dir_and_creates_nothing(
        tmp_path: Path) -> None:
    state = tmp_path / "new" / "state"
    out = _cli(_config(tmp_path, state), "check")
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "new").exists()
    assert state_dir_problem(state) is None


def test_check_refuses_a_damaged_journal_and_warns_of_a_lost_one(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = _config(tmp_path, state)
    j = Journal(state)
    j.check_identity()
    j.close()
    assert _cli(cfg, "check").returncode == 0
    (state / "journal.sqlite").write_bytes(b"")  # truncated: run would start in recovery
    out = _cli(cfg, "check")
    assert out.returncode == 0 and "recovery mode" in out.stderr
    (state / "journal.sqlite").write_bytes(b"garbage" * 1000)
    out = _cli(cfg, "check")
    assert out.returncode == 2 and "not an SQLite database" in out.stderr


# ------------------------------------------------------------------------ 0600 files
def test_state_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old = os.umask(0o022)  # an interactive shell's; systemd's unit sets 0077
    try:
        with DaemonProcess(_config(tmp_path, state), tmp_path / "daemon.log") as daemon:
            wait_for(lambda: (state / "status.json").exists(), 60, what="status.json")
            names = ["journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm",
                     "status.json"]
            modes = {n: stat.S_IMODE((state / n).stat().st_mode) for n in names}
            assert modes == dict.fromkeys(names, 0o600), modes
            assert stat.S_IMODE((state / "journal.id").stat().st_mode) == 0o600
            assert stat.S_IMODE(state.stat().st_mode) == 0o700
            assert daemon.stop() == 0
    finally:
        os.umask(old)


def test_an_existing_world_readable_journal_is_made_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Journal(state).close()
    os.chmod(state / "journal.sqlite", 0o644)
    Journal(state).close()
    assert stat.S_IMODE((state / "journal.sqlite").stat().st_mode) == 0o600


# ------------------------------------------------------------------- locked journal
FLEET = """
[[miner]]
model = "S21"
[[miner]]
model = "S19j Pro"
count = 2
"""


@pytest.mark.integration
def test_locked_journal_neither_stalls_ticks_nor_lets_a_command_out(tmp_path: Path) -> None:
    """Another process holds the journal's write lock: ticks keep their pace (sqlite3's
    default busy timeout made each take 5 s and fail), and a sleep the policy now wants is
    not sent while its intent cannot be journaled; once the lock goes, it is."""
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    rng = "127.153.20.1-127.153.20.3"
    losers = {"127.153.20.2", "127.153.20.3"}
    with EmulatorProcess(fleet_toml=FLEET, first_ip="127.153.20.1", time_scale=0.01) as emu:
        write_config(cfg, ranges=[rng], hashprice=0.09, tariff=0.07, state_dir=state)
        with DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
            wait_for(lambda: ticks(daemon) >= 2, 60, what="two ticks")
            lock = sqlite3.connect(state / "journal.sqlite", timeout=5.0,
                                   isolation_level=None)
            lock.execute("BEGIN EXCLUSIVE")
            try:
                # Losing prices now: the policy wants the S19j Pros asleep.
                write_config(cfg, ranges=[rng], hashprice=0.045, tariff=0.07, state_dir=state)
                daemon.proc.send_signal(1)
                wait_for(lambda: "reloaded" in daemon.log(), 30, what="the reload")
                before = ticks(daemon)
                t0 = time.monotonic()
                time.sleep(8.0)
                elapsed = time.monotonic() - t0
                done = ticks(daemon) - before
                # poll_interval_s = 1: at least half the ticks an unlocked journal would make
                assert done >= elapsed / 2, f"{done} ticks in {elapsed:.1f} s"
                assert {m["ip"] for m in emu.miners() if m["state"] == "sleeping"} == set()
                assert "not sent: its intent could not be journaled" in daemon.log()
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            wait_for(lambda: {m["ip"] for m in emu.miners() if m["state"] == "sleeping"}
                     == losers, 60, what="the losers asleep once the journal is free")
            assert daemon.alive() and daemon.stop() == 0
