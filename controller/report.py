"""Human and JSON views of one tick, shared by `plan`, `status` and the daemon's status file."""

from __future__ import annotations

import time
from typing import Any

from curtaild.controller.journal import Journal
from curtaild.controller.loop import TickResult
from curtaild.controller.recovery import status_json
from curtaild.core import economics
from curtaild.core.snapshot import MarketSnapshot, MinerReading


def _r(value: float | None, nd: int = 4) -> float | None:
    return None if value is None else round(value, nd)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def market_json(result: TickResult) -> dict[str, Any] | None:
    m = result.market
    if m is None:
        return None
    return {
        "hashprice_usd_per_th_day": m.hashprice_usd_per_th_day,
        "hashprice_source": m.hashprice_source,
        "hashprice_age_s": round(m.hashprice_age_s, 1),
        "tariff_usd_per_kwh": m.tariff_usd_per_kwh,
        "tariff_source": m.tariff_source,
        "tariff_age_s": round(m.tariff_age_s, 1),
        "pool_fee": m.pool_fee,
        **({"network": m.extra["network"]} if m.extra.get("network") else {}),
        **_market_detail(m),
    }


def _market_detail(m: MarketSnapshot) -> dict[str, Any]:
    """Per-source detail, the cross-check and the demand-window state (controller/market.py)."""
    hp = m.extra.get("hashprice") or {}
    tr = m.extra.get("tariff") or {}
    out: dict[str, Any] = {}
    if hp:
        out.update({
            "hashprice_sources": hp.get("sources", []),
            "hashprice_combine": hp.get("combine"),
            "hashprice_disagreement": hp.get("disagreement"),
            "hashprice_disagreement_exceeded": hp.get("disagreement_exceeded", False),
            "hashprice_error": hp.get("error"),
        })
    if tr:
        out.update({
            "tariff_energy_usd_per_kwh": tr.get("energy_usd_per_kwh"),
            "tariff_adders_usd_per_kwh": tr.get("adders_usd_per_kwh"),
            "tariff_in_demand_window": tr.get("in_demand_window", False),
            "tariff_demand_window": tr.get("demand_window"),
            "tariff_demand_windows_ahead": tr.get("demand_windows_ahead", []),
            "tariff_detail": tr.get("detail", {}),
            "tariff_error": tr.get("error"),
        })
    out["tariff_forecast"] = [[round(t, 1), p] for t, p in m.tariff_forecast]
    return out


def _current_margin(m: MinerReading, result: TickResult) -> float | None:
    mk = result.market
    if mk is None or m.state == "unreachable":
        return None
    return economics.margin_usd_per_day(
        hashrate_ths=m.hashrate_ths, power_w=m.power_w,
        hashprice_usd_per_th_day=mk.hashprice_usd_per_th_day,
        tariff_usd_per_kwh=mk.tariff_usd_per_kwh, pool_fee=mk.pool_fee)


def miner_json(m: MinerReading, result: TickResult) -> dict[str, Any]:
    d = result.desired.get(m.key)
    eff = result.effective.get(m.key)
    cmd = next((c for c in result.commands if c.key == m.key), None)
    return {
        "key": m.key,
        "ip": m.ip,
        "make": m.make,
        "model": m.model,
        "firmware": m.firmware,
        "state": m.state,
        "hashrate_ths": _r(m.hashrate_ths),
        "power_w": _r(m.power_w, 1),
        "power_source": m.power_source,
        "power_limit_w": m.power_limit_w,
        "temp_c": m.temp_c,
        "margin_usd_per_day": _r(d.run_margin_usd_per_day if d else None),
        "current_margin_usd_per_day": _r(_current_margin(m, result)),
        "desired": d.action if d else None,
        "desired_power_limit_w": _r(d.power_limit_w, 1) if d else None,
        "desired_margin_usd_per_day": _r(d.margin_usd_per_day) if d else None,
        "priority": d.priority if d else None,  # normal | forced | emergency
        "reason": d.reason if d else (m.error or result.held.get(m.key, "no decision")),
        "effective": eff.action if eff else None,
        "command": (
            {"action": cmd.action, "power_limit_w": cmd.power_limit_w, "reason": cmd.reason}
            if cmd else None
        ),
        "held": result.held.get(m.key),
        "outcome": result.outcomes.get(m.key),
        # pending | transitioning | confirmed | failed | lying (core/snapshot.py); None:
        # no command outstanding
        "command_state": m.command_state,
        "error": m.error,
        "age_s": round(max(0.0, time.time() - m.observed_at), 1),
        # container, rack, pdu, outlet, phase from the site map (controller/inventory.py)
        "site": result.site.placements.get(m.key) if result.site is not None else None,
    }


def tick_summary(result: TickResult, journal: Journal | None = None) -> dict[str, Any]:
    states: dict[str, int] = {}
    for m in result.fleet.miners:
        # silent right after our own command: restarting, not an unreachable fault
        seen = "transitioning" if m.command_state == "transitioning" else m.state
        states[seen] = states.get(seen, 0) + 1
    out: dict[str, Any] = {
        "at": result.started_at,
        "duration_s": round(result.duration_s, 3),
        "dry_run": result.dry_run,
        "market": market_json(result),
        "fleet": {
            "miners": len(result.fleet.miners),
            "states": states,
            "power_w": round(sum(m.power_w for m in result.fleet.miners), 1),
            "hashrate_ths": round(sum(m.hashrate_ths for m in result.fleet.miners), 3),
            "command_states": result.command_states(),
        },
        "miners": [miner_json(m, result) for m in result.fleet.miners],
        "commands": [
            {"key": c.key, "ip": c.ip, "action": c.action, "power_limit_w": c.power_limit_w,
             "reason": c.reason, "outcome": result.outcomes.get(c.key)}
            for c in result.commands
        ],
    }
    if result.site is not None:
        from curtaild.controller.site_report import site_json

        out["site"] = site_json(result.site)
    if journal is not None:
        out["curtailed"] = sorted(journal.curtailed())
        out["recent_events"] = journal.events(limit=20)
        out.update(status_json(journal))  # journal_review, unknown_owner (a lost journal)
        unknown = {u["key"] for u in out["unknown_owner"]}
        for row in out["miners"]:
            if row["key"] in unknown:
                row["reason"] = ("unknown owner (new or lost journal): never woken until "
                                 "`curtaild adopt`")
    return out


def plan_table(result: TickResult) -> str:
    """The human form of `plan`: one line per miner, worst margin first."""
    mk = result.market
    lines = []
    if mk is None:
        lines.append("market: no inputs")
    else:
        lines.append(
            f"hash price {mk.hashprice_usd_per_th_day:.4f} USD/TH/day ({mk.hashprice_source}, "
            f"{mk.hashprice_age_s:.0f}s old)  tariff {mk.tariff_usd_per_kwh:.4f} USD/kWh "
            f"({mk.tariff_source})  pool fee {mk.pool_fee:.1%}")
        detail = _market_detail(mk)
        if detail.get("tariff_in_demand_window"):
            lines.append(f"DEMAND WINDOW in force: {detail.get('tariff_demand_window')}")
        if detail.get("hashprice_disagreement_exceeded"):
            lines.append(f"hash price sources disagree by "
                         f"{100 * (detail.get('hashprice_disagreement') or 0):.1f}%")
    header = (f"{'IP':<15} {'MODEL':<22} {'STATE':<11} {'TH/s':>7} {'W':>6} {'SRC':<11} "
              f"{'MARGIN/d':>9} {'WANT':<6} {'LIMIT W':>7}  REASON / GUARD")
    lines += [header, "-" * len(header)]
    rows = [miner_json(m, result) for m in result.fleet.miners]
    rows.sort(key=lambda r: (r["margin_usd_per_day"] is None, r["margin_usd_per_day"] or 0.0))
    for r in rows:
        margin = r["margin_usd_per_day"]
        note = r["reason"]
        if r["priority"] not in (None, "normal"):
            note = f"[{r['priority']}] {note}"
        if r["command"]:
            note += f"  -> would send {r['command']['action']}"
        elif r["held"]:
            note += f"  [held: {r['held']}]"
        lines.append(
            f"{r['ip']:<15} {r['model'][:22]:<22} {r['state']:<11} {r['hashrate_ths']:>7.1f} "
            f"{r['power_w']:>6.0f} {r['power_source']:<11} "
            f"{_num(margin, '+.2f'):>9} {r['desired'] or '-':<6} "
            f"{_num(r['desired_power_limit_w'], '.0f'):>7}"
            f"  {note}")
    fleet_w = sum(m.power_w for m in result.fleet.miners)
    if result.site is not None:
        from curtaild.controller.site_report import site_lines

        lines += site_lines(result.site)
    lines.append(f"{len(rows)} miners, {fleet_w / 1000:.1f} kW, {len(result.commands)} commands "
                 "would be sent")
    return "\n".join(lines)
