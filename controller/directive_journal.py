"""The MQTT directives in the journal, one row per event, override, pause and remembered id.

Until this table existed the whole directive state was one JSON value (``meta`` key
``mqtt_directives``) rewritten on every command and heartbeat: with 5,000 remembered ids that
is ~590 KB per command, and a flood of commands turned into gigabytes of writes and an event
loop too busy to read its socket. Now a save writes only the rows that changed
(``DirectiveStore.take_pending``), all of them in one transaction, so the bytes written per
command are bounded by a few rows whatever the state holds. The table lives in the journal's
own database (same file, same connection, same durability: WAL, ``synchronous=FULL``) but
is kept apart from the tables controller/journal.py manages.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from curtaild.controller.directives import EVENT, OVERRIDE, PAUSE, SEEN, DirectiveStore, Limits
from curtaild.controller.journal import Journal

SCHEMA = """
CREATE TABLE IF NOT EXISTS mqtt_directives (
    kind TEXT NOT NULL,          -- event | override | seen | pause
    key TEXT NOT NULL,           -- event id | miner key | '<command> <id>' | ''
    value TEXT NOT NULL,         -- the row as JSON
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
"""
#: where the whole state used to be kept; read once at start, migrated, then deleted
LEGACY_META = "mqtt_directives"


class DirectiveJournal:
    """Loads the directive store at start and saves what changed since the last save."""

    def __init__(self, journal: Journal):
        self.db = journal.db
        self.db.executescript(SCHEMA)
        self.rows_written = 0
        self.saves = 0

    def load(self, limits: Limits, now: float) -> tuple[DirectiveStore, list[str]]:
        """The store as saved (what ended meanwhile is dropped, and deleted from the table);
        problems are one line each, never fatal. A state still in the legacy meta key is
        moved into the table."""
        rows = self.db.execute("SELECT kind, key, value FROM mqtt_directives").fetchall()
        legacy = self.db.execute("SELECT value FROM meta WHERE key=?",
                                 (LEGACY_META,)).fetchone() if not rows else None
        problems: list[str] = []
        if legacy is not None:
            try:
                data: object = json.loads(legacy[0])
            except ValueError:
                data, problems = None, ["journal directives: unreadable legacy state, ignored"]
            store, more = DirectiveStore.restore(data, limits, now)
            store.take_pending()
            self._write(store.rows(), delete_legacy=True)
            return store, problems + more
        return store_from_rows(rows, limits, now)

    def save(self, store: DirectiveStore) -> int:
        """Write the store's pending rows in one transaction; the number written. On failure
        the rows go back to the store (the next save retries them) and the error is raised."""
        rows = store.take_pending()
        if not rows:
            return 0
        try:
            self._write(rows)
        except BaseException:
            store.put_back(rows)
            raise
        return len(rows)

    def _write(self, rows: dict[tuple[str, str], Any], *, delete_legacy: bool = False) -> None:
        upserts = [(k, key, json.dumps(v, separators=(",", ":")))
                   for (k, key), v in rows.items() if v is not None]
        deletes = [(k, key) for (k, key), v in rows.items() if v is None]
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if deletes:
                self.db.executemany("DELETE FROM mqtt_directives WHERE kind=? AND key=?",
                                    deletes)
            if upserts:
                self.db.executemany(
                    "INSERT INTO mqtt_directives (kind, key, value) VALUES (?, ?, ?)"
                    " ON CONFLICT(kind, key) DO UPDATE SET value=excluded.value", upserts)
            if delete_legacy:
                self.db.execute("DELETE FROM meta WHERE key=?", (LEGACY_META,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.rows_written += len(rows)
        self.saves += 1


def store_from_rows(rows: Iterable[tuple[str, str, str]], limits: Limits, now: float
                    ) -> tuple[DirectiveStore, list[str]]:
    """A store from ``(kind, key, value JSON)`` rows, as this table holds them (and as the
    site's demand-response events are kept in etcd: controller/site_demand.py). Bad rows are
    skipped and reported, never fatal."""
    problems: list[str] = []
    data: dict[str, Any] = {"version": 1, "events": [], "overrides": [], "seen": []}
    seen: list[list[Any]] = []
    for kind, key, value in rows:
        try:
            row = json.loads(value)
        except ValueError:
            problems.append(f"journal directives: unreadable {kind} {key[:80]!r}, skipped")
            continue
        if kind == EVENT:
            data["events"].append(row)
        elif kind == OVERRIDE:
            data["overrides"].append(row)
        elif kind == PAUSE and isinstance(row, dict):
            data["paused_until"], data["paused_by"] = row.get("until"), row.get("by")
        elif kind == SEEN and isinstance(row, list) and len(row) == 3 and " " in key:
            seen.append([*key.split(" ", 1), *row])
        else:
            problems.append(f"journal directives: bad {kind} row {key[:80]!r}, skipped")
    # oldest first: the order remembered ids are dropped in
    seen.sort(key=lambda r: r[4] if isinstance(r[4], int | float) else 0.0)
    data["seen"] = seen
    store, more = DirectiveStore.restore(data, limits, now)
    return store, problems + more
