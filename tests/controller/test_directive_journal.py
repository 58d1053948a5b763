"""The MQTT directives in the journal: one row per item, a save writes only what changed (the
whole 590 KB state used to be rewritten on every command and heartbeat), restarts keep the
state, and a state saved by an older curtaild in the ``meta`` key is migrated once."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from curtaild.controller.directive_journal import LEGACY_META, DirectiveJournal
from curtaild.controller.directives import DirectiveStore, Limits
from curtaild.controller.journal import Journal

T0 = 1_760_000_000.0


def cmd(**kw) -> bytes:
    return json.dumps(kw).encode()


def full_store(dj: DirectiveJournal, n_ids: int = 5000) -> DirectiveStore:
    s, problems = dj.load(Limits(), T0)
    assert problems == []
    for i in range(n_ids):  # received a millisecond apart: the order ids are dropped in
        if i < 100:
            s.handle("curtail", cmd(id=f"e{i}", target_power_w=1e4 + i), T0 + i / 1000)
        else:
            s.handle("automation", cmd(id=f"r{i}", action="resume"), T0 + i / 1000)
    s.handle("override", cmd(id="o1", miner="AA", action="sleep", duration_s=3600), T0 + 6)
    s.handle("automation", cmd(id="p1", action="pause", duration_s=600), T0 + 7)
    dj.save(s)
    return s


def wal_bytes_of(journal: Journal, dj: DirectiveJournal, store: DirectiveStore) -> int:
    """Bytes one save appends to the write-ahead log (checkpoints held off meanwhile)."""
    wal = Path(str(journal.path) + "-wal")
    journal.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    journal.db.execute("PRAGMA wal_autocheckpoint=0")
    before = wal.stat().st_size if wal.exists() else 0
    dj.save(store)
    after = wal.stat().st_size
    journal.db.execute("PRAGMA wal_autocheckpoint=1000")
    return after - before


def test_round_trip_through_a_restart(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    dj = DirectiveJournal(j)
    s = full_store(dj)
    j.close()
    j2 = Journal(tmp_path)
    r, problems = DirectiveJournal(j2).load(Limits(), T0 + 10)
    assert problems == []
    assert r.directives(T0 + 10) == s.directives(T0 + 10)
    assert r.seen == s.seen and list(r.seen) == list(s.seen)  # the same oldest-first order
    assert r.handle("curtail", cmd(id="e5", target_power_w=1), T0 + 11).duplicate
    assert r.pending == {}


def test_what_ended_while_down_is_dropped_and_deleted(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    full_store(DirectiveJournal(j))
    dj = DirectiveJournal(j)
    later, _ = dj.load(Limits(), T0 + 86401)  # events (24 h default), override, pause over
    assert later.events == {} and later.overrides == {} and later.paused_until is None
    # the finished events are remembered as such, and the table follows after one save
    assert later.seen[("curtail", "e3")][0] == "expired"
    dj.save(later)
    kinds = dict(j.db.execute("SELECT kind, COUNT(*) FROM mqtt_directives GROUP BY kind"))
    assert kinds == {"seen": 5000}  # max_remembered_ids


def test_a_save_writes_the_changed_rows_not_the_whole_state(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    dj = DirectiveJournal(j)
    s = full_store(dj)
    whole = len(json.dumps(s.snapshot()))
    assert whole > 300_000  # what every command used to rewrite (590 KB in the probe)
    s.handle("curtail", cmd(id="one-more", target_power_w=2e4), T0 + 1)  # 101 events: cap 100
    s.handle("curtail/cancel", cmd(id="e1"), T0 + 1)
    s.handle("curtail", cmd(id="one-more", target_power_w=2e4), T0 + 1)
    rows = dict(s.pending)
    assert 2 <= len(rows) <= 5
    written = wal_bytes_of(j, dj, s)
    assert 0 < written <= 16 * 4096 + 4096, written  # a few pages, not the 590 KB state

    class WholeState:  # how curtaild saved before this table: the snapshot in one meta value
        def save(self, store: DirectiveStore) -> None:
            j.set_meta(LEGACY_META, store.snapshot())
    s.handle("curtail", cmd(id="yet-another", target_power_w=2e4), T0 + 2)
    old_way = wal_bytes_of(j, WholeState(), s)  # type: ignore[arg-type]
    assert old_way > 10 * written, (old_way, written)  # ~360 KB against ~30 KB here
    s.handle("heartbeat", b"", T0 + 2)
    assert dj.save(s) == 0  # nothing to write for a heartbeat


def test_a_failed_save_keeps_its_rows_for_the_next_one(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    dj = DirectiveJournal(j)
    s, _ = dj.load(Limits(), T0)
    s.handle("curtail", cmd(id="e1", target_power_w=5000), T0)
    lock = sqlite3.connect(j.path, timeout=0)
    lock.execute("BEGIN IMMEDIATE")  # another writer holds the journal
    j.db.execute("PRAGMA busy_timeout=0")
    try:
        dj.save(s)
    except sqlite3.OperationalError:
        pass
    else:
        raise AssertionError("the save should have failed on the locked journal")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    s.handle("override", cmd(id="o1", miner="AA", action="sleep"), T0)
    assert dj.save(s) == 4  # the event and the override, and their two remembered ids
    r, _ = DirectiveJournal(Journal(tmp_path)).load(Limits(), T0 + 1)
    assert set(r.events) == {"e1"} and set(r.overrides) == {"AA"}


def test_the_legacy_meta_state_is_migrated_once(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    old = DirectiveStore(limits=Limits(), last_heard=T0)
    old.handle("curtail", cmd(id="e1", target_power_w=5000), T0)
    old.handle("override", cmd(id="o1", miner="AA", action="sleep", duration_s=600), T0)
    j.set_meta(LEGACY_META, old.snapshot())  # what curtaild wrote before this table
    dj = DirectiveJournal(j)
    s, problems = dj.load(Limits(), T0 + 1)
    assert problems == []
    assert s.directives(T0 + 1) == old.directives(T0 + 1)
    assert j.get_meta(LEGACY_META) is None
    n = j.db.execute("SELECT COUNT(*) FROM mqtt_directives").fetchone()[0]
    assert n == 4  # event, override, two remembered ids
    again, _ = DirectiveJournal(j).load(Limits(), T0 + 2)
    assert again.directives(T0 + 2) == old.directives(T0 + 2)


def test_bad_rows_are_reported_and_skipped(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    dj = DirectiveJournal(j)
    s, _ = dj.load(Limits(), T0)
    s.handle("curtail", cmd(id="good", target_power_w=5000), T0)
    dj.save(s)
    j.db.execute("INSERT INTO mqtt_directives VALUES ('event', 'bad', '{not json')")
    j.db.execute("INSERT INTO mqtt_directives VALUES ('event', 'odd', '{\"id\": 1}')")
    j.db.execute("INSERT INTO mqtt_directives VALUES ('nonsense', 'x', '1')")
    r, problems = DirectiveJournal(j).load(Limits(), T0 + 1)
    assert set(r.events) == {"good"}
    assert len(problems) == 3 and all(p.startswith("journal directives:") for p in problems)
