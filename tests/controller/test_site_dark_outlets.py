"""Machines behind an outlet curtaild switched off, seen by an instance that never saw them
answer (a restart, a standby's takeover: issue 19 with issue 18). Without I/O: hand-made PDU
readings, a real journal.

The ownership keeps what the plan needs of each machine when its outlet goes off; the new
instance decides on it from that -- asleep at 0 W, its own key, its economics -- and the
restore follows when the margin returns. Without it, nothing would ever want the outlet on.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from curtaild.controller.config import parse_config
from curtaild.controller.journal import Journal
from curtaild.controller.outlet_journal import OutletJournal
from curtaild.controller.site import Site
from curtaild.core.snapshot import Desired, FleetSnapshot, MinerReading
from curtaild.drivers.pdu import OutletReading, PduReading

NOW = 1_700_000_000.0
AXE, OTHER = "127.186.7.1", "127.186.7.2"
MAC = "02:AA:00:00:00:01"


def _site(tmp_path: Path, journal: Journal) -> Site:
    (tmp_path / "ro").write_text("public\n")
    if not (tmp_path / "map.csv").exists():
        (tmp_path / "map.csv").write_text(f"id,rack,pdu,outlet,phase\n{AXE},R1,pdu-a,1,L1\n"
                                          f"{OTHER},R1,pdu-a,2,L1\n")
    cfg = parse_config({
        "fleet": {"hosts": [AXE, OTHER]},
        "hashprice": {"source": "fixed", "usd_per_th_day": 0.05},
        "tariff": {"kind": "flat", "usd_per_kwh": 0.06},
        "policy": {"name": "margin"},
        "controller": {"state_dir": str(tmp_path / "state")},
        "pdu": [{"mib": "apc", "outlets": 4, "version": "v2c", "community_file": "ro",
                 "name": "pdu-a", "address": "127.186.7.50"}],
        "inventory": {"file": "map.csv"},
        "hard_power": {"enabled": True, "racks": ["R1"], "min_off_s": 0}},
        str(tmp_path / "curtaild.toml"))
    return Site(cfg, journal)


def _axe(**kw: object) -> MinerReading:
    base = {"key": MAC, "ip": AXE, "make": "BitAxe", "model": "Gamma", "firmware": "bitaxe",
            "state": "mining", "hashrate_ths": 1.2, "power_w": 17.0,
            "power_source": "firmware", "power_limit_w": None, "temp_c": 60.0,
            "nameplate_hashrate_ths": 1.2, "nameplate_power_w": 17.0, "supports_sleep": False,
            "mac": MAC, "observed_at": NOW}
    return MinerReading(**{**base, **kw})  # type: ignore[arg-type]


def _never_answered(ip: str) -> MinerReading:
    """The driver's reading of an address that has not answered since this start."""
    return MinerReading(key=ip, ip=ip, make="", model="", firmware="", state="unreachable",
                        hashrate_ths=0.0, power_w=0.0, power_source="none",
                        power_limit_w=None, temp_c=None, supports_sleep=False,
                        observed_at=NOW, error="refused")


def _pdu(on1: bool) -> dict[str, PduReading]:
    return {"pdu-a": PduReading("pdu-a", "", "apc", {
        1: OutletReading(1, on1, 0.0 if not on1 else 17.0), 2: OutletReading(2, True, 17.0),
        3: OutletReading(3, True, 0.0), 4: OutletReading(4, True, 0.0)}, taken_at=NOW)}


@pytest.fixture
def switched_off(tmp_path: Path) -> Path:
    """A first instance switched outlet 1 off with the Bitaxe on it, and is gone."""
    journal = Journal(tmp_path / "state")
    site = _site(tmp_path, journal)
    fleet = FleetSnapshot((_axe(), _never_answered(OTHER)), NOW)
    view = site.view(_pdu(True), None, NOW)
    loses = {MAC: Desired(action="sleep", reason="loses", run_margin_usd_per_day=-0.1)}
    plan = site.plan(site.apply(fleet, view), loses, view, NOW, dr_active=False,
                     excluded=frozenset())
    assert [(a.outlet, a.on) for a in plan.actions] == [(1, False)]
    for a in plan.actions:
        site.outlets.intend_off(a.pdu, a.outlet, a.miners, a.reason, now=NOW - 100,
                                machines=tuple(_details(r) for r in a.readings))
        site.outlets.off_done(a.pdu, a.outlet, ok=True, now=NOW - 99)
    journal.close()
    return tmp_path


def _details(r: MinerReading) -> dict:
    from curtaild.controller.outlets import dark_details

    return dark_details(r)


def test_a_new_instance_decides_on_a_machine_it_never_saw(switched_off: Path) -> None:
    journal = Journal(switched_off / "state")
    site = _site(switched_off, journal)
    view = site.view(_pdu(False), None, NOW + 60)
    # the driver: the Bitaxe's address never answered since this start (or is not polled yet)
    for fleet in (FleetSnapshot((_never_answered(AXE), _never_answered(OTHER)), NOW + 60),
                  FleetSnapshot((_never_answered(OTHER),), NOW + 60)):
        got = site.apply(fleet, view).by_key()
        assert set(got) == {MAC, OTHER}  # known by the key its outlet was switched with
        axe = got[MAC]
        assert (axe.state, axe.power_w, axe.power_source) == ("sleeping", 0.0, "pdu")
        assert (axe.nameplate_power_w, axe.nameplate_hashrate_ths) == (17.0, 1.2)
        assert axe.supports_sleep is False and axe.ip == AXE and axe.phase == "L1"
    # the margin returns: the tier's own economics want it running; its outlet goes on
    fleet = site.apply(FleetSnapshot((_never_answered(OTHER),), NOW + 60), view)
    wishes = site.wishes(fleet, _market(2.0), {})
    assert wishes[MAC].action == "run"
    plan = site.plan(fleet, wishes, view, NOW + 60, dr_active=False, excluded=frozenset())
    assert [(a.outlet, a.on) for a in plan.actions] == [(1, True)]
    # still losing: kept off
    wishes = site.wishes(fleet, _market(0.01), {})
    plan = site.plan(fleet, wishes, view, NOW + 60, dr_active=False, excluded=frozenset())
    assert plan.actions == [] and "off by curtaild" in plan.held[MAC]
    journal.close()


def test_a_machine_seen_the_outlet_seen_on_or_moved_is_not_made_up(
        switched_off: Path) -> None:
    journal = Journal(switched_off / "state")
    site = _site(switched_off, journal)
    # this instance saw it (before its outlet went off): its own reading is used
    known = _axe(state="unreachable", power_w=0.0, hashrate_ths=0.0, error="refused")
    got = site.apply(FleetSnapshot((known,), NOW), site.view(_pdu(False), None, NOW))
    assert [r.key for r in got.miners] == [MAC] and got.miners[0].model == "Gamma"
    # the outlet is seen on: not ours to decide on (its ownership is dropped by the plan)
    got = site.apply(FleetSnapshot((), NOW), site.view(_pdu(True), None, NOW))
    assert got.miners == (), "seen on"
    # the site map moved it to another outlet: not made up behind outlet 1
    (switched_off / "map.csv").write_text(f"id,rack,pdu,outlet\n{AXE},R1,pdu-a,3\n")
    moved = _site(switched_off, journal)
    assert moved.apply(FleetSnapshot((), NOW), moved.view(_pdu(False), None, NOW)).miners == ()
    journal.close()


def test_an_older_outlets_table_gains_the_column(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "state")
    journal.db.executescript(
        "CREATE TABLE outlets (pdu TEXT NOT NULL, outlet INTEGER NOT NULL, state TEXT NOT NULL,"
        " off_since REAL NOT NULL, miners TEXT NOT NULL, reason TEXT NOT NULL,"
        " PRIMARY KEY (pdu, outlet));"
        "CREATE TABLE outlet_events (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,"
        " pdu TEXT NOT NULL, outlet INTEGER NOT NULL, action TEXT NOT NULL,"
        " result TEXT NOT NULL, detail TEXT);"
        "INSERT INTO outlets VALUES ('pdu-a', 1, 'off', 5.0, 'k', 'old');")
    outlets = OutletJournal(journal)
    assert outlets.owned()[("pdu-a", 1)].machines == ()
    outlets.intend_off("pdu-a", 2, ("k2",), "new", machines=({"key": "k2", "ip": OTHER},))
    assert outlets.owned()[("pdu-a", 2)].machines == ({"key": "k2", "ip": OTHER},)
    journal.db.execute("UPDATE outlets SET machines='not json' WHERE outlet=2")
    assert outlets.owned()[("pdu-a", 2)].machines == ()
    journal.close()


def _market(hashprice: float):  # type: ignore[no-untyped-def]
    from curtaild.core.snapshot import MarketSnapshot

    return MarketSnapshot(hashprice_usd_per_th_day=hashprice, hashprice_source="test",
                          hashprice_age_s=0.0, tariff_usd_per_kwh=0.06, tariff_source="test",
                          tariff_age_s=0.0, pool_fee=0.02)
