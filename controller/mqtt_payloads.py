"""What the MQTT bridge publishes, built from one tick's immutable TickResult (pure).

Kept apart from the connection code so the payloads can be read and tested without a
broker. Every payload is compact JSON with times as ISO 8601 UTC and base units in names.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from curtaild.controller.loop import TickResult
from curtaild.core.snapshot import MinerReading

_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


def miner_topic_id(m: MinerReading) -> str:
    """The miner's id for ``<prefix>/miners/<id>``: its key (MAC, else serial, else -- only
    when the firmware reports neither -- the IP), with characters that MQTT topics or shells
    dislike replaced by ``_``. Overrides name a miner by this id or by its key."""
    return _UNSAFE.sub("_", m.key.strip())[:128] or "unknown"


def site_mode(result: TickResult, directives_view: dict, stale_after_s: float | None) -> str:
    """``paused`` > ``event`` > ``stale`` > ``normal``: what governs the site right now."""
    if directives_view.get("automation_paused"):
        return "paused"
    if result.directives.power_cap_w is not None:
        return "event"
    mk = result.market
    if mk is None:
        return "stale"
    if stale_after_s is not None and max(mk.hashprice_age_s, mk.tariff_age_s) > stale_after_s:
        return "stale"
    return "normal"


def state_payload(result: TickResult, directives_view: dict, *, stale_after_s: float | None,
                  curtailed: int) -> dict[str, Any]:
    states = {"mining": 0, "sleeping": 0, "unreachable": 0}
    for m in result.fleet.miners:
        # silent right after our own command: restarting, not an unreachable fault
        seen = "transitioning" if m.command_state == "transitioning" else m.state
        states[seen] = states.get(seen, 0) + 1
    mk = result.market
    return {
        "at": iso(result.started_at + result.duration_s),
        # when the fleet figures below were read: a fast tick (an inbound command) decides on
        # the previous observation, so "at" can be newer than the readings
        "observed_at": iso(result.fleet.taken_at),
        "mode": site_mode(result, directives_view, stale_after_s),
        "power_target_w": result.directives.power_cap_w,
        "measured_power_w": round(sum(m.power_w for m in result.fleet.miners), 1),
        "hashrate_ths": round(sum(m.hashrate_ths for m in result.fleet.miners), 3),
        **directives_view,
        "market": None if mk is None else {
            "hashprice_usd_per_th_day": mk.hashprice_usd_per_th_day,
            "hashprice_source": mk.hashprice_source,
            "hashprice_age_s": round(mk.hashprice_age_s, 1),
            "tariff_usd_per_kwh": mk.tariff_usd_per_kwh,
            "tariff_source": mk.tariff_source,
            "tariff_age_s": round(mk.tariff_age_s, 1),
            "pool_fee": mk.pool_fee,
        },
        "miners": len(result.fleet.miners),
        "states": states,
        # where curtaild's last commands stand: pending (acknowledged, not yet in effect),
        # transitioning (pending and silent: restarting), confirmed, failed, lying (flagged)
        "command_states": result.command_states(),
        "curtailed_by_curtaild": curtailed,
        "dry_run": result.dry_run,
    }


#: Commands listed in one decision record at most (the rest are counted): a demand-response
#: event on a large site sends thousands in one tick, and a broker refuses a packet over its
#: max_packet_size (256 KiB in deploy/mosquitto/mosquitto.conf) by dropping the connection.
MAX_DECISION_COMMANDS = 200


def reason_category(reason: str) -> str:
    """A held reason without its per-machine numbers ("ramp limit: needs 3210 W ..." ->
    "ramp limit"), so counts by reason stay a handful of keys on any fleet size."""
    return reason.split(":", 1)[0].strip()[:80] or "unspecified"


def decisions_payload(result: TickResult,
                      max_commands: int = MAX_DECISION_COMMANDS) -> dict[str, Any]:
    held: dict[str, int] = {}
    for reason in result.held.values():
        cat = reason_category(reason)
        held[cat] = held.get(cat, 0) + 1
    desired: dict[str, int] = {}
    for d in result.desired.values():
        desired[d.action] = desired.get(d.action, 0) + 1
    by_key = result.fleet.by_key()
    return {
        "at": iso(result.started_at),
        "duration_s": round(result.duration_s, 3),
        "dry_run": result.dry_run,
        "power_cap_w": result.directives.power_cap_w,
        "event_id": result.directives.power_cap_event_id,
        "desired": desired,
        "commands": [
            {"miner": miner_topic_id(by_key[c.key]) if c.key in by_key else c.key,
             "action": c.action, "power_limit_w": c.power_limit_w, "reason": c.reason,
             "delta_power_w": round(c.delta_power_w, 1), "outcome": result.outcomes.get(c.key)}
            for c in result.commands[:max_commands]],
        "commands_total": len(result.commands),
        "commands_truncated": len(result.commands) > max_commands,
        "held": len(result.held),
        "held_by_reason": held,
        # measured site power and outlet switching (issue 18); absent without PDUs or meter
        **({"site_power_w": result.site.site_power_w,
            "site_power_source": result.site.site_power_source,
            "outlets": [{"pdu": a.pdu, "outlet": a.outlet, "on": a.on, "reason": a.reason,
                         "outcome": result.site.outcomes.get((a.pdu, a.outlet))}
                        for a in (result.site.plan.actions if result.site.plan else [])]}
           if result.site is not None else {}),
    }


def miner_payload(m: MinerReading, result: TickResult) -> dict[str, Any]:
    """Per-miner state; no timestamp and coarse rounding, so it changes only when the miner
    does (it is published retained, on change)."""
    d = result.desired.get(m.key)
    return {
        "id": miner_topic_id(m),
        "mac": m.mac,
        "serial": m.serial,
        "ip": m.ip,
        "model": m.model,
        "firmware": m.firmware,
        "state": m.state,
        "power_w": round(m.power_w, -1),
        "power_source": m.power_source,
        "power_limit_w": m.power_limit_w,
        "hashrate_ths": round(m.hashrate_ths, 0),
        "desired": d.action if d else None,
        "held": result.held.get(m.key),
        "command_state": m.command_state,
        "error": m.error,
        # container, rack, pdu, outlet, phase from the site map (issue 18); absent without one
        **({"site": result.site.placements[m.key]} if result.site is not None
           and m.key in result.site.placements else {}),
    }
