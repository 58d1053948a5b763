"""A flood of 10,000 MQTT commands in 10 s at a real `curtaild run` over a real mosquitto
(shipped config and ACL), the EMS user sending: new events, cancels, overrides, pause/resume
and heartbeats, every id unique. Before: the whole directive state (590 KB) was rewritten on
every command and heartbeat, the inbound queue overflowed and commands were lost unanswered.
Now: the session stays up, every command is answered (applied, refused on its merits, or
"busy"), the directive state stays within its caps and the bytes written stay bounded.
Figures for docs/benchmarks.md come from bench/mqtt_flood.py, which runs the same flood.
Uses 127.154.4.1 (broker) and 127.154.5.1-20 (miners)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, journal_rows, wait_for, write_config
from tests.support.emulator import EmulatorProcess
from tests.support.flood import commands, flood
from tests.support.mosquitto import PREFIX, Client, MosquittoProcess

pytestmark = pytest.mark.integration

BROKER_IP, FIRST_MINER = "127.154.4.1", "127.154.5.1"
MINERS = 20
N, RATE = 10_000, 1000.0
#: storage writes allowed per command, all files of the daemon (journal, WAL, status.json
#: and log, ~2.3 KB measured, most of it the fast ticks the accepted commands cause): the
#: whole-state rewrite was ~140 KB per command (1.4 GB for 10,000)
WRITE_BUDGET_PER_COMMAND = 8192


def test_a_flood_of_commands_is_answered_on_one_session(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with MosquittoProcess(host=BROKER_IP) as broker, \
            EmulatorProcess(count=MINERS, first_ip=FIRST_MINER, time_scale=0.01), \
            Client(broker, user="dashboard", subscribe=f"{PREFIX}/miners/+") as watch:
        cfg = write_config(tmp_path / "config.toml", ranges=[f"{FIRST_MINER}-127.154.5.20"],
                           hashprice=0.09, tariff=0.03, state_dir=state, poll_interval_s=5.0,
                           extra=broker.mqtt_toml(state))
        with DaemonProcess(cfg, tmp_path / "d.log") as d:
            wait_for(lambda: len({t for t, _p, _r in watch.messages}) >= MINERS, 120,
                     what="every miner published")
            keys = sorted({json.loads(p)["id"] for _t, p, _r in watch.messages})
            res = flood(broker, PREFIX, commands(N, keys), rate_per_s=RATE,
                        daemon_pid=d.proc.pid, daemon_log=d.log_path)
            summary = (f"answered {res.answered}/{res.expected}, by status {res.by_status}, "
                       f"busy {res.busy}, connects {res.daemon_connects}, writes "
                       f"{res.write_bytes} B, RSS {res.rss_before_mb:.0f}->"
                       f"{res.rss_peak_mb:.0f} MB, {res.tick_summary()}")
            assert d.alive(), summary
            log = d.log()
            assert d.stop() == 0
        events = journal_rows(state, "SELECT kind, COUNT(*) FROM mqtt_directives GROUP BY kind")
    assert res.publish_s < 12.0, f"the flood itself was slow ({res.publish_s:.1f} s)"
    # one session throughout: no reconnect, nothing discarded by the client
    assert res.daemon_connects == 0 and log.count("mqtt connected to") == 1, summary
    assert "Discarding message" not in log, summary
    # every command answered exactly once
    assert res.missing == [] and res.answered == res.expected, summary
    assert res.duplicate_answers == 0, summary
    assert set(res.by_status) <= {"accepted", "rejected", "expired"}, summary
    assert res.by_status.get("accepted", 0) > 1000, summary  # it did real work meanwhile
    # bounded state and bounded writes
    rows = dict(events)
    assert rows.get("event", 0) <= 100 and rows.get("seen", 0) <= 5000, rows
    assert res.write_bytes < N * WRITE_BUDGET_PER_COMMAND, summary
    assert res.rss_peak_mb - res.rss_before_mb < 100, summary
