"""controller/site.py without I/O: the power source chain (outlet power ahead of firmware; the
meter, else PDU totals, else estimates), the phases and limit carried on the snapshot, and the
outlets a power-cap shed may switch (issue 18). PDU and meter readings are hand-made."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from curtaild.controller.config import parse_config
from curtaild.controller.journal import Journal
from curtaild.controller.site import Site
from curtaild.core.snapshot import FleetSnapshot, MinerReading
from curtaild.drivers.meter import MeterReading
from curtaild.drivers.pdu import OutletReading, PduReading

NOW = 1_700_000_000.0
AXE, S19, A2, B2, LOOSE = (f"127.186.5.{i}" for i in range(1, 6))


@pytest.fixture
def site(tmp_path: Path):
    (tmp_path / "ro").write_text("public\n")
    (tmp_path / "map.csv").write_text(
        "id,rack,pdu,outlet,phase\n"
        f"{AXE},R1,pdu-a,1,L1\n{S19},R1,pdu-a,2,L1\n"
        f"{A2},R1,pdu-b,1,L2\n{B2},R1,pdu-b,1,L2\n{LOOSE},R9,,,L3\n")
    pdu = {"mib": "apc", "outlets": 4, "version": "v2c", "community_file": "ro"}
    cfg = parse_config({
        "fleet": {"hosts": [AXE]},
        "hashprice": {"source": "fixed", "usd_per_th_day": 0.05},
        "tariff": {"kind": "flat", "usd_per_kwh": 0.06},
        "policy": {"name": "margin"},
        "controller": {"state_dir": str(tmp_path / "state")},
        "pdu": [{**pdu, "name": "pdu-a", "address": "127.186.5.50"},
                {**pdu, "name": "pdu-b", "address": "127.186.5.51"}],
        "meter": {"address": "127.186.5.60", "stale_after_s": 60},
        "inventory": {"file": "map.csv", "max_phase_imbalance_w": 5000},
        "hard_power": {"enabled": True, "racks": ["R1"]}}, str(tmp_path / "curtaild.toml"))
    journal = Journal(tmp_path / "state")
    yield Site(cfg, journal)
    journal.close()


def reading(ip: str, *, power_w: float, sleep: bool = True, state: str = "mining",
            source: str = "firmware") -> MinerReading:
    return MinerReading(key=ip, ip=ip, make="x", model="M", firmware="f", state=state,
                        hashrate_ths=1.0, power_w=power_w, power_source=source,
                        power_limit_w=None, temp_c=None, supports_sleep=sleep)


FLEET = FleetSnapshot((reading(AXE, power_w=15.0, sleep=False),
                       reading(S19, power_w=3068.0, source="model_table"),
                       reading(A2, power_w=1000.0), reading(B2, power_w=3000.0),
                       reading(LOOSE, power_w=500.0)), NOW)


def pdu(key: str, outlets: dict[int, tuple[bool, float | None]], *, error: str | None = None,
        at: float = NOW) -> PduReading:
    return PduReading(key, "", "apc", {n: OutletReading(n, on, w) for n, (on, w)
                                       in outlets.items()} if error is None else {},
                      taken_at=at, error=error)


A_OK = pdu("pdu-a", {1: (True, 17.5), 2: (True, 3150.0), 3: (True, None), 4: (False, 0.0)})
B_OK = pdu("pdu-b", {1: (True, 4200.0), 2: (True, 0.0), 3: (True, 0.0), 4: (True, 0.0)})


def test_outlet_power_comes_ahead_of_firmware_and_a_shared_outlet_is_split(site) -> None:
    out = site.apply(FLEET, site.view({"pdu-a": A_OK, "pdu-b": B_OK}, None, NOW)).by_key()
    assert (out[AXE].power_w, out[AXE].power_source) == (17.5, "pdu")
    assert (out[S19].power_w, out[S19].power_source) == (3150.0, "pdu")  # not the table's
    # two machines on one metered outlet: its 4200 W in proportion to their own figures
    assert (out[A2].power_w, out[B2].power_w) == (1050.0, 3150.0)
    assert out[LOOSE].power_w == 500.0 and out[LOOSE].power_source == "firmware"
    # a PDU that did not answer: its machines keep their own figures
    out = site.apply(FLEET, site.view({"pdu-a": pdu("pdu-a", {}, error="timeout"),
                                       "pdu-b": B_OK}, None, NOW)).by_key()
    assert out[S19].power_source == "model_table" and out[A2].power_source == "pdu"


def test_site_power_is_the_meter_else_every_pdu_else_the_estimates(site) -> None:
    site.last_meter = MeterReading(7000.0, {"L1": 3000.0, "L2": 4000.0, "L3": 0.0}, NOW - 10)
    v = site.view({"pdu-a": A_OK, "pdu-b": B_OK}, site.last_meter, NOW)
    assert (v.site_power_w, v.site_power_source) == (7000.0, "meter")
    assert site.apply(FLEET, v).site_power_source == "meter"
    # the meter's last good read is too old: the PDUs' sum (17.5 + 3150 + 4200)
    v = site.view({"pdu-a": A_OK, "pdu-b": B_OK}, None, NOW + 61)
    assert (v.site_power_w, v.site_power_source) == (7367.5, "pdu")
    # one PDU did not answer: the sum would miss its load -- the machines' own figures
    v = site.view({"pdu-a": A_OK, "pdu-b": pdu("pdu-b", {}, error="garbage")}, None, NOW + 61)
    assert (v.site_power_w, v.site_power_source) == (None, "estimate")
    assert site.apply(FLEET, v).site_power_w is None


def test_the_snapshot_carries_phases_the_limit_and_the_outlets_a_cap_may_switch(site) -> None:
    v = site.view({"pdu-a": A_OK, "pdu-b": B_OK}, None, NOW)
    f = site.apply(FLEET, v)
    assert f.max_phase_imbalance_w == 5000
    assert {r.key: r.phase for r in f.miners} == {AXE: "L1", S19: "L1", A2: "L2", B2: "L2",
                                                   LOOSE: "L3"}
    marked = {r.key: r.outlet for r in site.mark_outlets(f, v, NOW, dr_active=False,
                                                          excluded=frozenset()).miners}
    # the Bitaxe alone on outlet 1; the S19 hashes (firmware sleep first); A2 and B2 hash too;
    # LOOSE has no outlet
    assert marked == {AXE: "pdu-a/1", S19: None, A2: None, B2: None, LOOSE: None}
    asleep = dataclasses.replace(f, miners=tuple(
        dataclasses.replace(r, state="sleeping", power_w=40.0) if r.key in (A2, B2) else r
        for r in f.miners))
    marked = {r.key: r.outlet for r in site.mark_outlets(asleep, v, NOW, dr_active=False,
                                                          excluded=frozenset()).miners}
    assert (marked[A2], marked[B2]) == ("pdu-b/1", "pdu-b/1")  # shared: marked together
    excluded = site.mark_outlets(f, v, NOW, dr_active=False, excluded=frozenset({AXE}))
    assert excluded.by_key()[AXE].outlet is None
