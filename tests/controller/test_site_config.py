"""[inventory], [[pdu]], [meter] and [hard_power]: validation names the key (and the site-map
row), nothing is half-applied, secrets never live in the file (controller/site_config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from curtaild.controller.config import ConfigError, parse_config
from curtaild.controller.inventory import Inventory, Placement, parse_group
from curtaild.controller.site_config import load_inventory

BASE = {
    "fleet": {"hosts": ["127.182.0.1"]},
    "hashprice": {"source": "fixed", "usd_per_th_day": 0.05},
    "tariff": {"kind": "flat", "usd_per_kwh": 0.06},
    "policy": {"name": "margin"},
    "controller": {"state_dir": "/tmp/curtaild-site-config-test"},
}
PDU = {"name": "pdu-a", "address": "127.182.0.50", "mib": "apc", "outlets": 8,
       "version": "v2c", "community_file": "/run/secrets/ro"}


def problems(extra: dict) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config({**BASE, **extra})
    return exc.value.problems


def test_a_site_with_pdus_meter_inventory_and_hard_power_parses(tmp_path: Path) -> None:
    sheet = tmp_path / "site-map.csv"
    sheet.write_text("\ufeffid,container,rack,pdu,outlet,phase\n"
                     "aa-bb-cc-00-00-01,C1,R01,pdu-a,1,l1\n"
                     "127.182.0.2,C1,R01,127.182.0.50,1,L1\n"
                     "# a comment row\n\n"
                     "SN-0003,C2,R02,,,\n")
    cfg = parse_config({**BASE, "pdu": [PDU], "meter": {"address": "127.182.0.60"},
                        "inventory": {"file": "site-map.csv",
                                      "miner": [{"id": "127.182.0.9", "rack": "R09"}]},
                        "hard_power": {"enabled": True, "racks": ["R01"]}},
                       str(tmp_path / "curtaild.toml"))
    inv, bad = load_inventory(cfg.inventory, cfg.pdu)
    assert bad == []
    mac = inv.find("AA:BB:CC:00:00:01")
    assert mac == Placement("AA:BB:CC:00:00:01", "C1", "R01", "pdu-a", 1, "L1")
    # the row that named the PDU by address names it by its key like every other
    assert inv.find("127.182.0.2").outlet_key == ("pdu-a", 1)
    assert inv.find("SN-0003").labels() == {"container": "C2", "rack": "R02"}
    assert inv.find("127.182.0.9").rack == "R09"
    assert inv.groups() == {"rack:R01", "rack:R02", "rack:R09", "container:C1",
                            "container:C2"}
    assert cfg.meter is not None and cfg.meter.port == 502


@pytest.mark.parametrize(("extra", "expected"), [
    ({"pdu": [{**PDU, "community": "public"}]},
     "pdu[0]: community: secrets never live in the config"),
    ({"pdu": [{**PDU, "mib": "eaton"}]}, "pdu[0].mib: "),
    ({"pdu": [{**PDU, "address": "pdu-a.local"}]}, "pdu[0].address: 'pdu-a.local' is not"),
    ({"pdu": [{"address": "127.182.0.50", "mib": "raritan"}]},
     "pdu[0]: user: required for SNMP v3"),
    ({"pdu": [{"address": "127.182.0.50", "mib": "raritan", "user": "c",
               "auth_key_file": "/a"}]}, "pdu[0]: priv_key_file or priv_key_credential: "),
    ({"pdu": [PDU, {**PDU, "address": "127.182.0.51"}]}, "pdu[1]: 'pdu-a' is also pdu[0]"),
    ({"meter": {"address": "127.182.0.60", "map": "modicon"}}, "meter.map: "),
    ({"hard_power": {"enabled": True, "racks": ["R01"]}},
     "hard_power.enabled: no [[pdu]] configured"),
    ({"pdu": [PDU], "hard_power": {"enabled": True}}, "hard_power.enabled: name the racks"),
    ({"pdu": [PDU], "hard_power": {"racks": ["R7"]}},
     "hard_power.racks[0]: no inventory row is in rack 'R7'"),
    ({"pdu": [PDU], "inventory": {"miner": [{"id": "127.182.0.1", "pdu": "pdu-b",
                                             "outlet": 1}]}},
     "inventory.miner[0]: pdu: 'pdu-b' is not a [[pdu]] name or address"),
    ({"pdu": [PDU], "inventory": {"miner": [{"id": "127.182.0.1", "pdu": "pdu-a",
                                             "outlet": 9}]}},
     "inventory.miner[0]: outlet: 9 but PDU 'pdu-a' has 8 outlets"),
    ({"inventory": {"miner": [{"id": "127.182.0.1", "phase": "L4"}]}},
     "inventory.miner[0]: phase: 'L4' is not one of L1, L2, L3"),
    ({"inventory": {"miner": [{"id": "127.182.0.300"}]}},
     "inventory.miner[0]: id: '127.182.0.300' is not a valid IPv4 address"),
    ({"inventory": {"miner": [{"id": "127.182.0.1"}, {"id": "127.182.0.1", "rack": "R"}]}},
     "inventory.miner[1]: id: 127.182.0.1 is also placed by inventory.miner[0]"),
    ({"pdu": [PDU], "inventory": {"miner": [
        {"id": "127.182.0.1", "pdu": "pdu-a", "outlet": 1, "phase": "L1"},
        {"id": "127.182.0.2", "pdu": "pdu-a", "outlet": 1, "phase": "L2"}]}},
     "inventory.miner[1]: phase: outlet 1 of pdu-a is on L1 in inventory.miner[0]"),
    ({"inventory": {"miner": [{"id": "127.182.0.1", "outlet": 2}]}},
     "inventory.miner[0]: pdu: required with outlet"),
])
def test_problems_name_the_key(extra: dict, expected: str) -> None:
    lines = problems(extra)
    assert any(line.startswith(expected) for line in lines), lines


def test_csv_rows_are_named_by_file_and_line(tmp_path: Path) -> None:
    sheet = tmp_path / "map.csv"
    sheet.write_text("id,rack,outlet\n127.182.0.1,R1,\n127.182.0.2,R1,3\nnot a mac!,R1,\n")
    lines = problems({"inventory": {"file": str(sheet)}})
    assert f"inventory.file {sheet} line 3: pdu: required with outlet (a [[pdu]] name or " \
           "address)" in lines
    assert any(line.startswith(f"inventory.file {sheet} line 4: id: ") for line in lines)
    sheet.write_text("id,rack,socket\n")
    assert problems({"inventory": {"file": str(sheet)}}) == [
        f"inventory.file: {sheet} line 1: unknown column 'socket'; the header names columns "
        "of: id, container, rack, pdu, outlet, phase"]
    assert problems({"inventory": {"file": str(tmp_path / "missing.csv")}})[0].startswith(
        "inventory.file: cannot read ")


def test_toml_site_map(tmp_path: Path) -> None:
    sheet = tmp_path / "map.toml"
    sheet.write_text('[[miner]]\nid = "127.182.0.1"\ncontainer = "C1"\n'
                     '[[miner]]\nid = "127.182.0.2"\nshelf = 3\n')
    lines = problems({"inventory": {"file": str(sheet)}})
    assert lines == [f"inventory.file {sheet} miner[1]: shelf: unknown column; allowed: id, "
                     "container, rack, pdu, outlet, phase"]


def test_groups_parse_and_members() -> None:
    assert parse_group("rack:R01") == ("rack", "R01")
    assert parse_group("Container: C 2") == ("container", "C 2")
    assert parse_group("AA:BB:CC:00:00:01") is None
    assert parse_group("127.182.0.1") is None

    class R:
        def __init__(self, ip: str) -> None:
            self.ip = self.key = ip
            self.mac = self.serial = None

    inv = Inventory([Placement("127.182.0.1", rack="R01"), Placement("127.182.0.2", rack="R02")])
    readings = [R("127.182.0.1"), R("127.182.0.2"), R("127.182.0.3")]
    assert [r.ip for r in inv.members("rack:R01", readings)] == ["127.182.0.1"]
    assert inv.members("row:R01", readings) == []


def test_check_reads_the_snmp_secrets_and_plan_writes_nothing(tmp_path: Path, capsys) -> None:
    """`check` refuses an unreadable PDU secret, naming the setting (as `run` would); `plan`
    on a fresh state dir creates no journal and no outlet table."""
    import asyncio

    from curtaild.controller.cli import _plan, main

    state = tmp_path / "state"
    cfg = tmp_path / "curtaild.toml"
    cfg.write_text(f"""
[fleet]
hosts = ["127.182.50.1"]
discovery_timeout_s = 0.5
[hashprice]
source = "fixed"
usd_per_th_day = 0.05
[tariff]
kind = "flat"
usd_per_kwh = 0.06
[policy]
name = "margin"
[controller]
state_dir = "{state}"
[[pdu]]
address = "127.182.50.2"
mib = "apc"
version = "v2c"
community_file = "missing-secret"
timeout_s = 0.2
retries = 0
""")
    assert main(["--config", str(cfg), "check"]) == 2
    err = capsys.readouterr().err
    assert f"pdu[0].community_file: cannot read {tmp_path / 'missing-secret'}" in err
    (tmp_path / "missing-secret").write_text("public\n")
    assert main(["--config", str(cfg), "check"]) == 0
    assert asyncio.run(_plan(str(cfg), True)) == 0
    assert not (state / "journal.sqlite").exists()
    assert '"power_source": "estimate"' in capsys.readouterr().out  # the PDU did not answer
