"""The journal: SQLite in the state directory, the controller's memory across restarts.

Every intent is written *before* its command is sent and every outcome after, so a crash
between the two leaves a record of what may have happened. The ``curtailed`` table says which
machines curtaild itself curtailed: after a restart the loop resumes from it, so it neither
strands a machine it slept nor wakes one that an operator slept by hand. A row leaves that
table only once the machine is *observed* running again, never on the mere sending of a wake.

A journal that is lost (deleted, truncated to 0 bytes -- a valid empty database --, a new
``state_dir``) must never be silent: the daemon would take every machine it had slept for an
operator's and never wake it. ``journal.id`` beside the database records the identity of the
journal curtaild created there and whether it ever curtailed a machine; at start
:meth:`Journal.check_identity` compares the two, and a new or lost journal opens a *review*
(controller/recovery.py): each machine's first sighting asleep or power-limited is recorded as
of unknown owner and reported until the operator hands it over (``curtaild adopt``).

Every file here is created 0600 (the directory 0700): the journal and the status file say
what the fleet is and does, and nobody else on the host needs to read them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from curtaild.controller.guards import (
    LIMIT_CHANGES_KEPT_S,
    MinerMemory,
    attach_limit_changes,
    is_limit_change,
)
from curtaild.core.snapshot import Action, Command

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
    dry_run INTEGER NOT NULL DEFAULT 0,
    term INTEGER                 -- [cluster]: the leader's term the command was sent under
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
    flagged INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'sent', -- sent | pending (acknowledged) | failed | confirmed
    acked_at REAL,               -- when the firmware acknowledged the command (pending)
    tier INTEGER NOT NULL DEFAULT 0  -- 1: the next tier sent to a flagged machine ([guards])
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS limit_changes (  -- curtaild's power-limit changes ([guards] rule 6c)
    miner TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS limit_changes_ts ON limit_changes (ts);
CREATE TABLE IF NOT EXISTS sightings (  -- machines seen reachable during a review
    miner TEXT PRIMARY KEY,
    first_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS shared_changes (  -- [cluster]: a predecessor's recent changes
    kind TEXT NOT NULL,          -- miner | limit | outlet_off | pdu_on (cluster.py)
    key TEXT NOT NULL,           -- miner key | "<pdu>/<outlet>" | PDU key
    at REAL NOT NULL,
    PRIMARY KEY (kind, key, at)
);
CREATE TABLE IF NOT EXISTS unknown_owner (  -- first seen asleep/limited by a new or lost journal
    miner TEXT PRIMARY KEY,
    ip TEXT,
    state TEXT NOT NULL,         -- sleeping | limited
    power_limit_w REAL,
    seen_at REAL NOT NULL,
    resolved TEXT,               -- NULL: open | adopted | operator | running
    resolved_at REAL
);
"""

log = logging.getLogger("curtaild.journal")

JOURNAL_FILE = "journal.sqlite"
#: Beside the database, outside it: survives the database's loss (see the module docstring).
MARKER_FILE = "journal.id"
#: How long one journal statement waits for a lock held by another process before it fails.
#: Short, because the daemon writes on its event loop: a journal locked from outside (a
#: backup, an sqlite3 shell left in a transaction) then costs a tick a fraction of a second,
#: not sqlite3's default 5 s per statement. A command whose intent cannot be written is not
#: sent (controller/loop.py).
BUSY_TIMEOUT_S = 0.25
#: The command-line tools (``adopt``) run once, beside the daemon's writes: they may wait.
CLI_BUSY_TIMEOUT_S = 5.0
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
REVIEW_META = "review"
IDENTITY_META = "identity"


class JournalError(Exception):
    """The journal cannot be opened, read or written; the message names the path and why."""


def _sqlite_reason(exc: sqlite3.Error) -> str:
    """sqlite3's terse messages, said so an operator knows what to do."""
    text = str(exc)
    if "not a database" in text:
        return ("not an SQLite database (damaged, or another file at this path): move it "
                "aside to start a new journal, which reports the machines of unknown owner")
    if "locked" in text or "busy" in text:
        return f"{text} (another process holds a lock on it)"
    if "unable to open" in text:
        return f"{text} (check that the directory exists and is writable)"
    if "readonly" in text:
        return f"{text} (read-only file or file system)"
    return text


def state_dir_problem(state_dir: str | Path) -> str | None:
    """Why curtaild could not create or write ``state_dir`` (None: it can); creates nothing
    that stays. Run as root, ``os.access`` says yes to nearly everything, so this tries: a
    temporary file in the directory, or in the nearest existing ancestor if it is missing."""
    directory = Path(state_dir)
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        if probe == directory:
            return f"{directory} exists and is not a directory"
        return f"{directory} cannot be created: {probe} is not a directory"
    try:
        fd, name = _mkstemp(probe)
    except OSError as exc:
        where = "is not writable" if probe == directory else f"cannot be created in {probe}"
        return f"{directory} {where}: {exc.strerror or exc}"
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    journal = directory / JOURNAL_FILE
    if journal.is_dir():
        return f"{journal} is a directory, not the journal"
    return None


def inspect_state_dir(state_dir: str | Path) -> tuple[list[str], list[str]]:
    """What ``curtaild check`` says about the state directory, read-only: (problems that
    would stop ``run``, warnings). The warning is a journal ``run`` would find lost."""
    problem = state_dir_problem(state_dir)
    if problem is not None:
        return [problem], []
    path = Path(state_dir) / JOURNAL_FILE
    marker = Path(state_dir) / MARKER_FILE
    stored: str | None = None
    if path.exists() and path.stat().st_size > 0:
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=CLI_BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            return [f"{path}: {_sqlite_reason(exc)}"], []
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            if "meta" in tables:
                row = db.execute("SELECT value FROM meta WHERE key=?",
                                 (IDENTITY_META,)).fetchone()
                if row:
                    stored = json.loads(row[0]).get("journal_id")
        except (sqlite3.Error, ValueError, AttributeError) as exc:
            reason = _sqlite_reason(exc) if isinstance(exc, sqlite3.Error) else str(exc)
            return [f"{path}: {reason}"], []
        finally:
            db.close()
    try:
        named = json.loads(marker.read_text(encoding="utf-8")).get("journal_id")
    except FileNotFoundError:
        return [], []
    except (OSError, ValueError, AttributeError):
        named = None
    if named is None or named != stored:
        return [], [f"{marker} names a journal {path} does not hold: `run` will start in "
                    "recovery mode and report the machines of unknown owner"]
    return [], []


def _mkstemp(directory: Path) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(prefix=".curtaild-write-test-", dir=directory)


def _private(path: Path) -> None:
    """Take group and other access away from a file curtaild owns (an older install, or one
    run outside systemd's UMask=0077, left it 0644)."""
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077:
            os.chmod(path, PRIVATE_FILE_MODE)


def write_private_file(path: Path, text: str, *, fsync: bool = False) -> None:
    """Replace ``path`` atomically with ``text``, readable by the owner only (0600 whatever
    the umask: os.open's mode, not write_text's 0666 & ~umask). ``fsync`` for files whose
    loss in a power cut matters (journal.id)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # a stale .tmp may predate this rule
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            fd = -1
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    finally:
        if fd >= 0:
            os.close(fd)
    os.replace(tmp, path)


def _open_state_dir(directory: Path, path: Path) -> None:
    """Create the directory (0700) and the database file (0600) before SQLite does: SQLite
    creates its -wal and -shm files with the database file's mode, so all three are private.
    Every failure is a JournalError naming the path and the reason."""
    try:
        directory.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        why = state_dir_problem(directory) or f"{directory}: {exc.strerror or exc}"
        raise JournalError(f"state_dir {why}") from None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
    except OSError as exc:
        raise JournalError(f"journal {path}: cannot open for writing: "
                           f"{exc.strerror or exc}") from None
    os.close(fd)
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        _private(p)


@dataclass(frozen=True, slots=True)
class Identity:
    """What :meth:`Journal.check_identity` found at start.

    ``status``: ``ok`` (the journal journal.id names), ``new`` (no marker, a journal with no
    history: a first start, or a ``state_dir`` that moved), ``lost`` (journal.id names another
    journal, or its file is unreadable: the database was deleted, truncated or replaced),
    ``marker_restored`` (journal.id was missing beside an intact journal) or ``upgraded`` (a
    journal written before journal.id existed). ``new`` and ``lost`` open a review.
    """

    status: str
    journal_id: str
    reason: str
    had_history: bool = False


@dataclass(frozen=True, slots=True)
class UnknownOwner:
    """A machine a new or lost journal first saw asleep or power-limited: curtaild cannot tell
    whether it or an operator did that, so it reports it and never wakes it on its own."""

    miner: str
    ip: str | None
    state: str  # sleeping | limited
    power_limit_w: float | None
    seen_at: float
    resolved: str | None = None
    resolved_at: float | None = None


@dataclass(frozen=True, slots=True)
class Expectation:
    miner: str
    action: Action  # as the Command that set it
    power_limit_w: float | None
    since: float
    last_change_at: float
    failures: int
    flagged: bool
    #: sent (intent written) | pending (acknowledged, not yet seen in effect) | failed (not
    #: acknowledged) | confirmed (seen in effect): "sent, acknowledged, not yet in effect" is a
    #: state of its own (issue 14), and its grace counts from ``acked_at``
    state: str = "sent"
    acked_at: float | None = None
    tier: int = 0  # 1: the next tier was sent to this machine after it was flagged


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

    def __init__(self, state_dir: str | Path | None, *,
                 busy_timeout_s: float = BUSY_TIMEOUT_S):
        """Open (or create) the journal; ``None`` gives a throw-away in-memory one (plan).

        Raises :class:`JournalError` (path and reason) when the state directory or the
        database cannot be created, opened or read."""
        self.marker: Path | None = None
        self._history_marked = False
        if state_dir is None:
            self.path: Path | str = ":memory:"
        else:
            directory = Path(state_dir)
            self.path = directory / JOURNAL_FILE
            self.marker = directory / MARKER_FILE
            _open_state_dir(directory, self.path)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                      timeout=busy_timeout_s)
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {_sqlite_reason(exc)}") from None
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            _add_missing_columns(self.db)
        except sqlite3.Error as exc:
            self.db.close()
            raise JournalError(f"journal {self.path}: {_sqlite_reason(exc)}") from None
        self.writes = 0
        #: [cluster] (controller/cluster.py): the leader's term, written with every intent and
        #: outcome, so that the history shows which leader sent what; None when alone
        self.term: int | None = None

    def close(self) -> None:
        self.db.close()

    def _tx(self, statements: list[tuple[str, tuple]]) -> None:
        """One write transaction; a :class:`JournalError` (nothing written) if it fails."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: write failed: "
                               f"{_sqlite_reason(exc)}") from None
        try:
            for sql, params in statements:
                self.db.execute(sql, params)
            self.db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise JournalError(f"journal {self.path}: write failed: "
                                   f"{_sqlite_reason(exc)}") from None
            raise
        self.writes += 1

    # ------------------------------------------------------------------ commands
    def record_intent(self, cmd: Command, *, observed_limit_w: float | None, dry_run: bool,
                      now: float | None = None) -> None:
        """Write what is about to be sent, and take (or release) ownership, atomically."""
        now = time.time() if now is None else now
        stmts: list[tuple[str, tuple]] = [(
            "INSERT INTO events (ts, miner, ip, kind, action, power_limit_w, reason, dry_run,"
            " term) VALUES (?, ?, ?, 'intent', ?, ?, ?, ?, ?)",
            (now, cmd.key, cmd.ip, cmd.action, cmd.power_limit_w, cmd.reason, int(dry_run),
             self.term),
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
        if is_limit_change(cmd, observed_limit_w, self._expected(cmd.key)):
            stmts.append(("INSERT INTO limit_changes (miner, ts) VALUES (?, ?)", (cmd.key, now)))
            stmts.append(("DELETE FROM limit_changes WHERE ts < ?",
                          (now - LIMIT_CHANGES_KEPT_S,)))
        stmts.append((
            "INSERT INTO expectations (miner, action, power_limit_w, since, last_change_at,"
            " failures, flagged, state, acked_at, tier) VALUES (?, ?, ?, ?, ?, 0, 0, 'sent',"
            " NULL, ?)"
            " ON CONFLICT(miner) DO UPDATE SET"
            "  failures = CASE WHEN expectations.action = excluded.action AND excluded.tier = 0"
            "             THEN expectations.failures ELSE 0 END,"
            # The next tier is judged afresh (verify flags it at its first failure).
            "  flagged = CASE WHEN excluded.tier > 0 THEN 0 ELSE expectations.flagged END,"
            "  state='sent', acked_at=NULL, tier=excluded.tier,"
            # A re-sent command keeps its change time; a new power limit is a new change
            # (minimum dwell must hold limit -> limit too: issue 15, Whatsminer restart loop).
            "  last_change_at = CASE WHEN expectations.action = excluded.action"
            "             AND expectations.power_limit_w IS excluded.power_limit_w"
            "             THEN expectations.last_change_at ELSE excluded.last_change_at END,"
            "  action=excluded.action, power_limit_w=excluded.power_limit_w, since=excluded.since",
            (cmd.key, cmd.action, cmd.power_limit_w, now, now, cmd.tier),
        ))
        self._tx(stmts)
        if cmd.action in ("sleep", "limit"):
            self._note_history()

    def record_outcome(self, cmd: Command, result: str, detail: str | None = None,
                       *, dry_run: bool = False, now: float | None = None) -> None:
        now = time.time() if now is None else now
        stmts: list[tuple[str, tuple]] = [(
            "INSERT INTO events (ts, miner, ip, kind, action, power_limit_w, result, reason,"
            " dry_run, term) VALUES (?, ?, ?, 'outcome', ?, ?, ?, ?, ?, ?)",
            (now, cmd.key, cmd.ip, cmd.action, cmd.power_limit_w, result, detail, int(dry_run),
             self.term),
        )]
        if not dry_run and result in ("ok", "failed"):
            # Acknowledged is not in effect: "pending" until an observation confirms it.
            stmts.append((
                "UPDATE expectations SET state=?, acked_at=? WHERE miner=? AND action=?"
                " AND power_limit_w IS ? AND state='sent'",
                ("pending" if result == "ok" else "failed", now if result == "ok" else None,
                 cmd.key, cmd.action, cmd.power_limit_w)))
        self._tx(stmts)

    # -------------------------------------------------------------- verification
    def mark_verified(self, miner: str, ip: str, action: str, now: float | None = None) -> None:
        """The machine is in the commanded state: clear the expectation's failure count, and
        drop ownership once a released machine is seen running."""
        now = time.time() if now is None else now
        stmts: list[tuple[str, tuple]] = [
            ("UPDATE expectations SET failures=0, flagged=0, since=?, state='confirmed'"
             " WHERE miner=?", (now, miner)),
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
            "SELECT miner, action, power_limit_w, since, last_change_at, failures, flagged,"
            " state, acked_at, tier FROM expectations").fetchall()
        return {r[0]: Expectation(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7], r[8],
                                  r[9]) for r in rows}

    def owned_keys(self) -> set[str]:
        """The machines this journal holds rows for (ownership or a command being verified):
        a warm start reads their identity in its first sweep (drivers/miners.py)."""
        return {k for (k,) in self.db.execute(
            "SELECT miner FROM curtailed UNION SELECT miner FROM expectations")}

    def _expected(self, key: str) -> tuple[str, float | None] | None:
        """The last command's (action, power limit) for ``key``, if it is still expected."""
        row = self.db.execute("SELECT action, power_limit_w FROM expectations WHERE miner=?",
                              (key,)).fetchone()
        return None if row is None else (row[0], row[1])

    def limit_changes_since(self, since: float) -> dict[str, tuple[float, ...]]:
        """Per machine, when curtaild changed its power limit at or after ``since`` (rule 6c:
        at most ``max_limit_changes_per_day`` a day)."""
        out: dict[str, list[float]] = {}
        for miner, ts in self.db.execute(
                "SELECT miner, ts FROM limit_changes WHERE ts >= ?"
            # [cluster]: the changes a predecessor made, as the successor resumed them
                " UNION SELECT key, at FROM shared_changes WHERE kind='limit' AND at >= ?"
                " ORDER BY 2", (since, since)):
            out.setdefault(miner, []).append(ts)
        return {k: tuple(v) for k, v in out.items()}

    def recent_changes(self, since: float) -> dict[str, float]:
        """Per machine, the last command that went through (outcome ok, not a dry run) at or
        after ``since``: what minimum dwell needs once a machine's rows are gone (a verified
        wake drops both its ownership and its expectation)."""
        rows = self.db.execute(
            "SELECT miner, MAX(ts) FROM events WHERE ts >= ? AND kind='outcome' AND result='ok'"
            " AND dry_run=0 GROUP BY miner", (since,))
        out = {miner: ts for miner, ts in rows}
        # [cluster]: the changes a predecessor made, as the successor resumed them
        for miner, ts in self.db.execute(
                "SELECT key, MAX(at) FROM shared_changes WHERE kind='miner' AND at >= ?"
                " GROUP BY key", (since,)):
            if ts > out.get(miner, ts - 1.0):
                out[miner] = ts
        return out

    def memory(self, *, dwell_s: float = 0.0, now: float | None = None,
               flag_retry_s: float = 0.0, limit_window_s: float = 0.0) -> dict[str, MinerMemory]:
        """What the guards need to know per machine, from both tables; with ``dwell_s``, also
        machines curtaild changed within the last ``dwell_s`` seconds and no longer tracks
        (e.g. just woken and released), so minimum dwell still holds for them.

        With ``flag_retry_s``, a flagged machine whose last try (its flag, or the retry since)
        is that old is shown unflagged, so the guards command it once more: a machine flagged
        for ignoring a wake would otherwise stay asleep for good once its firmware obeys again
        (the flag clears only when the machine is seen in the expected state, and a machine
        never commanded again is never seen so -- soak seed 123). The row stays flagged: a
        retry that fails again waits another ``flag_retry_s``."""
        curtailed = self.curtailed()
        expect = self.expectations()
        out: dict[str, MinerMemory] = {}
        now = time.time() if now is None else now
        if dwell_s > 0:
            for key, ts in self.recent_changes(now - dwell_s).items():
                if key not in curtailed and key not in expect:
                    out[key] = MinerMemory(key=key, curtailed_by_us=False, curtailed_action=None,
                                           restore_power_limit_w=None, last_change_at=ts,
                                           flagged=False)
        for key in set(curtailed) | set(expect):
            c, e = curtailed.get(key), expect.get(key)
            retry_due = bool(e and e.flagged and flag_retry_s > 0
                             and now - e.since >= flag_retry_s)
            out[key] = MinerMemory(
                key=key,
                curtailed_by_us=c is not None,
                curtailed_action=c.action if c else None,  # type: ignore[arg-type]
                restore_power_limit_w=c.restore_power_limit_w if c else None,
                last_change_at=e.last_change_at if e else (c.since if c else None),
                flagged=bool(e and e.flagged) and not retry_due,
                retry_due=retry_due,
                expected_action=e.action if e else None,  # type: ignore[arg-type]
                expected_power_limit_w=e.power_limit_w if e else None,
            )
        if limit_window_s > 0:
            attach_limit_changes(out, self.limit_changes_since(now - limit_window_s))
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

    # ------------------------------------------------------------ identity (journal.id)
    def _read_marker(self) -> tuple[dict | None, str | None]:
        """journal.id's content, or (None, why it could not be read); (None, None): absent."""
        assert self.marker is not None
        try:
            data = json.loads(self.marker.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as exc:
            return None, f"{self.marker} is unreadable ({exc})"
        if not isinstance(data, dict) or not isinstance(data.get("journal_id"), str):
            return None, f"{self.marker} names no journal"
        return data, None

    def _write_marker(self, journal_id: str, created_at: float, *, curtailed_ever: bool,
                      replaces: str | None = None) -> None:
        assert self.marker is not None
        data = {"journal_id": journal_id, "created_at": created_at,
                "curtailed_ever": curtailed_ever, "journal": JOURNAL_FILE,
                "note": "written by curtaild: identifies the journal beside it, so that its "
                        "loss is detected. Do not edit or copy it."}
        if replaces:
            data["replaces"] = replaces
        try:
            write_private_file(self.marker, json.dumps(data, indent=1) + "\n", fsync=True)
        except OSError as exc:
            raise JournalError(f"journal marker {self.marker}: cannot write: "
                               f"{exc.strerror or exc}") from None
        self._history_marked = curtailed_ever

    def _note_history(self) -> None:
        """Record in journal.id, once, that this journal has curtailed a machine: its later
        loss then strands machines, and is reported as such."""
        if self._history_marked or self.marker is None:
            return
        ident = self.get_meta(IDENTITY_META)
        if not isinstance(ident, dict):
            return  # no identity yet (check_identity not run: plan, tests)
        try:
            self._write_marker(ident["journal_id"], ident.get("created_at", time.time()),
                               curtailed_ever=True)
        except JournalError as exc:
            log.warning("%s", exc)

    def _curtailed_ever(self) -> bool:
        return self.db.execute(
            "SELECT 1 FROM events WHERE kind='intent' AND action IN ('sleep', 'limit')"
            " AND dry_run=0 LIMIT 1").fetchone() is not None

    def check_identity(self, now: float | None = None) -> Identity:
        """Compare the database with journal.id and settle both (daemon start only).

        A new journal (no marker, no history) or a lost one (the marker names a journal this
        database is not) opens a review; see :class:`Identity`. Raises :class:`JournalError`
        if journal.id cannot be written.
        """
        now = time.time() if now is None else now
        if self.marker is None:
            return Identity("ok", "memory", "in-memory journal")
        try:
            stored = self.get_meta(IDENTITY_META)
            has_rows = self.db.execute(
                "SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM curtailed)"
            ).fetchone()[0] > 0
            ever = self._curtailed_ever()
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {_sqlite_reason(exc)}") from None
        marker, unreadable = self._read_marker()
        if isinstance(stored, dict) and isinstance(stored.get("journal_id"), str):
            jid = stored["journal_id"]
            created = float(stored.get("created_at") or now)
            if marker is not None and marker["journal_id"] == jid:
                self._history_marked = bool(marker.get("curtailed_ever"))
                if ever and not self._history_marked:
                    self._write_marker(jid, created, curtailed_ever=True)
                return Identity("ok", jid, f"{self.marker} names this journal",
                                had_history=ever)
            if marker is None:
                self._write_marker(jid, created, curtailed_ever=ever)
                why = unreadable or f"{self.marker} was missing"
                return Identity("marker_restored", jid,
                                f"{why}; rewritten for the intact journal {jid}",
                                had_history=ever)
            # Another curtaild journal than the one last used here: a restored backup, a copy.
            reason = (f"{self.path} is journal {jid}, but {self.marker} names journal "
                      f"{marker['journal_id']} ({_history_words(marker)}): the database was "
                      "replaced (a restored backup?), so machines curtailed since are unknown")
            self._open_review(jid, created, reason, now, replaces=marker["journal_id"],
                              ever=ever)
            return Identity("lost", jid, reason, had_history=bool(marker.get("curtailed_ever")))
        jid = uuid.uuid4().hex
        if marker is not None or unreadable is not None:
            if marker is not None:
                reason = (f"{self.path} holds no journal, but {self.marker} names journal "
                          f"{marker['journal_id']} ({_history_words(marker)}): the database "
                          "was deleted, truncated or replaced")
            else:
                reason = (f"{self.path} holds no journal identity and {unreadable}: the "
                          "journal was probably lost")
            self._open_review(jid, now, reason, now,
                              replaces=marker["journal_id"] if marker else None, ever=ever)
            return Identity("lost", jid, reason,
                            had_history=bool(marker and marker.get("curtailed_ever")))
        if has_rows:
            # Written by a curtaild that predates journal.id: intact, nothing to review.
            self._tx([_meta_stmt(IDENTITY_META, {"journal_id": jid, "created_at": now})])
            self._write_marker(jid, now, curtailed_ever=ever)
            return Identity("upgraded", jid, f"{self.marker} written for the existing journal",
                            had_history=ever)
        reason = (f"{self.path} is a new journal and {self.marker} did not exist: a first "
                  "start, or a state_dir that moved or was emptied")
        self._open_review(jid, now, reason, now, replaces=None, ever=False)
        return Identity("new", jid, reason)

    def _open_review(self, jid: str, created_at: float, reason: str, now: float, *,
                     replaces: str | None, ever: bool) -> None:
        self._tx([
            _meta_stmt(IDENTITY_META, {"journal_id": jid, "created_at": created_at}),
            _meta_stmt(REVIEW_META, {"since": now, "reason": reason}),
            ("DELETE FROM sightings", ()),
        ])
        self._write_marker(jid, created_at, curtailed_ever=ever, replaces=replaces)

    # ---------------------------------------------------------------------- review
    def review(self) -> dict | None:
        """The open review ({"since", "reason"}), or None."""
        value = self.get_meta(REVIEW_META)
        return value if isinstance(value, dict) else None

    def sighted(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT miner FROM sightings")}

    def owned_before(self, ts: float) -> set[str]:
        """Machines curtaild owned before ``ts`` (a review's start): known, not unknown."""
        return {r[0] for r in self.db.execute("SELECT miner FROM curtailed WHERE since < ?",
                                              (ts,))}

    def record_sightings(self, seen: Iterable[str], unknown: Iterable[UnknownOwner],
                         now: float | None = None) -> None:
        """First sightings during a review, and the machines of unknown owner among them."""
        now = time.time() if now is None else now
        stmts: list[tuple[str, tuple]] = [
            ("INSERT OR IGNORE INTO sightings (miner, first_seen) VALUES (?, ?)", (key, now))
            for key in seen]
        for u in unknown:
            stmts.append((
                "INSERT INTO unknown_owner (miner, ip, state, power_limit_w, seen_at, resolved,"
                " resolved_at) VALUES (?, ?, ?, ?, ?, NULL, NULL) ON CONFLICT(miner) DO UPDATE"
                " SET ip=excluded.ip, state=excluded.state, power_limit_w=excluded.power_limit_w,"
                " seen_at=excluded.seen_at, resolved=NULL, resolved_at=NULL",
                (u.miner, u.ip, u.state, u.power_limit_w, u.seen_at)))
            stmts.append((
                "INSERT INTO events (ts, miner, ip, kind, action, power_limit_w, reason)"
                " VALUES (?, ?, ?, 'unknown_owner', ?, ?, ?)",
                (now, u.miner, u.ip, u.state, u.power_limit_w,
                 "first seen by a new or lost journal")))
        if stmts:
            self._tx(stmts)

    def unknown_owner(self, *, open_only: bool = True) -> dict[str, UnknownOwner]:
        sql = ("SELECT miner, ip, state, power_limit_w, seen_at, resolved, resolved_at"
               " FROM unknown_owner")
        if open_only:
            sql += " WHERE resolved IS NULL"
        return {r[0]: UnknownOwner(*r) for r in self.db.execute(sql + " ORDER BY seen_at, miner")}

    def resolve_unknown(self, keys: Iterable[str], how: str, now: float | None = None) -> None:
        """Close machines of unknown owner without handing them to curtaild: ``operator``
        (the operator says they are theirs) or ``running`` (seen running at full power)."""
        assert how in ("operator", "running")
        now = time.time() if now is None else now
        stmts: list[tuple[str, tuple]] = []
        for key in keys:
            stmts.append(("UPDATE unknown_owner SET resolved=?, resolved_at=? WHERE miner=?"
                          " AND resolved IS NULL", (how, now, key)))
            stmts.append(("INSERT INTO events (ts, miner, kind, result, reason) VALUES"
                          " (?, ?, 'owner_resolved', ?, ?)",
                          (now, key, how, "left to the operator" if how == "operator"
                           else "seen running at full power")))
        if stmts:
            self._tx(stmts)

    def adopt(self, keys: Iterable[str], now: float | None = None) -> list[UnknownOwner]:
        """Hand machines of unknown owner to curtaild, as if it had curtailed them: one asleep
        as slept (woken when the margin says run), one power-limited as limited (restored to
        nameplate). Ownership dates from the first sighting, so minimum dwell does not start
        over. Returns what was adopted; keys that are not open machines of unknown owner are
        skipped (the command line validates them first)."""
        now = time.time() if now is None else now
        open_ = self.unknown_owner()
        done: list[UnknownOwner] = []
        stmts: list[tuple[str, tuple]] = []
        for key in keys:
            u = open_.get(key)
            if u is None:
                continue
            action = "sleep" if u.state == "sleeping" else "limit"
            stmts.append((
                "INSERT INTO curtailed (miner, ip, action, power_limit_w, restore_power_limit_w,"
                " since, releasing, reason) VALUES (?, ?, ?, ?, NULL, ?, 0, ?)"
                " ON CONFLICT(miner) DO UPDATE SET restore_power_limit_w=NULL, releasing=0,"
                " reason=excluded.reason",
                (u.miner, u.ip, action, u.power_limit_w, u.seen_at,
                 "adopted: handed to curtaild by the operator (owner unknown)")))
            stmts.append(("UPDATE unknown_owner SET resolved='adopted', resolved_at=?"
                          " WHERE miner=?", (now, key)))
            stmts.append(("INSERT INTO events (ts, miner, ip, kind, action, power_limit_w,"
                          " reason) VALUES (?, ?, ?, 'adopted', ?, ?, ?)",
                          (now, u.miner, u.ip, action, u.power_limit_w,
                           "handed to curtaild by the operator")))
            done.append(u)
        if stmts:
            self._tx(stmts)
        return done

    def end_review(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._tx([("DELETE FROM meta WHERE key=?", (REVIEW_META,)),
                  ("INSERT INTO events (ts, miner, kind, reason) VALUES (?, '*',"
                   " 'review_done', ?)", (now, "every machine seen; none of unknown owner"))])


#: Columns added to a table after its first release: (table, column, definition). A journal
#: written by an older curtaild gains them at open (CREATE TABLE IF NOT EXISTS adds none).
_ADDED_COLUMNS = (
    ("expectations", "state", "TEXT NOT NULL DEFAULT 'sent'"),
    ("expectations", "acked_at", "REAL"),
    ("expectations", "tier", "INTEGER NOT NULL DEFAULT 0"),
    ("events", "term", "INTEGER"),
)


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring an older journal's tables up to SCHEMA (its rows keep their values)."""
    have: dict[str, set[str]] = {}
    for table, column, definition in _ADDED_COLUMNS:
        if table not in have:
            have[table] = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        if column not in have[table]:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
            have[table].add(column)


def _meta_stmt(key: str, value: object) -> tuple[str, tuple]:
    return ("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE"
            " SET value=excluded.value", (key, json.dumps(value)))


def _history_words(marker: dict) -> str:
    created = marker.get("created_at")
    when = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
            if isinstance(created, (int, float)) else "at an unknown time")
    what = ("which had curtailed machines" if marker.get("curtailed_ever")
            else "which had curtailed none")
    return f"created {when}, {what}"
