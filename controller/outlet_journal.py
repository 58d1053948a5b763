"""Outlets curtaild switched off, in the journal: ownership that survives a crash.

The same rule as a sleep (controller/journal.py): the intent is written before the SNMP SET
and the outcome after it, in the journal's own database (same file, connection and
durability). A ``kill -9`` between the two leaves an ``off_intent`` (or ``on_intent``) row,
which the next observation settles: an outlet seen off is curtaild's, one seen on is not --
no outlet is ever off and owned by nobody, and none an operator switched off is taken.
"""

from __future__ import annotations

import json
import sqlite3
import time

from curtaild.controller.journal import Journal, JournalError
from curtaild.controller.outlets import OutletKey, Owned

SCHEMA = """
CREATE TABLE IF NOT EXISTS outlets (
    pdu TEXT NOT NULL,
    outlet INTEGER NOT NULL,
    state TEXT NOT NULL,        -- off_intent | off | on_intent
    off_since REAL NOT NULL,
    miners TEXT NOT NULL,       -- machine keys when switched, comma-separated
    reason TEXT NOT NULL,
    machines TEXT,              -- JSON: what an instance that never saw them decides on
    PRIMARY KEY (pdu, outlet)
);
CREATE TABLE IF NOT EXISTS outlet_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    pdu TEXT NOT NULL,
    outlet INTEGER NOT NULL,
    action TEXT NOT NULL,       -- off | on | released | settled
    result TEXT NOT NULL,       -- intent | ok | failed: ... | note
    detail TEXT
);
CREATE INDEX IF NOT EXISTS outlet_events_at ON outlet_events (at);
"""
DAY_S = 86400.0


class OutletJournal:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.db = journal.db
        self._ready = self._exists()

    def _exists(self) -> bool:
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                           "name='outlet_events'").fetchone() is None:
            return False
        # an outlets table from before ``machines``: gains it (its rows keep none)
        if "machines" not in {r[1] for r in self.db.execute("PRAGMA table_info(outlets)")}:
            try:
                self.db.execute("ALTER TABLE outlets ADD COLUMN machines TEXT")
            except sqlite3.Error as exc:
                raise JournalError(f"journal: cannot add outlets.machines: {exc}") from None
        return True

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Reads; nothing before the first write (``curtaild plan`` creates no table)."""
        if not self._ready:
            self._ready = self._exists()
            if not self._ready:
                return []
        return self.db.execute(sql, params).fetchall()

    def _tx(self, *statements: tuple[str, tuple]) -> None:
        """One transaction (JournalError, nothing written, if it fails); the tables are
        created on the first write."""
        if not self._ready:
            try:
                self.db.executescript(SCHEMA)
            except sqlite3.Error as exc:
                raise JournalError(f"journal: cannot create the outlet tables: {exc}") \
                    from None
            self._ready = True
        self.journal._tx(list(statements))

    def owned(self) -> dict[OutletKey, Owned]:
        return {(pdu, n): Owned(off_since, state, _machines(machines))
                for pdu, n, state, off_since, machines in
                self._rows("SELECT pdu, outlet, state, off_since, machines FROM outlets")}

    @staticmethod
    def _event(pdu: str, outlet: int, action: str, result: str, detail: str | None = None,
               now: float | None = None) -> tuple[str, tuple]:
        return ("INSERT INTO outlet_events (at, pdu, outlet, action, result, detail) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (now or time.time(), pdu, outlet, action, result, detail))

    def intend_off(self, pdu: str, outlet: int, miners: tuple[str, ...], reason: str,
                   now: float | None = None, *, machines: tuple[dict, ...] = ()) -> None:
        """``machines``: the details of the machines on it (outlets.dark_details), kept with
        the ownership so that an instance that never sees them answer can still decide when
        to switch them back on."""
        now = now or time.time()
        self._tx(("INSERT OR REPLACE INTO outlets (pdu, outlet, state, off_since, miners, "
                  "reason, machines) VALUES (?, ?, 'off_intent', ?, ?, ?, ?)",
                  (pdu, outlet, now, ",".join(miners), reason,
                   json.dumps(list(machines)) if machines else None)),
                 self._event(pdu, outlet, "off", "intent", reason, now))

    def off_done(self, pdu: str, outlet: int, ok: bool, detail: str | None = None,
                 now: float | None = None) -> None:
        """After the SET: "off" on success; on failure the intent row stays for the next
        observation to settle (the SET may have taken effect without a reply)."""
        now = now or time.time()
        ev = self._event(pdu, outlet, "off", "ok" if ok else f"failed: {detail}", detail, now)
        if ok:
            self._tx(("UPDATE outlets SET state='off', off_since=? WHERE pdu=? AND outlet=?",
                      (now, pdu, outlet)), ev)
        else:
            self._tx(ev)

    def intend_on(self, pdu: str, outlet: int, now: float | None = None) -> None:
        self._tx(("UPDATE outlets SET state='on_intent' WHERE pdu=? AND outlet=?",
                  (pdu, outlet)), self._event(pdu, outlet, "on", "intent", None, now))

    def on_done(self, pdu: str, outlet: int, ok: bool, detail: str | None = None,
                now: float | None = None) -> None:
        """After the SET: success releases ownership; on failure the outlet stays ours."""
        sql = ("DELETE FROM outlets WHERE pdu=? AND outlet=?" if ok else
               "UPDATE outlets SET state='off' WHERE pdu=? AND outlet=?")
        self._tx((sql, (pdu, outlet)),
                 self._event(pdu, outlet, "on", "ok" if ok else f"failed: {detail}", detail,
                             now))

    def settle(self, observed: dict[OutletKey, bool | None], now: float | None = None) -> None:
        """Intent rows against what the PDU says now: an outlet seen off is ours ("off"), an
        ``off_intent`` seen on never happened (dropped), an ``on_intent`` seen on is done."""
        for key, own in self.owned().items():
            seen = observed.get(key)
            if seen is None or own.state == "off":
                continue
            if own.state == "off_intent" and seen is False:
                self._tx(("UPDATE outlets SET state='off' WHERE pdu=? AND outlet=?", key),
                         self._event(*key, "off", "note", "settled: seen off after an intent",
                                     now))
            elif seen is True:
                self._tx(("DELETE FROM outlets WHERE pdu=? AND outlet=?", key),
                         self._event(*key, "settled", "note", f"{own.state} seen on", now))
            elif own.state == "on_intent" and seen is False:
                self._tx(("UPDATE outlets SET state='off' WHERE pdu=? AND outlet=?", key))

    def release(self, key: OutletKey, why: str, now: float | None = None) -> None:
        self._tx(("DELETE FROM outlets WHERE pdu=? AND outlet=?", key),
                 self._event(*key, "released", "note", why, now))

    def off_times(self, since: float) -> dict[OutletKey, list[float]]:
        """When each outlet was switched off (taking effect) since ``since``: this journal's
        own switches and, in a cluster, those its predecessors made (``shared_changes``,
        controller/cluster.py), each switch once."""
        seen: dict[OutletKey, set[float]] = {}
        for pdu, n, at in self._rows(
                "SELECT pdu, outlet, at FROM outlet_events WHERE at >= ? AND action='off' "
                "AND result IN ('ok', 'note')", (since,)):
            seen.setdefault((pdu, n), set()).add(at)
        for key, at in self.db.execute("SELECT key, at FROM shared_changes WHERE "
                                       "kind='outlet_off' AND at >= ?", (since,)):
            pdu, _, n = key.rpartition("/")
            seen.setdefault((pdu, int(n)), set()).add(at)
        return {k: sorted(v) for k, v in seen.items()}

    def cycles(self, now: float | None = None) -> dict[OutletKey, int]:
        """Switch-offs that took effect per outlet in the last 24 h."""
        return {k: len(v) for k, v in self.off_times((now or time.time()) - DAY_S).items()}

    def last_on_at(self) -> dict[str, float]:
        out = {pdu: at for pdu, at in self._rows(
            "SELECT pdu, MAX(at) FROM outlet_events WHERE action='on' AND result='ok' "
            "GROUP BY pdu")}
        for pdu, at in self.db.execute("SELECT key, MAX(at) FROM shared_changes WHERE "
                                       "kind='pdu_on' GROUP BY key"):
            out[pdu] = max(at, out.get(pdu, at))
        return out

    def events(self, limit: int = 50) -> list[dict]:
        cols = ("at", "pdu", "outlet", "action", "result", "detail")
        return [dict(zip(cols, row, strict=True)) for row in self._rows(
            "SELECT at, pdu, outlet, action, result, detail FROM outlet_events "
            "ORDER BY id DESC LIMIT ?", (limit,))]


def _machines(text: str | None) -> tuple[dict, ...]:
    """The ``machines`` column: a JSON list of objects; anything else reads as none."""
    try:
        data = json.loads(text) if text else []
    except ValueError:
        return ()
    return tuple(d for d in data if isinstance(d, dict)) if isinstance(data, list) else ()
