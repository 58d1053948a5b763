"""The journal: SQLite in the state directory, the controller's memory across restarts.

Every intent is written *before* its command is sent and every outcome after, so a crash
between the two leaves a record of what may have happened. The ``curtailed`` table says which
machines curtaild itself curtailed: after a restart the loop resumes from it, so it neither
strands a machine it slept nor wakes one that an operator slept by hand. A row leaves that
table only once the machine is *observed* running again, never on the mere sending of a wake.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from controller.guards import MinerMemory
from controller.snapshot import Command

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    miner TEXT NOT NULL,
    ip TEXT,
    kind TEXT NOT NULL,          -- intent | outcome | verified | mismatch | flagged | released
    action TEXT,
    power_limit_w REAL,
    result TEXT,
    reason TEXT,
    dry_run INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_miner ON events (miner, id);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS curtailed (
    miner TEXT PRIMARY KEY,
    ip TEXT,
    action TEXT NOT NULL,        -- sleep | limit
    power_limit_w REAL,
    restore_power_limit_w REAL,  -- the limit to put back on restore (NULL: nameplate)
    since REAL NOT NULL,
    releasing INTEGER NOT NULL DEFAULT 0,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS expectations (
    miner TEXT PRIMARY KEY,
    action TEXT NOT NULL,        -- the state the last command asked for: run | sleep | limit
    power_limit_w REAL,
    since REAL NOT NULL,         -- when that command was sent
    last_change_at REAL NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    flagged INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Expectation:
    miner: str
    action: str
    power_limit_w: float | None
    since: float
    last_change_at: float
    failures: int
    flagged: bool


@dataclass(frozen=True, slots=True)
class CurtailedRow:
    miner: str
    ip: str | None
    action: str
    power_limit_w: float | None
    restore_power_limit_w: float | None
    since: float
    releasing: bool
    reason: str | None


class Journal:
    """A thin, synchronous SQLite store (WAL, one writer): each write is a small transaction."""

    def __init__(self, state_dir: str | Path | None):
        """Open (or create) the journal; ``None`` gives a throw-away in-memory one (plan)."""
        if state_dir is None:
            self.path: Path | str = ":memory:"
        else:
            directory = Path(state_dir)
            directory.mkdir(parents=True, exist_ok=True)
            self.path = directory / "journal.sqlite"
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self.writes = 0

    def close(self) -> None:
        self.db.close()

    def _tx(self, statements: list[tuple[str, tuple]]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                self.db.execute(sql, params)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.writes += 1

    # ------------------------------------------------------------------ commands
    def record_intent(self, cmd: Command, *, observed_limit_w: float | None, dry_run: bool,
                      now: float | None = None) -> None:
        """Write what is about to be sent, and take (or release) ownership, atomically."""
        now = time.time() if now is None else now
        stmts: list[tuple[str, tuple]] = [(
            "INSERT INTO events (ts, miner, ip, kind, action, power_limit_w, reason, dry_run)"
            " VALUES (?, ?, ?, 'intent', ?, ?, ?, ?)",
            (now, cmd.key, cmd.ip, cmd.action, cmd.power_limit_w, cmd.reason, int(dry_run)),
        )]
        if dry_run:
            self._tx(stmts)
            return
        if cmd.action in ("sleep", "limit"):
            # Keep the limit to restore from the first curtailment, not from an earlier limit
            # of our own.
            stmts.append((
                "INSERT INTO curtailed (miner, ip, action, power_limit_w, restore_power_limit_w,"
                " since, releasing, reason) VALUES (?, ?, ?, ?, ?, ?, 0, ?)"
                " ON CONFLICT(miner) DO UPDATE SET ip=excluded.ip, action=excluded.action,"
                " power_limit_w=excluded.power_limit_w, releasing=0, reason=excluded.reason",
                (cmd.key, cmd.ip, cmd.action, cmd.power_limit_w, observed_limit_w, now, cmd.reason),
            ))
        else:
            stmts.append(("UPDATE curtailed SET releasing=1 WHERE miner=?", (cmd.key,)))
        stmts.append((
            "INSERT INTO expectations (miner, action, power_limit_w, since, last_change_at,"
            " failures, flagged) VALUES (?, ?, ?, ?, ?, 0, 0)"
            " ON CONFLICT(miner) DO UPDATE SET"
            "  failures = CASE WHEN expectations.action = excluded.action"
            "             THEN expectations.failures ELSE 0 END,"
            # A re-sent command keeps its change time; a new power limit is a new change
            # (minimum dwell must hold limit -> limit too: issue 15, Whatsminer restart loop).
            "  last_change_at = CASE WHEN expectations.action = excluded.action"
            "             AND expectations.power_limit_w IS excluded.power_limit_w"
            "             THEN expectations.last_change_at ELSE excluded.last_change_at END,"
            "  action=excluded.action, power_limit_w=excluded.power_limit_w, since=excluded.since",
            (cmd.key, cmd.action, cmd.power_limit_w, now, now),
        ))
        self._tx(stmts)

    def record_outcome(self, cmd: Command, result: str, detail: str | None = None,
                       *, dry_run: bool = False, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._tx([(
            "INSERT INTO events (ts, miner, ip, kind, action, power_limit_w, result, reason,"
            " dry_run) VALUES (?, ?, ?, 'outcome', ?, ?, ?, ?, ?)",
            (now, cmd.key, cmd.ip, cmd.action, cmd.power_limit_w, result, detail, int(dry_run)),
        )])

    # -------------------------------------------------------------- verification
    def mark_verified(self, miner: str, ip: str, action: str, now: float | None = None) -> None:
        """The machine is in the commanded state: clear the expectation's failure count, and
        drop ownership once a released machine is seen running."""
        now = time.time() if now is None else now
        stmts: list[tuple[str, tuple]] = [
            ("UPDATE expectations SET failures=0, flagged=0, since=? WHERE miner=?", (now, miner)),
            ("INSERT INTO events (ts, miner, ip, kind, action, result) VALUES (?, ?, ?,"
             " 'verified', ?, 'ok')", (now, miner, ip, action)),
        ]
        if action == "run":
            stmts.append(("DELETE FROM curtailed WHERE miner=? AND releasing=1", (miner,)))
            stmts.append(("DELETE FROM expectations WHERE miner=?", (miner,)))
        self._tx(stmts)

    def mark_mismatch(self, miner: str, ip: str, action: str, observed: str, *, flag_after: int,
                      now: float | None = None) -> int:
        """The machine is not in the commanded state after its grace: count, maybe flag."""
        now = time.time() if now is None else now
        row = self.db.execute("SELECT failures FROM expectations WHERE miner=?",
                              (miner,)).fetchone()
        failures = (row[0] if row else 0) + 1
        flagged = failures >= flag_after
        self._tx([
            ("UPDATE expectations SET failures=?, flagged=?, since=? WHERE miner=?",
             (failures, int(flagged), now, miner)),
            ("INSERT INTO events (ts, miner, ip, kind, action, result, reason) VALUES (?, ?, ?,"
             " ?, ?, ?, ?)", (now, miner, ip, "flagged" if flagged else "mismatch", action,
                              observed, f"failure {failures} of {flag_after}")),
        ])
        return failures

    def release_ownership(self, miner: str, reason: str, now: float | None = None) -> None:
        """Forget a curtailment (the machine was found running with nothing to restore)."""
        now = time.time() if now is None else now
        self._tx([
            ("DELETE FROM curtailed WHERE miner=?", (miner,)),
            ("DELETE FROM expectations WHERE miner=?", (miner,)),
            ("INSERT INTO events (ts, miner, kind, reason) VALUES (?, ?, 'released', ?)",
             (now, miner, reason)),
        ])

    def unflag(self, miner: str) -> None:
        self._tx([("UPDATE expectations SET flagged=0, failures=0 WHERE miner=?", (miner,))])

    # -------------------------------------------------------------------- reads
    def curtailed(self) -> dict[str, CurtailedRow]:
        rows = self.db.execute(
            "SELECT miner, ip, action, power_limit_w, restore_power_limit_w, since, releasing,"
            " reason FROM curtailed").fetchall()
        return {r[0]: CurtailedRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7])
                for r in rows}

    def expectations(self) -> dict[str, Expectation]:
        rows = self.db.execute(
            "SELECT miner, action, power_limit_w, since, last_change_at, failures, flagged"
            " FROM expectations").fetchall()
        return {r[0]: Expectation(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6])) for r in rows}

    def recent_changes(self, since: float) -> dict[str, float]:
        """Per machine, the last command that went through (outcome ok, not a dry run) at or
        after ``since``: what minimum dwell needs once a machine's rows are gone (a verified
        wake drops both its ownership and its expectation)."""
        rows = self.db.execute(
            "SELECT miner, MAX(ts) FROM events WHERE ts >= ? AND kind='outcome' AND result='ok'"
            " AND dry_run=0 GROUP BY miner", (since,))
        return {miner: ts for miner, ts in rows}

    def memory(self, *, dwell_s: float = 0.0, now: float | None = None) -> dict[str, MinerMemory]:
        """What the guards need to know per machine, from both tables; with ``dwell_s``, also
        machines curtaild changed within the last ``dwell_s`` seconds and no longer tracks
        (e.g. just woken and released), so minimum dwell still holds for them."""
        curtailed = self.curtailed()
        expect = self.expectations()
        out: dict[str, MinerMemory] = {}
        if dwell_s > 0:
            now = time.time() if now is None else now
            for key, ts in self.recent_changes(now - dwell_s).items():
                if key not in curtailed and key not in expect:
                    out[key] = MinerMemory(key=key, curtailed_by_us=False, curtailed_action=None,
                                           restore_power_limit_w=None, last_change_at=ts,
                                           flagged=False)
        for key in set(curtailed) | set(expect):
            c, e = curtailed.get(key), expect.get(key)
            out[key] = MinerMemory(
                key=key,
                curtailed_by_us=c is not None,
                curtailed_action=c.action if c else None,  # type: ignore[arg-type]
                restore_power_limit_w=c.restore_power_limit_w if c else None,
                last_change_at=e.last_change_at if e else (c.since if c else None),
                flagged=bool(e and e.flagged),
                expected_action=e.action if e else None,  # type: ignore[arg-type]
                expected_power_limit_w=e.power_limit_w if e else None,
            )
        return out

    def events(self, limit: int = 100, miner: str | None = None) -> list[dict]:
        sql = ("SELECT id, ts, miner, ip, kind, action, power_limit_w, result, reason, dry_run"
               " FROM events")
        params: tuple = ()
        if miner:
            sql += " WHERE miner=?"
            params = (miner,)
        sql += " ORDER BY id DESC LIMIT ?"
        cols = ("id", "ts", "miner", "ip", "kind", "action", "power_limit_w", "result",
                "reason", "dry_run")
        return [dict(zip(cols, r, strict=True)) for r in self.db.execute(sql, (*params, limit))]

    def iter_events(self) -> Iterator[tuple]:
        yield from self.db.execute("SELECT * FROM events ORDER BY id")

    def get_meta(self, key: str) -> object | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, key: str, value: object) -> None:
        self._tx([("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE"
                   " SET value=excluded.value", (key, json.dumps(value)))])
