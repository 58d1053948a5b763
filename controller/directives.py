"""The directive store: demand-response events, operator overrides and the pause flag.

Pure (no I/O, every method takes ``now``): the MQTT bridge feeds it raw payloads, the
reconcile loop reads ``directives(now)`` each tick, and the daemon writes the rows that
changed (``take_pending()``) to the journal (controller/directive_journal.py), so a restart
keeps active events and overrides. Semantics (docs/mqtt.md):

- An event is ``{"id", "target_power_w", "start"?, "end"?}``. A future ``start`` waits; the
  cap is released at ``end`` (no ``end``: ``start + max_event_duration_s``). Overlapping
  events: the **lowest target wins** (the tightest cap a site agreed to is the one a grid
  operator will measure), ties go to the newest.
- Ids are deduplicated per command topic: a repeated id changes nothing and is answered again
  with the original status, the reason prefixed ``duplicate:`` (an EMS that missed the first
  answer gets it; nothing is applied twice). Once an event is over (ended, cancelled, released
  by the watchdog) its remembered answer says so (``expired``), so a late retry is never told
  "accepted ... capped" about a cap that no longer exists. A repeated event id also counts as
  a heartbeat.
- Watchdog (``event_heartbeat_s``): silence longer than that during an event is a signal loss;
  ``hold`` keeps the event to its end, ``release`` ends it at the loss, ``end_after_s`` ends it
  that long after the loss. Any valid command or a heartbeat counts as signal.
- Everything it holds is capped (``max_active_events``, ``max_overrides``,
  ``max_remembered_ids``) and each command changes a bounded number of rows, so a flood of
  commands costs bounded memory and bounded journal writes per command.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from curtaild.core.snapshot import Directives, Override

Status = Literal["accepted", "rejected", "expired"]
Kind = Literal["curtail", "curtail/cancel", "override", "automation", "heartbeat"]
KINDS: tuple[str, ...] = ("curtail", "curtail/cancel", "override", "automation", "heartbeat")
#: what a sharded site's ``<prefix>/site/<site_id>/cmd/`` takes (controller/site_demand.py)
SITE_KINDS: tuple[str, ...] = ("curtail", "curtail/cancel")

_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces
_MINER = re.compile(r"^[\x21-\x7e]{1,128}$")
SEEN_TTL_S = 7 * 86400.0
#: The times a command may name. Anything outside is a typo or a probe; far outside (year 1,
#: year 9999 with a negative offset) Python cannot even convert it to a timestamp.
EARLIEST_TS = 946_684_800.0  # 2000-01-01T00:00:00Z
LATEST_TS = 7_258_118_400.0  # 2200-01-01T00:00:00Z
#: journal tables of the pending rows (controller/directive_journal.py)
EVENT, OVERRIDE, SEEN, PAUSE = "event", "override", "seen", "pause"


@dataclass(frozen=True, slots=True)
class Limits:
    """What the store accepts (from ``[mqtt]``; defaults match MqttConfig's)."""

    max_payload_bytes: int = 4096
    min_target_power_w: float = 1.0
    max_target_power_w: float = 1e9
    max_event_duration_s: float = 86400.0
    max_event_lead_s: float = 7 * 86400.0
    max_override_s: float = 86400.0
    max_active_events: int = 100
    max_overrides: int = 10_000
    max_remembered_ids: int = 5000
    event_heartbeat_s: float | None = None
    on_signal_loss: str = "hold"
    signal_loss_end_after_s: float | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> Limits:
        return cls(**{f: getattr(cfg, f) for f in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    target_power_w: float
    start: float  # unix s
    end: float  # unix s
    received_at: float


@dataclass(frozen=True, slots=True)
class Response:
    """The answer to one command (``id`` None when the payload had no usable id)."""

    id: str | None
    status: Status
    reason: str
    duplicate: bool = False

    def payload(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "reason": self.reason}


class Invalid(ValueError):
    """A payload that cannot be used; the message is the reason sent back."""


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_time(obj: dict, key: str) -> float | None:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > 64:
        raise Invalid(f"{key}: expected an ISO 8601 time with offset, e.g. "
                      "'2025-08-20T16:30:00Z'")
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise Invalid(f"{key}: {v!r} is not an ISO 8601 time") from None
    if dt.tzinfo is None:
        raise Invalid(f"{key}: {v!r} has no UTC offset (add 'Z' or '+hh:mm')")
    try:
        ts = dt.timestamp()
    except (OverflowError, ValueError, OSError):  # year 1 at +01:00 is year 0
        ts = math.nan
    if not EARLIEST_TS <= ts < LATEST_TS:
        raise Invalid(f"{key}: {v!r} is out of range (2000-01-01 to 2200-01-01 UTC)")
    return ts


def _number(obj: dict, key: str) -> float | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise Invalid(f"{key}: expected a finite number, got {json.dumps(v)[:40]}")
    try:
        f = float(v)
    except OverflowError:  # an integer of hundreds of digits: JSON allows it, floats do not
        raise Invalid(f"{key}: a {len(str(abs(v)))}-digit integer is out of range") from None
    if not math.isfinite(f):
        raise Invalid(f"{key}: expected a finite number, got {json.dumps(v)[:40]}")
    return f


def _decode(payload: bytes, limits: Limits) -> dict:
    """Bytes -> a JSON object, within the size limit."""
    if len(payload) > limits.max_payload_bytes:
        raise Invalid(f"payload of {len(payload)} bytes exceeds max_payload_bytes "
                      f"({limits.max_payload_bytes})")
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise Invalid("payload is not UTF-8 JSON") from None
    except ValueError:  # an integer over Python's 4,300-digit conversion limit
        raise Invalid("payload has a number with too many digits") from None
    if not isinstance(obj, dict):
        raise Invalid("payload must be a JSON object")
    return obj


def _read_id(obj: dict) -> str:
    v = obj.get("id")
    if not isinstance(v, str) or not _ID.match(v):
        raise Invalid("id: required, 1-128 printable ASCII characters without spaces")
    return v


def _only(obj: dict, allowed: set[str]) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise Invalid(f"unknown field {extra[0]!r}; allowed: {', '.join(sorted(allowed))}")


def seen_key(kind: str, ident: str) -> str:
    """The journal key of a remembered id (neither part contains a space)."""
    return f"{kind} {ident}"


@dataclass
class DirectiveStore:
    """Active events, overrides, pause and remembered ids; see the module docstring."""

    limits: Limits = field(default_factory=Limits)
    events: dict[str, Event] = field(default_factory=dict)
    overrides: dict[str, Override] = field(default_factory=dict)
    paused_until: float | None = None
    paused_by: str | None = None
    last_heard: float = 0.0
    #: (kind, id) -> (status, reason, at), oldest first (the order ids are dropped in)
    seen: dict[tuple[str, str], tuple[str, str, float]] = field(default_factory=dict)
    #: rows changed since the last save: (table, key) -> JSON-able row, None = deleted. Each
    #: command adds a bounded number; the daemon writes them (take_pending) in one transaction.
    pending: dict[tuple[str, str], Any] = field(default_factory=dict)
    #: (event id, why) of events that ended since last read (for logs and the bridge)
    released: list[tuple[str, str]] = field(default_factory=list)
    #: nothing ends before this (events, overrides, pause): housekeep skips the sweep until
    #: then, so a command costs O(1) however many overrides there are. A lower bound: a later
    #: heartbeat only moves watchdog ends later. Swept again when the limits object changes.
    _next_end: float = field(default=-math.inf, init=False, repr=False)
    _swept_with: Limits | None = field(default=None, init=False, repr=False)

    @property
    def dirty(self) -> bool:
        """Something changed that the journal does not have yet."""
        return bool(self.pending)

    # ---------------------------------------------------------------- inbound
    def handle(self, kind: str, payload: bytes, now: float, *, retained: bool = False,
               known_miners: dict[str, str] | None = None) -> Response | None:
        """Validate and apply one command; the Response to publish (None for a heartbeat
        that was accepted: heartbeats are not answered). Never raises on bad input."""
        self.housekeep(now)
        if kind not in KINDS:
            return Response(None, "rejected", f"unknown command topic {kind!r}")
        ident: str | None = None
        try:
            if retained:
                raise Invalid("retained commands are not accepted (publish with retain=false)")
            if kind == "heartbeat":
                if payload.strip():
                    obj = _decode(payload, self.limits)
                    _only(obj, {"id"})
                elif len(payload) > self.limits.max_payload_bytes:
                    raise Invalid("payload too large")
                # Not journaled: after a restart the watchdog clock starts over anyway.
                self.last_heard = now
                return None
            obj = _decode(payload, self.limits)
            ident = _read_id(obj)
            if kind == "curtail/cancel":
                return self._heard(now, self._cancel(obj, ident, now))
            prior = self.seen.get((kind, ident))
            if prior is None and kind == "curtail" and ident in self.events:
                e = self.events[ident]  # its remembered id was dropped: the event still stands
                prior = ("accepted", self._capped(e, now), e.received_at)
            if prior is not None:
                if kind == "curtail":
                    self.last_heard = now
                status, reason, _at = prior
                return Response(ident, status, f"duplicate: {reason}",  # type: ignore[arg-type]
                                duplicate=True)
            if kind == "curtail":
                resp = self._curtail(obj, ident, now)
            elif kind == "override":
                resp = self._override(obj, ident, now, known_miners)
            else:
                resp = self._automation(obj, ident, now)
        except Invalid as exc:
            return Response(ident, "rejected", str(exc))
        self._remember(kind, resp, now)
        return self._heard(now, resp)

    def shed(self, kind: str, payload: bytes, now: float, why: str, *,
             retained: bool = False) -> Response | None:
        """Answer a command without applying it (the bridge is overloaded): ``rejected`` with
        a reason starting ``busy:`` and the command's id when one can be read, so the sender
        knows to send it again. The id is not remembered. Heartbeats are still applied: they
        cost nothing to keep, and dropping them could fake a signal loss."""
        if kind == "heartbeat" or kind not in KINDS:
            return self.handle(kind, payload, now, retained=retained)
        ident: str | None = None
        try:
            ident = _read_id(_decode(payload, self.limits))
        except Invalid:
            pass
        return Response(ident, "rejected", f"busy: {why}; not applied, send it again later")

    def _heard(self, now: float, resp: Response) -> Response:
        if resp.status != "rejected":
            self.last_heard = now
        return resp

    def _mark(self, table: str, key: str, row: Any) -> None:
        self.pending[(table, key)] = row

    def _mark_seen(self, key: tuple[str, str]) -> None:
        entry = self.seen.get(key)
        self._mark(SEEN, seen_key(*key), None if entry is None else list(entry))

    def _remember(self, kind: str, resp: Response, now: float) -> None:
        """Remember applied ids (a rejected id may be corrected and sent again)."""
        if resp.id is None or resp.status == "rejected":
            return
        key = (kind, resp.id)
        self.seen[key] = (resp.status, resp.reason, now)
        self._mark_seen(key)
        while len(self.seen) > self.limits.max_remembered_ids:
            oldest = next(iter(self.seen))
            del self.seen[oldest]
            self._mark_seen(oldest)

    def _put_event(self, e: Event) -> None:
        self.events[e.id] = e
        self._mark(EVENT, e.id, asdict(e))
        self._next_end = min(self._next_end, e.end)

    def _event_over(self, ident: str, why: str, now: float) -> None:
        """An event left the store: say so in its remembered answer, so a retry of its id is
        answered ``expired`` with what happened rather than the original ``accepted``."""
        self.events.pop(ident, None)
        self._mark(EVENT, ident, None)
        self.released.append((ident, why))
        key = ("curtail", ident)
        if key in self.seen:
            at = self.seen[key][2]
            self.seen[key] = ("expired", f"event {ident} {why} at {_iso(now)}; not applied "
                              "again (a new event needs a new id)", at)
            self._mark_seen(key)

    def _capped(self, e: Event, now: float) -> str:
        when = "now" if e.start <= now else f"from {_iso(e.start)}"
        return f"site power capped at {e.target_power_w:g} W {when} until {_iso(e.end)}"

    def _curtail(self, obj: dict, ident: str, now: float) -> Response:
        _only(obj, {"id", "target_power_w", "start", "end"})
        target = _number(obj, "target_power_w")
        if target is None:
            raise Invalid("target_power_w: required, the site power to stay under, W")
        lim = self.limits
        if target < lim.min_target_power_w:
            raise Invalid(f"target_power_w: {target:g} W is below min_target_power_w "
                          f"({lim.min_target_power_w:g} W), the site's sanity floor: a target "
                          "that small is a unit or encoding error, not a plan")
        if target > lim.max_target_power_w:
            raise Invalid(f"target_power_w: {target:g} W is above max_target_power_w "
                          f"({lim.max_target_power_w:g} W)")
        start = _parse_time(obj, "start")
        end = _parse_time(obj, "end")
        if start is not None and end is not None and end <= start:
            raise Invalid("end must be after start")
        if end is not None and end <= now:
            return Response(ident, "expired", f"end {_iso(end)} is already past")
        start = now if start is None else start
        if start - now > lim.max_event_lead_s:
            raise Invalid(f"start is more than max_event_lead_s ({lim.max_event_lead_s:g} s) "
                          "ahead")
        if end is not None and end - start > lim.max_event_duration_s:
            raise Invalid(f"event lasts {end - start:g} s, more than max_event_duration_s "
                          f"({lim.max_event_duration_s:g})")
        note = ""
        if end is None:
            end = start + lim.max_event_duration_s
            if end <= now:
                return Response(ident, "expired", f"start {_iso(start)} + max_event_duration_s "
                                f"ends at {_iso(end)}, already past")
            note = " (no end given: max_event_duration_s)"
        if len(self.events) >= lim.max_active_events:
            raise Invalid(f"{len(self.events)} events are active or scheduled, the most "
                          f"max_active_events allows; cancel one first")
        e = Event(ident, target, start, end, now)
        self._put_event(e)
        return Response(ident, "accepted", self._capped(e, now) + note)

    def _cancel(self, obj: dict, ident: str, now: float) -> Response:
        _only(obj, {"id"})
        if ident not in self.events:
            prior = self.seen.get(("curtail", ident))
            known = f" ({prior[1].split(';')[0]})" if prior and prior[0] == "expired" else ""
            return Response(ident, "rejected", f"no active or scheduled event {ident!r}{known}")
        self._event_over(ident, "cancelled", now)
        return Response(ident, "accepted", "event cancelled; cap released")

    def _until(self, obj: dict, now: float) -> tuple[float, str]:
        until = _parse_time(obj, "until")
        duration = _number(obj, "duration_s")
        if until is not None and duration is not None:
            raise Invalid("give until or duration_s, not both")
        cap = self.limits.max_override_s
        if duration is not None:
            if not 0 < duration <= cap:
                raise Invalid(f"duration_s: {duration:g} is out of range (0, {cap:g}]")
            until = now + duration
        if until is None:
            return now + cap, " (no until given: max_override_s)"
        if until <= now:
            raise Invalid(f"until {_iso(until)} is already past")
        if until - now > cap:
            raise Invalid(f"until is more than max_override_s ({cap:g} s) ahead")
        return until, ""

    def _override(self, obj: dict, ident: str, now: float,
                  known_miners: dict[str, str] | None) -> Response:
        _only(obj, {"id", "miner", "action", "until", "duration_s"})
        miner = obj.get("miner")
        if not isinstance(miner, str) or not _MINER.match(miner):
            raise Invalid("miner: required, the miner id (MAC or serial, as in "
                          "<prefix>/miners/<id>)")
        action = obj.get("action")
        if action not in ("run", "sleep", "clear"):
            raise Invalid("action: must be 'run', 'sleep' or 'clear'")
        if known_miners is not None:
            miner = known_miners.get(miner, miner)  # topic id -> miner key
        if action == "clear":
            _only(obj, {"id", "miner", "action"})
            if self.overrides.pop(miner, None) is None:
                return Response(ident, "accepted", f"no override on {miner} to clear")
            self._mark(OVERRIDE, miner, None)
            return Response(ident, "accepted", f"override on {miner} cleared")
        if known_miners is not None and miner not in known_miners.values():
            raise Invalid(f"miner: {miner!r} is not in the fleet (ids: MAC or serial)")
        until, note = self._until(obj, now)
        if miner not in self.overrides and len(self.overrides) >= self.limits.max_overrides:
            raise Invalid(f"{len(self.overrides)} overrides are in force, the most "
                          "max_overrides allows; clear one first")
        o = Override(key=miner, action=action, until=until, source=f"mqtt:{ident}",
                     reason=f"mqtt override {ident}")
        self.overrides[miner] = o
        self._mark(OVERRIDE, miner, asdict(o))
        self._next_end = min(self._next_end, until)
        return Response(ident, "accepted", f"{miner} forced to {action} until {_iso(until)}{note}")

    def _set_pause(self, until: float | None, by: str | None) -> None:
        self.paused_until, self.paused_by = until, by
        self._mark(PAUSE, "", None if until is None else {"until": until, "by": by})
        if until is not None:
            self._next_end = min(self._next_end, until)

    def _automation(self, obj: dict, ident: str, now: float) -> Response:
        _only(obj, {"id", "action", "until", "duration_s"})
        action = obj.get("action")
        if action not in ("pause", "resume"):
            raise Invalid("action: must be 'pause' or 'resume'")
        if action == "resume":
            _only(obj, {"id", "action"})
            was = self.paused_until is not None
            if was:
                self._set_pause(None, None)
            return Response(ident, "accepted", "automation resumed" if was else "not paused")
        until, note = self._until(obj, now)
        self._set_pause(until, ident)
        return Response(ident, "accepted", f"automation paused until {_iso(until)}{note}")

    # ---------------------------------------------------------------- outbound
    def signal_lost(self, now: float) -> bool:
        hb = self.limits.event_heartbeat_s
        return hb is not None and bool(self.events) and now - self.last_heard > hb

    def effective_end(self, e: Event) -> float:
        """The event's end, moved earlier by the watchdog after a signal loss."""
        lim = self.limits
        if lim.event_heartbeat_s is None or lim.on_signal_loss == "hold":
            return e.end
        lost_at = self.last_heard + lim.event_heartbeat_s
        if lim.on_signal_loss == "release":
            return min(e.end, lost_at)
        return min(e.end, lost_at + (lim.signal_loss_end_after_s or 0.0))

    def housekeep(self, now: float) -> None:
        """Drop what has ended: events, overrides, the pause, old remembered ids. O(1) per
        call until something is due (``_next_end``); ids are dropped oldest first."""
        if now >= self._next_end or self.limits is not self._swept_with:
            nxt = math.inf
            for e in list(self.events.values()):
                end = self.effective_end(e)
                if end <= now:
                    why = ("ended" if end >= e.end
                           else f"released on signal loss ({self.limits.on_signal_loss})")
                    self._event_over(e.id, why, now)
                else:
                    nxt = min(nxt, end)
            for key, o in list(self.overrides.items()):
                if o.until is not None and o.until <= now:
                    del self.overrides[key]
                    self._mark(OVERRIDE, key, None)
                elif o.until is not None:
                    nxt = min(nxt, o.until)
            if self.paused_until is not None:
                if self.paused_until <= now:
                    self._set_pause(None, None)
                else:
                    nxt = min(nxt, self.paused_until)
            self._next_end, self._swept_with = nxt, self.limits
        while self.seen:
            oldest = next(iter(self.seen))
            if now - self.seen[oldest][2] <= SEEN_TTL_S:
                break
            del self.seen[oldest]
            self._mark_seen(oldest)

    def active_event(self, now: float) -> Event | None:
        live = [e for e in self.events.values() if e.start <= now < self.effective_end(e)]
        if not live:
            return None
        return min(live, key=lambda e: (e.target_power_w, -e.received_at))

    def directives(self, now: float) -> Directives:
        """What is in force now (the Reconciler's ``directives`` hook)."""
        self.housekeep(now)
        e = self.active_event(now)
        return Directives(
            power_cap_w=e.target_power_w if e else None,
            power_cap_event_id=e.id if e else None,
            power_cap_until=self.effective_end(e) if e else None,
            overrides=tuple(sorted(self.overrides.values(), key=lambda o: o.key)),
            automation_paused=self.paused_until is not None,
        )

    def view(self, now: float) -> dict[str, Any]:
        """The directive part of the retained ``<prefix>/state`` message."""
        e = self.active_event(now)
        return {
            "active_event": None if e is None else {
                "id": e.id, "target_power_w": e.target_power_w, "start": _iso(e.start),
                "end": _iso(self.effective_end(e))},
            "scheduled_events": [
                {"id": x.id, "target_power_w": x.target_power_w, "start": _iso(x.start),
                 "end": _iso(x.end)}
                for x in sorted(self.events.values(), key=lambda x: x.start) if x.start > now],
            "signal_lost": self.signal_lost(now),
            "automation_paused": self.paused_until is not None,
            "paused_until": _iso(self.paused_until),
            "overrides": [{"miner": o.key, "action": o.action, "until": _iso(o.until),
                           "source": o.source} for o in sorted(self.overrides.values(),
                                                               key=lambda o: o.key)],
        }

    def take_released(self) -> list[tuple[str, str]]:
        out, self.released = self.released, []
        return out

    # ------------------------------------------------------------- persistence
    def take_pending(self) -> dict[tuple[str, str], Any]:
        """The rows changed since the last call (the caller writes them, or gives them back
        with ``put_back`` when the write failed)."""
        out, self.pending = self.pending, {}
        return out

    def put_back(self, rows: dict[tuple[str, str], Any]) -> None:
        """Rows whose write failed: saved with the next ones (a newer change of a row wins)."""
        self.pending = {**rows, **self.pending}

    def rows(self) -> dict[tuple[str, str], Any]:
        """Every row of the current state, as ``pending`` would hold them (a full save)."""
        out: dict[tuple[str, str], Any] = {(EVENT, e.id): asdict(e) for e in self.events.values()}
        out.update({(OVERRIDE, k): asdict(o) for k, o in self.overrides.items()})
        out.update({(SEEN, seen_key(*k)): list(v) for k, v in self.seen.items()})
        if self.paused_until is not None:
            out[(PAUSE, "")] = {"until": self.paused_until, "by": self.paused_by}
        return out

    def snapshot(self) -> dict[str, Any]:
        """The whole state as one JSON-able object (the format of the journal's former ``meta``
        key ``mqtt_directives``, still read once to migrate it)."""
        return {
            "version": 1,
            "events": [asdict(e) for e in self.events.values()],
            "overrides": [asdict(o) for o in self.overrides.values()],
            "paused_until": self.paused_until,
            "paused_by": self.paused_by,
            "last_heard": self.last_heard,
            "seen": [[k, i, s, r, at] for (k, i), (s, r, at) in self.seen.items()],
        }

    @classmethod
    def restore(cls, data: object, limits: Limits, now: float) -> tuple[DirectiveStore, list[str]]:
        """Rebuild from a snapshot; malformed entries are skipped and reported, never fatal.

        The watchdog clock restarts at ``now``: the EMS gets one full heartbeat period after a
        restart before a signal loss is declared (its messages while we were down are lost).
        Whatever ended meanwhile is dropped, and those deletions are left in ``pending``.
        """
        store = cls(limits=limits, last_heard=now)
        problems: list[str] = []
        if data is None:
            return store, problems
        if not isinstance(data, dict) or data.get("version") != 1:
            return store, ["journal directives: unknown format, ignored"]
        for raw in data.get("events") or []:
            try:
                e = Event(**raw)
                e = replace(e, target_power_w=float(e.target_power_w), start=float(e.start),
                            end=float(e.end), received_at=float(e.received_at))
                store.events[str(e.id)] = e
            except (TypeError, ValueError):
                problems.append(f"journal directives: bad event {str(raw)[:80]}, skipped")
        for raw in data.get("overrides") or []:
            try:
                o = Override(**raw)
                if o.action not in ("run", "sleep"):
                    raise ValueError(o.action)
                store.overrides[o.key] = o
            except (TypeError, ValueError):
                problems.append(f"journal directives: bad override {str(raw)[:80]}, skipped")
        pu = data.get("paused_until")
        if isinstance(pu, int | float):
            store.paused_until = float(pu)
            store.paused_by = data.get("paused_by") if isinstance(data.get("paused_by"),
                                                                   str) else None
        for row in data.get("seen") or []:
            try:
                k, i, s, r, at = row
                store.seen[(str(k), str(i))] = (str(s), str(r), float(at))
            except (TypeError, ValueError):
                problems.append("journal directives: bad remembered id, skipped")
        store.housekeep(now)
        while len(store.seen) > limits.max_remembered_ids:  # the cap was lowered meanwhile
            oldest = next(iter(store.seen))
            del store.seen[oldest]
            store._mark_seen(oldest)
        return store, problems
