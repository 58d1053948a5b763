"""A lost journal never strands machines silently (issue 15, High-4).

curtaild slept the losing machines of an emulated fleet; then its journal is truncated to
0 bytes (a valid empty SQLite database), deleted, or left behind by a state_dir that moved.
The daemon restarts with prices at which every machine should run. It must say so -- a log
line per machine, ``curtaild_unknown_owner_miners``, ``status``/``status --json`` -- and wake
nothing on its own; ``curtaild adopt`` then hands machines to curtaild, which wakes them,
while ``adopt --operator`` leaves one asleep for good.

Unit tests cover Journal.check_identity's cases and the review's bookkeeping without a fleet.
Addresses: 127.153.0.0/16 only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from curtaild.controller.config import load_config, resolve_state_dir
from curtaild.controller.journal import Journal
from curtaild.controller.recovery import review_tick
from curtaild.core.snapshot import Command, FleetSnapshot, MinerReading
from tests.support.daemon import REPO, DaemonProcess, journal_rows, ticks, wait_for, write_config
from tests.support.emulator import EmulatorProcess, free_port

# 0.045 USD/TH/day, 2 % pool fee, 0.07 USD/kWh: the S21s earn, the stock S19j Pros (no power
# limit) lose and are slept (tests/controller/test_run_integration.py has the arithmetic); at
# 0.09 every machine earns.
FLEET = """
[[miner]]
model = "S21"
count = 2
[[miner]]
model = "S19j Pro"
count = 4
"""
LOSING, EARNING = 0.045, 0.09
TARIFF = 0.07
METRICS_HOST = "127.153.255.1"


# --------------------------------------------------------------------------- unit
def _reading(key: str, state: str, *, limit: float | None = None,
             plate: float | None = 3250.0) -> MinerReading:
    return MinerReading(key=key, ip=f"127.153.9.{len(key)}", make="x", model="x",
                        firmware="antminer", state=state,  # type: ignore[arg-type]
                        hashrate_ths=0.0, power_w=0.0, power_source="none",
                        power_limit_w=limit, temp_c=None, nameplate_power_w=plate,
                        observed_at=time.time())


def _sleep_cmd(key: str) -> Command:
    return Command(key=key, ip="127.153.9.1", action="sleep", power_limit_w=None,
                   reason="test", delta_power_w=-3000.0)


def _slept_journal(state: Path) -> None:
    j = Journal(state)
    assert j.check_identity().status == "new"
    j.record_intent(_sleep_cmd("K1"), observed_limit_w=None, dry_run=False)
    j.end_review()  # as after a first tick that saw every machine running
    j.close()


def test_first_start_is_new_then_ok(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    first = j.check_identity()
    assert first.status == "new" and j.review() is not None
    j.close()
    j = Journal(tmp_path)
    again = j.check_identity()
    assert again.status == "ok" and again.journal_id == first.journal_id
    j.close()


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_truncated_or_deleted_journal_is_lost(tmp_path: Path, how: str) -> None:
    _slept_journal(tmp_path)
    marker = json.loads((tmp_path / "journal.id").read_text())
    assert marker["curtailed_ever"] is True
    db = tmp_path / "journal.sqlite"
    if how == "truncate":
        db.write_bytes(b"")
    else:
        for p in tmp_path.glob("journal.sqlite*"):
            p.unlink()
    j = Journal(tmp_path)
    ident = j.check_identity()
    assert ident.status == "lost" and ident.had_history
    assert marker["journal_id"] in ident.reason and "had curtailed machines" in ident.reason
    assert j.review() is not None
    j.close()


def test_restored_backup_is_lost_but_keeps_its_ownership(tmp_path: Path) -> None:
    """A journal from elsewhere (a backup) is reviewed; what it owned is not unknown."""
    _slept_journal(tmp_path)
    other = tmp_path / "other"
    j = Journal(other)
    j.check_identity()
    j.close()
    (tmp_path / "journal.id").write_bytes((other / "journal.id").read_bytes())
    j = Journal(tmp_path)
    assert j.check_identity().status == "lost"
    fleet = FleetSnapshot((_reading("K1", "sleeping"), _reading("K2", "sleeping")), time.time())
    out = review_tick(j, fleet, time.time())
    assert [u.miner for u in out.new_unknown] == ["K2"]  # K1: the backup says curtaild's
    j.close()


def test_missing_marker_beside_an_intact_journal_is_rewritten(tmp_path: Path) -> None:
    _slept_journal(tmp_path)
    (tmp_path / "journal.id").unlink()
    j = Journal(tmp_path)
    ident = j.check_identity()
    assert ident.status == "marker_restored" and j.review() is None
    assert (tmp_path / "journal.id").exists()
    j.close()


def test_journal_from_before_the_marker_is_upgraded_without_review(tmp_path: Path) -> None:
    j = Journal(tmp_path)  # as an older curtaild left it: history, no identity, no marker
    j.record_intent(_sleep_cmd("K1"), observed_limit_w=None, dry_run=False)
    j.close()
    assert not (tmp_path / "journal.id").exists()
    j = Journal(tmp_path)
    assert j.check_identity().status == "upgraded" and j.review() is None
    j.close()


def test_review_reports_first_sightings_then_ends(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.check_identity()
    now = time.time()
    fleet = FleetSnapshot((
        _reading("ASLEEP", "sleeping"),
        _reading("LIMITED", "mining", limit=2000.0),
        _reading("FULL", "mining", limit=3250.0),
        _reading("GONE", "unreachable"),
    ), now)
    out = review_tick(j, fleet, now)
    assert {u.miner: u.state for u in out.new_unknown} == {"ASLEEP": "sleeping",
                                                         "LIMITED": "limited"}
    assert not out.finished
    # An operator sleeps FULL by hand after it was seen running: the operator's, not unknown.
    later = FleetSnapshot((_reading("ASLEEP", "sleeping"),
                           _reading("LIMITED", "mining", limit=2000.0),
                           _reading("FULL", "sleeping"), _reading("GONE", "sleeping")), now + 1)
    out = review_tick(j, later, now + 1)
    assert [u.miner for u in out.new_unknown] == ["GONE"]  # first seen asleep: unknown
    assert out.running == []
    assert set(j.unknown_owner()) == {"ASLEEP", "LIMITED", "GONE"}
    # Resolve: one adopted, one left to the operator, one seen running at full power.
    assert [u.miner for u in j.adopt(["ASLEEP"])] == ["ASLEEP"]
    j.resolve_unknown(["GONE"], "operator")
    full = FleetSnapshot((_reading("ASLEEP", "sleeping"), _reading("LIMITED", "mining"),
                          _reading("FULL", "sleeping"), _reading("GONE", "sleeping")), now + 2)
    out = review_tick(j, full, now + 2)
    assert out.running == ["LIMITED"] and out.finished
    assert j.review() is None and j.unknown_owner() == {}
    mem = j.memory()["ASLEEP"]
    assert mem.curtailed_by_us and mem.curtailed_action == "sleep"
    assert "GONE" not in j.curtailed()
    j.close()


def test_relative_state_dir_resolves_against_the_config_not_the_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "site").mkdir()
    cfg = write_config(tmp_path / "site" / "config.toml", ranges=["127.153.9.1-127.153.9.2"],
                       hashprice=LOSING, tariff=TARIFF, state_dir=Path("state"))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    assert load_config(cfg).controller.state_dir == str(tmp_path / "site" / "state")
    monkeypatch.chdir(REPO)
    assert load_config(cfg).controller.state_dir == str(tmp_path / "site" / "state")
    # Under systemd, as the shipped unit's WorkingDirectory=%S/curtaild always did:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/curtaild")
    assert load_config(cfg).controller.state_dir == "/var/lib/curtaild/state"
    assert resolve_state_dir("/abs/state", str(cfg)) == "/abs/state"


# -------------------------------------------------------------------- integration
def _cli(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curtaild.controller.cli", "--config", str(cfg),
                           *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def _states(emu: EmulatorProcess) -> dict[str, str]:
    return {m["ip"]: m["state"] for m in emu.miners()}


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://{METRICS_HOST}:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def _gauge(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("loss,net", [("truncate", 0), ("delete", 1), ("moved", 2)])
def test_lost_journal_reports_wakes_nothing_and_adopt_hands_over(
        tmp_path: Path, loss: str, net: int) -> None:
    first_ip = f"127.153.{10 + net}.1"
    rng = f"127.153.{10 + net}.1-127.153.{10 + net}.6"
    losers = {f"127.153.{10 + net}.{i}" for i in (3, 4, 5, 6)}
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    port = free_port(METRICS_HOST)
    metrics = f'[metrics]\nlisten = "{METRICS_HOST}:{port}"\n'
    with EmulatorProcess(fleet_toml=FLEET, first_ip=first_ip, time_scale=0.01) as emu:
        write_config(cfg, ranges=[rng], hashprice=LOSING, tariff=TARIFF, state_dir=state)
        with DaemonProcess(cfg, tmp_path / "first.log") as first:
            wait_for(lambda: {ip for ip, s in _states(emu).items() if s == "sleeping"} == losers,
                     90, what="curtaild slept the losers")
            assert first.stop() == 0
        assert {r[0] for r in journal_rows(state, "SELECT ip FROM curtailed")} == losers

        if loss == "truncate":
            (state / "journal.sqlite").write_bytes(b"")
        elif loss == "delete":
            for p in state.glob("journal.sqlite*"):
                p.unlink()
        else:  # the daemon now finds its state elsewhere (a relative path, another cwd)
            state = tmp_path / "elsewhere"
        write_config(cfg, ranges=[rng], hashprice=EARNING, tariff=TARIFF, state_dir=state,
                     extra=metrics)
        with DaemonProcess(cfg, tmp_path / "second.log") as second:
            def reported() -> bool:
                log = second.log()
                return all(f"unknown owner: {ip} " in log for ip in losers)

            wait_for(reported, 60, what="one log line per machine of unknown owner")
            start = ticks(second)
            wait_for(lambda: ticks(second) >= start + 5, 60, what="five more ticks")
            # Every machine earns, yet nothing it cannot prove it slept is woken.
            assert {ip for ip, s in _states(emu).items() if s == "sleeping"} == losers
            assert not journal_rows(state, "SELECT * FROM events WHERE kind='intent'"
                                    " AND action='run'")
            log = second.log()
            if loss == "moved":
                assert "WARNING curtaild: journal: " in log and "is a new journal" in log
            else:
                assert "ERROR curtaild: journal lost: " in log
                assert "had curtailed machines" in log
            assert _gauge(_scrape(port), "curtaild_unknown_owner_miners") == len(losers)

            status = json.loads(_cli(cfg, "status", "--json").stdout)
            assert {u["ip"] for u in status["unknown_owner"]} == losers
            assert status["journal_review"]["reason"]
            human = _cli(cfg, "status").stdout
            assert "UNKNOWN OWNER: 4 machine(s)" in human
            assert all(ip in human for ip in losers)
            listed = _cli(cfg, "adopt")
            assert listed.returncode == 0 and all(ip in listed.stdout for ip in losers)

            # Bad input changes nothing.
            bad = _cli(cfg, "adopt", "127.153.99.99")
            assert bad.returncode == 2 and "not a machine of unknown owner" in bad.stderr
            assert len(json.loads(_cli(cfg, "status", "--json").stdout)["unknown_owner"]) == 4

            ordered = sorted(losers, key=lambda ip: int(ip.rsplit(".", 1)[1]))
            one, operators, *_ = ordered
            done = _cli(cfg, "adopt", one)
            assert done.returncode == 0 and f"adopted: {one}" in done.stdout
            wait_for(lambda: _states(emu)[one] == "mining", 60, what=f"{one} woken once adopted")
            assert {ip for ip, s in _states(emu).items() if s == "sleeping"} == losers - {one}

            kept = _cli(cfg, "adopt", "--operator", operators)
            assert kept.returncode == 0 and "left to the operator" in kept.stdout
            assert _cli(cfg, "adopt", "--all").returncode == 0
            wait_for(lambda: {ip for ip, s in _states(emu).items() if s == "sleeping"}
                     == {operators}, 60, what="the adopted woken, the operator's asleep")
            wait_for(lambda: _gauge(_scrape(port), "curtaild_unknown_owner_miners") == 0, 30,
                     what="no machine of unknown owner left")
            wait_for(lambda: "journal review done" in second.log(), 30, what="review closed")
            time.sleep(3)
            assert _states(emu)[operators] == "sleeping"
            assert second.stop() == 0
        woken = {r[0] for r in journal_rows(
            state, "SELECT ip FROM events WHERE kind='intent' AND action='run'")}
        assert woken == losers - {operators}
