"""``[[pdu]]`` and ``[meter]`` in the emulator's fleet TOML, and the PDUs of ``--count`` fleets.

Fleet file::

    [[pdu]]
    address = "127.180.0.50"   # loopback; the SNMP agent listens on udp/161 there
    mib = "apc"                # "apc" (PowerNet-MIB) | "raritan" (PDU2-MIB)
    outlets = 8                # number of outlets (1-48)
    community = "public"       # optional SNMP v2c read community (default "public" when
    write_community = "private"  # no v3 user is given; write default "private")
    user = "curtaild"          # optional SNMPv3 user: HMAC-SHA-96 auth, AES-128 privacy
    auth_key = "..."           # its passphrases (at least 8 characters each)
    priv_key = "..."
    phase = "L1"               # optional: the phase feeding it (the meter's per-phase power)
    port = 161                 # optional
    name = "rack-a-pdu1"       # optional (sysName)

    [meter]
    address = "127.180.0.60"
    port = 502                 # optional (Modbus TCP)
    map = "sunspec"            # SunSpec models 1 + 213 (emulator/meter.py)
    overhead_w = 1500          # optional facility load no miner reports
    noise_w = 0                # optional +/- uniform noise
    unit_id = 1                # optional

    [[miner]]
    model = "Bitaxe Ultra"
    count = 4
    pdu = "127.180.0.50"       # the PDU's address
    outlet = 1                 # 1-based; with count, consecutive outlets from here...
    per_outlet = 2             # ...this many machines on each (default 1: shared outlets > 1)

``--count N`` fleets: every miner on an outlet of emulated APC PDUs, 8 outlets each, in
order; each PDU listens at the address of the first miner plugged into it (udp/161 does not
clash with the miners' TCP ports, and a fleet's block of addresses stays its own), v2c
communities ``public`` (read) and ``private`` (write), phases L1, L2, L3 in turn; the meter
listens at the first miner's address, tcp/502, with no overhead.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from curtaild.emulator.meter import MAPS, EmulatedMeter
from curtaild.emulator.pdu.model import MIBS, EmulatedPdu, Outlet
from curtaild.emulator.physics import EmulatedMiner

PDU_KEYS = {"address", "port", "mib", "outlets", "name", "phase", "community",
            "write_community", "user", "auth_key", "priv_key"}
METER_KEYS = {"address", "port", "map", "overhead_w", "noise_w", "unit_id"}
PHASES = ("L1", "L2", "L3")
MAX_OUTLETS = 48
COUNT_OUTLETS = 8
DEFAULT_SNMP_PORT = 161
DEFAULT_MODBUS_PORT = 502


class SiteError(ValueError):
    """A bad [[pdu]]/[meter] table or miner placement; the message names table and key."""


@dataclass(slots=True)
class PduPlan:
    address: str
    mib: str = "apc"
    outlets: int = COUNT_OUTLETS
    port: int = DEFAULT_SNMP_PORT
    name: str = ""
    phase: str | None = None
    community: str | None = "public"
    write_community: str | None = "private"
    v3_user: tuple[str, str, str] | None = field(default=None, repr=False)


@dataclass(slots=True)
class MeterPlan:
    address: str
    port: int = DEFAULT_MODBUS_PORT
    map: str = "sunspec"
    overhead_w: float = 0.0
    noise_w: float = 0.0
    unit_id: int = 1


@dataclass(slots=True)
class SitePlan:
    pdus: list[PduPlan] = field(default_factory=list)
    meter: MeterPlan | None = None
    #: miner ip -> (pdu address, outlet number)
    placement: dict[str, tuple[str, int]] = field(default_factory=dict)


def _loopback(where: str, value: object) -> str:
    try:
        addr = ipaddress.IPv4Address(str(value))
    except ValueError:
        raise SiteError(f"{where}: {value!r} is not an IPv4 address") from None
    if not addr.is_loopback:
        raise SiteError(f"{where}: {value} is not a loopback address (127.0.0.0/8); the "
                        "emulator only listens on loopback")
    return str(addr)


def _int(where: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SiteError(f"{where}: expected an integer in [{low}, {high}], got {value!r}")
    return value


def _string(where: str, value: object, *, min_len: int = 1) -> str:
    if not isinstance(value, str) or len(value) < min_len or not value.isprintable():
        raise SiteError(f"{where}: expected a printable string of at least {min_len} "
                        "characters")
    return value


def _device_table(where: str, table: object, keys: set[str], header: str,
                  device: str) -> tuple[dict, str]:
    """A [[pdu]] or [meter] table checked for shape, unknown keys and its address."""
    if not isinstance(table, dict):
        raise SiteError(f"{where}: expected a table ({header})")
    unknown = set(table) - keys
    if unknown:
        raise SiteError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: "
                        f"{', '.join(sorted(keys))}")
    if "address" not in table:
        raise SiteError(f"{where}.address: missing (the {device}'s loopback address)")
    return table, _loopback(f"{where}.address", table["address"])


def _pdu(where: str, table: object) -> PduPlan:
    table, address = _device_table(where, table, PDU_KEYS, "[[pdu]]", "PDU")
    plan = PduPlan(address=address)
    mib = table.get("mib", "apc")
    if mib not in MIBS:
        raise SiteError(f"{where}.mib: expected one of {', '.join(MIBS)}, got {mib!r}")
    plan.mib = mib
    plan.outlets = _int(f"{where}.outlets", table.get("outlets", COUNT_OUTLETS), 1, MAX_OUTLETS)
    plan.port = _int(f"{where}.port", table.get("port", DEFAULT_SNMP_PORT), 1, 65535)
    if "name" in table:
        plan.name = _string(f"{where}.name", table["name"])
    if "phase" in table:
        if table["phase"] not in PHASES:
            raise SiteError(f"{where}.phase: expected one of {', '.join(PHASES)}, got "
                            f"{table['phase']!r}")
        plan.phase = table["phase"]
    v3 = [k for k in ("user", "auth_key", "priv_key") if k in table]
    if v3 and len(v3) != 3:
        missing = sorted({"user", "auth_key", "priv_key"} - set(v3))
        raise SiteError(f"{where}.{missing[0]}: an SNMPv3 user needs user, auth_key and "
                        "priv_key (authPriv: SHA and AES-128)")
    if v3:
        user = _string(f"{where}.user", table["user"])
        keys = [_string(f"{where}.{k}", table[k], min_len=8) for k in ("auth_key", "priv_key")]
        plan.v3_user = (user, keys[0], keys[1])
    if "community" in table or "write_community" in table or not v3:
        plan.community = _string(f"{where}.community", table.get("community", "public"))
        plan.write_community = _string(f"{where}.write_community",
                                       table.get("write_community", "private"))
    else:
        plan.community = plan.write_community = None
    return plan


def _meter(where: str, table: object) -> MeterPlan:
    table, address = _device_table(where, table, METER_KEYS, "[meter]", "meter")
    plan = MeterPlan(address=address)
    plan.port = _int(f"{where}.port", table.get("port", DEFAULT_MODBUS_PORT), 1, 65535)
    plan.unit_id = _int(f"{where}.unit_id", table.get("unit_id", 1), 1, 247)
    if table.get("map", "sunspec") not in MAPS:
        raise SiteError(f"{where}.map: expected one of {', '.join(MAPS)}, got "
                        f"{table.get('map')!r}")
    for key in ("overhead_w", "noise_w"):
        value = table.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                0 <= value <= 100e6):
            raise SiteError(f"{where}.{key}: expected watts in [0, 1e8], got {value!r}")
        setattr(plan, key, float(value))
    return plan


def miner_site_keys(where: str, table: dict) -> dict:
    """``pdu``/``outlet``/``per_outlet`` of one [[miner]] table, checked on their own (that the
    PDU exists and has the outlet is checked once every table is read)."""
    keys = [k for k in ("pdu", "outlet", "per_outlet") if k in table]
    if not keys:
        return {}
    if "pdu" not in table or "outlet" not in table:
        raise SiteError(f"{where}.{'outlet' if 'pdu' in table else 'pdu'}: pdu and outlet go "
                        "together (the PDU's address and a 1-based outlet number)")
    return {"pdu": _loopback(f"{where}.pdu", table["pdu"]),
            "outlet": _int(f"{where}.outlet", table["outlet"], 1, MAX_OUTLETS),
            "per_outlet": _int(f"{where}.per_outlet", table.get("per_outlet", 1), 1, 1000)}


def plan_site(doc: dict, source: str) -> SitePlan:
    """The [[pdu]] tables and [meter] of a fleet document (placements are added later)."""
    site = SitePlan()
    tables = doc.get("pdu", [])
    if not isinstance(tables, list):
        raise SiteError(f"{source}: 'pdu' must be an array of tables ([[pdu]])")
    seen: dict[tuple[str, int], int] = {}
    for i, t in enumerate(tables):
        p = _pdu(f"{source}: pdu[{i}]", t)
        if (p.address, p.port) in seen:
            raise SiteError(f"{source}: pdu[{i}].address: {p.address} is also "
                            f"pdu[{seen[(p.address, p.port)]}]")
        seen[(p.address, p.port)] = i
        site.pdus.append(p)
    if "meter" in doc:
        site.meter = _meter(f"{source}: meter", doc["meter"])
    return site


def place(site: SitePlan, where: str, ips: list[str], keys: dict) -> None:
    """Put a [[miner]] table's machines on their PDU's outlets."""
    if not keys:
        return
    pdu = next((p for p in site.pdus if p.address == keys["pdu"]), None)
    if pdu is None:
        raise SiteError(f"{where}.pdu: no [[pdu]] has address {keys['pdu']}")
    for n, ip in enumerate(ips):
        outlet = keys["outlet"] + n // keys["per_outlet"]
        if outlet > pdu.outlets:
            raise SiteError(f"{where}.outlet: machine {n + 1} of {len(ips)} lands on outlet "
                            f"{outlet}, but PDU {pdu.address} has {pdu.outlets}")
        site.placement[ip] = (pdu.address, outlet)


def plan_count_site(ips: list[str]) -> SitePlan:
    """``--count`` fleets: APC PDUs of 8 outlets in order, and one meter (module docstring)."""
    site = SitePlan()
    for start in range(0, len(ips), COUNT_OUTLETS):
        block = ips[start:start + COUNT_OUTLETS]
        pdu = PduPlan(address=block[0], phase=PHASES[len(site.pdus) % 3],
                      name=f"pdu-{len(site.pdus) + 1}")
        site.pdus.append(pdu)
        for n, ip in enumerate(block):
            site.placement[ip] = (pdu.address, n + 1)
    if ips:
        site.meter = MeterPlan(address=ips[0])
    return site


def build_site(site: SitePlan, miners: list[EmulatedMiner],
               on_switch: Callable[[EmulatedMiner], None] | None = None
               ) -> tuple[list[EmulatedPdu], EmulatedMeter | None]:
    """The PDUs with their miners plugged in, and the meter over every miner."""
    by_ip = {m.ip: m for m in miners}
    pdus: dict[str, EmulatedPdu] = {}
    for p in site.pdus:
        pdus[p.address] = EmulatedPdu(
            address=p.address, mib=p.mib, port=p.port, name=p.name, phase=p.phase,
            outlets=[Outlet(n) for n in range(1, p.outlets + 1)],
            read_community=p.community, write_community=p.write_community,
            v3_user=p.v3_user, on_switch=on_switch)
    phase_of: dict[str, str] = {}
    for ip, (address, number) in site.placement.items():
        pdu = pdus[address]
        outlet = pdu.outlet(number)
        assert outlet is not None
        outlet.miners.append(by_ip[ip])
        if pdu.phase:
            phase_of[ip] = pdu.phase
    meter = None
    if site.meter is not None:
        m = site.meter
        meter = EmulatedMeter(m.address, m.port, miners, phase_of, overhead_w=m.overhead_w,
                              noise_w=m.noise_w, unit_id=m.unit_id, map_name=m.map)
    return list(pdus.values()), meter
