"""The backtest's in-memory stand-in for the SQLite journal and the loop's verify step.

The guards decide from what the journal remembers (ownership, last change, the command awaiting
verification), so a backtest that forgot it would cycle machines the daemon never would. This
class keeps the same facts with the same rules as ``controller/journal.py`` (``record_intent``,
``mark_verified``, ``mark_mismatch``, ``memory``) and ``controller/loop.py`` (``_verify``,
``_with_recommands``), without SQLite: a week of one-minute ticks writes nothing to disk.
"""

from __future__ import annotations

from dataclasses import dataclass

from curtaild.controller.guards import MinerMemory, attach_limit_changes, is_limit_change
from curtaild.controller.loop import matches_expectation
from curtaild.core.snapshot import Command, FleetSnapshot


@dataclass(slots=True)
class _Owned:
    action: str  # sleep | limit
    power_limit_w: float | None
    restore_power_limit_w: float | None
    since: float
    releasing: bool = False


@dataclass(slots=True)
class _Expect:
    action: str
    power_limit_w: float | None
    since: float
    last_change_at: float
    failures: int = 0
    flagged: bool = False


class SimJournal:
    def __init__(self) -> None:
        self.curtailed: dict[str, _Owned] = {}
        self.expect: dict[str, _Expect] = {}
        self.changed_at: dict[str, float] = {}  # last command sent (every one succeeds here)
        self.limit_changes: dict[str, list[float]] = {}  # as Journal's limit_changes table

    def record_intent(self, cmd: Command, observed_limit_w: float | None, now: float) -> None:
        self.changed_at[cmd.key] = now
        e0 = self.expect.get(cmd.key)
        if is_limit_change(cmd, observed_limit_w,
                           None if e0 is None else (e0.action, e0.power_limit_w)):
            self.limit_changes.setdefault(cmd.key, []).append(now)
        if cmd.action in ("sleep", "limit"):
            row = self.curtailed.get(cmd.key)
            if row is None:
                self.curtailed[cmd.key] = _Owned(cmd.action, cmd.power_limit_w,
                                                 observed_limit_w, now)
            else:  # keep the first curtailment's restore limit and since
                row.action, row.power_limit_w, row.releasing = (cmd.action, cmd.power_limit_w,
                                                                False)
        elif cmd.key in self.curtailed:
            self.curtailed[cmd.key].releasing = True
        e = self.expect.get(cmd.key)
        if e is None:
            self.expect[cmd.key] = _Expect(cmd.action, cmd.power_limit_w, now, now)
        else:
            if e.action != cmd.action:
                e.failures, e.last_change_at = 0, now
            elif e.power_limit_w != cmd.power_limit_w:  # a new limit is a change (as Journal)
                e.last_change_at = now
            e.action, e.power_limit_w, e.since = cmd.action, cmd.power_limit_w, now

    def memory(self, *, dwell_s: float = 0.0, now: float = 0.0,
               limit_window_s: float = 0.0) -> dict[str, MinerMemory]:
        """As ``Journal.memory``: machines no longer tracked but changed within ``dwell_s``
        are remembered for minimum dwell."""
        out: dict[str, MinerMemory] = {}
        for key, ts in self.changed_at.items():
            if dwell_s > 0 and ts >= now - dwell_s and key not in self.curtailed \
                    and key not in self.expect:
                out[key] = MinerMemory(key=key, curtailed_by_us=False, curtailed_action=None,
                                       restore_power_limit_w=None, last_change_at=ts,
                                       flagged=False)
        for key in set(self.curtailed) | set(self.expect):
            c, e = self.curtailed.get(key), self.expect.get(key)
            out[key] = MinerMemory(
                key=key, curtailed_by_us=c is not None,
                curtailed_action=c.action if c else None,  # type: ignore[arg-type]
                restore_power_limit_w=c.restore_power_limit_w if c else None,
                last_change_at=e.last_change_at if e else (c.since if c else None),
                flagged=bool(e and e.flagged),
                expected_action=e.action if e else None,  # type: ignore[arg-type]
                expected_power_limit_w=e.power_limit_w if e else None)
        if limit_window_s > 0:
            since = now - limit_window_s
            recent = {}
            for key, times in self.limit_changes.items():
                while times and times[0] < since:
                    times.pop(0)
                if times:
                    recent[key] = tuple(times)
            attach_limit_changes(out, recent)
        return out

    def verify(self, fleet: FleetSnapshot, now: float, grace_s: float,
               flag_after: int) -> dict[str, str]:
        """The loop's verify step: verified / mismatch / flagged per outstanding command."""
        by_key = fleet.by_key()
        out: dict[str, str] = {}
        for key, e in list(self.expect.items()):
            r = by_key.get(key)
            if r is None or r.state == "unreachable":
                continue
            if matches_expectation(e.action, e.power_limit_w, r):
                row = self.curtailed.get(key)
                if e.failures or e.flagged or (e.action == "run"
                                               and (row is None or row.releasing)):
                    e.failures, e.flagged, e.since = 0, False, now
                    if e.action == "run":
                        if row is not None and row.releasing:
                            del self.curtailed[key]
                        del self.expect[key]
                    out[key] = "verified"
            elif not e.flagged and now - e.since >= grace_s:
                e.failures += 1
                e.flagged = e.failures >= flag_after
                e.since = now
                out[key] = "flagged" if e.flagged else "mismatch"
        for key, row in list(self.curtailed.items()):
            r = by_key.get(key)
            if (row.releasing and r is not None and r.state == "mining" and key not in out
                    and key not in self.expect):
                del self.curtailed[key]
        return out

    def recommands(self, commands: list[Command], fleet: FleetSnapshot,
                   verification: dict[str, str]) -> list[Command]:
        """Re-send the expected state to machines that were not in it after the grace."""
        planned = {c.key for c in commands}
        by_key = fleet.by_key()
        extra = []
        for key, verdict in verification.items():
            e, r = self.expect.get(key), by_key.get(key)
            if verdict != "mismatch" or key in planned or e is None or r is None:
                continue
            extra.append(Command(key=key, ip=r.ip, action=e.action,  # type: ignore[arg-type]
                                 power_limit_w=e.power_limit_w,
                                 reason=f"re-command: not in {e.action} after grace",
                                 delta_power_w=0.0))
        return list(commands) + extra
