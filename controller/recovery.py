"""Recovery from a lost journal: machines of unknown owner, reported, never woken alone.

The journal is how curtaild tells a machine *it* slept (woken when the margin says run) from
one an operator slept (never woken). When the journal is lost -- deleted, truncated to 0 bytes
(a valid empty database), a ``state_dir`` that moved -- that knowledge is gone, and the guards
would take every machine curtaild had slept for an operator's: stranded, silently, for ever.

So a new or lost journal (controller/journal.py, ``Journal.check_identity``) opens a *review*.
Each regular tick records the first sighting of every reachable machine; one first seen asleep
or power-limited below its nameplate, and not owned by curtaild before the review began, is
*of unknown owner*: logged (one line per machine), counted (``curtaild_unknown_owner_miners``,
alert ``CurtaildUnknownOwnerMiners``), listed by ``curtaild status``, and never woken or
restored to full power -- the guards do neither to a machine curtaild does not own. The
operator decides, per machine or for all: ``curtaild adopt`` hands it to curtaild (journaled
as if curtaild had curtailed it, so the next tick wakes it if the margin says run),
``curtaild adopt --operator`` leaves it to the operator. One seen running at full power
closes by itself. The review ends once every machine in the fleet has been seen and none of
unknown owner is left open.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from curtaild.controller.guards import limit_tolerance_w
from curtaild.controller.journal import Identity, Journal, UnknownOwner
from curtaild.core.snapshot import FleetSnapshot, MinerReading

log = logging.getLogger("curtaild.recovery")


def curtailment_seen(r: MinerReading) -> str | None:
    """``sleeping`` or ``limited`` when the reading shows a curtailment someone made (a power
    limit below nameplate beyond the guards' tolerance), else None."""
    if r.state == "sleeping":
        return "sleeping"
    plate = r.nameplate_power_w
    if (r.state == "mining" and r.power_limit_w is not None and plate is not None
            and r.power_limit_w < plate - limit_tolerance_w(plate)):
        return "limited"
    return None


@dataclass
class ReviewResult:
    new_unknown: list[UnknownOwner] = field(default_factory=list)
    running: list[str] = field(default_factory=list)  # closed: seen running at full power
    finished: bool = False


def review_tick(journal: Journal, fleet: FleetSnapshot, now: float) -> ReviewResult:
    """Bookkeeping after a regular tick (an observation, never a fast tick's prediction)."""
    out = ReviewResult()
    by_key = fleet.by_key()
    open_ = journal.unknown_owner()
    out.running = [k for k in open_ if (r := by_key.get(k)) is not None
                   and r.state == "mining" and curtailment_seen(r) is None]
    if out.running:
        journal.resolve_unknown(out.running, "running", now)
    review = journal.review()
    if review is None:
        return out
    sighted = journal.sighted()
    owned = journal.owned_before(float(review.get("since", now)))
    seen: list[str] = []
    for r in fleet.miners:
        if r.state == "unreachable" or r.key in sighted:
            continue
        seen.append(r.key)
        kind = curtailment_seen(r)
        if kind is not None and r.key not in owned:
            out.new_unknown.append(UnknownOwner(r.key, r.ip, kind, r.power_limit_w, now))
    journal.record_sightings(seen, out.new_unknown, now)
    everyone = bool(fleet.miners) and all(r.key in sighted or r.key in seen
                                          for r in fleet.miners)
    if everyone and not journal.unknown_owner():
        journal.end_review(now)
        out.finished = True
    return out


def describe(u: UnknownOwner) -> str:
    if u.state == "sleeping":
        return "asleep"
    limit = f" at {u.power_limit_w:.0f} W" if u.power_limit_w is not None else ""
    return f"power-limited{limit}"


def unknown_line(u: UnknownOwner, config_path: str) -> str:
    """The log line for one machine of unknown owner: what, why it matters, what to type."""
    who = u.ip or u.miner
    keep = "will not wake it" if u.state == "sleeping" else "will not restore its full power"
    return (f"unknown owner: {who} ({u.miner}) found {describe(u)}, and the journal cannot say "
            f"whether curtaild or an operator did it; curtaild {keep}. "
            f"`curtaild --config {config_path} adopt {who}` hands it to curtaild (woken when "
            f"the margin says run), `curtaild --config {config_path} adopt --operator {who}` "
            "leaves it to the operator")


def start_lines(identity: Identity, journal: Journal, config_path: str) -> list[tuple[int, str]]:
    """What the daemon logs at start about its journal: (level, line) pairs."""
    lines: list[tuple[int, str]] = []
    review = journal.review()
    if identity.status == "lost":
        lines.append((logging.ERROR, f"journal lost: {identity.reason}. Recovery mode: every "
                      "machine found asleep or power-limited is reported as of unknown owner "
                      "and never woken by curtaild until `curtaild adopt` (README: \"A lost "
                      "journal\")"))
    elif identity.status == "new":
        lines.append((logging.WARNING, f"journal: {identity.reason}. Until every machine has "
                      "been seen, one found asleep or power-limited is reported as of unknown "
                      "owner and never woken by curtaild until `curtaild adopt`"))
    elif identity.status in ("marker_restored", "upgraded"):
        lines.append((logging.WARNING if identity.status == "marker_restored" else logging.INFO,
                      f"journal: {identity.reason}"))
    elif review is not None:
        lines.append((logging.WARNING, f"journal review still open since a start that found: "
                      f"{review.get('reason')}"))
    level = logging.ERROR if identity.status == "lost" else logging.WARNING
    for u in journal.unknown_owner().values():
        lines.append((level, unknown_line(u, config_path)))
    return lines


def status_json(journal: Journal) -> dict:
    """The ``journal_review`` and ``unknown_owner`` fields of status.json."""
    return {
        "journal_review": journal.review(),
        "unknown_owner": [
            {"key": u.miner, "ip": u.ip, "state": u.state, "power_limit_w": u.power_limit_w,
             "seen_at": u.seen_at}
            for u in journal.unknown_owner().values()],
    }
