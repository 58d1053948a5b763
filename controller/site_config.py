"""``[inventory]``, ``[[pdu]]``, ``[meter]`` and ``[hard_power]``: the site's power equipment.

All optional: without them curtaild behaves as before (firmware sleep only, power from the
machines' own figures). Secrets (SNMP communities, SNMPv3 keys) never live in the config: each
names a file or a systemd credential, read at start and on every reload (drivers/secret.py),
so an unreadable one rejects the start or the reload with the setting's name.

The cross-checks that need the whole file (an inventory row naming an unknown PDU, a
``hard_power`` rack no row places anything in) run in :func:`check_site`, called from the
Config model: one ``key: reason`` line per problem like every other setting.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from curtaild.controller.inventory import Inventory, Placement, check_row, read_map_file
from curtaild.core.bounds import at_most
from curtaild.drivers.secret import CredentialName, SecretFile

MIBS = ("apc", "raritan")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _no_literal(data: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(data, dict):
        for key in keys:
            if key in data:
                raise ValueError(f"{key}: secrets never live in the config file; give "
                                 f"{key}_file or {key}_credential (a systemd credential)")
    return data


class PduConfig(_Strict):
    """``[[pdu]]``: one switched rack PDU curtaild reads (and may switch) over SNMP."""

    name: str | None = Field(None, min_length=1, max_length=64,
                             description="how the site map names it; default: its address")
    address: str = Field(description="IPv4 address of its SNMP agent")
    port: int = Field(161, ge=1, le=65535)
    mib: Literal["apc", "raritan"] = Field(
        description="apc: PowerNet-MIB (sPDUOutletCtl, rPDU2OutletMetered*); raritan: PDU2-MIB")
    outlets: int | None = Field(None, ge=1, le=96, description="outlet count (checks the map)")
    version: Literal["v2c", "v3"] = Field("v3", description="SNMP version")
    # v2c: read and write communities (the write one also reads)
    community_file: SecretFile = None
    community_credential: CredentialName = None
    write_community_file: SecretFile = None
    write_community_credential: CredentialName = None
    # v3 (authPriv only: switching mains power must not be spoofable on the wire)
    user: str | None = Field(None, min_length=1, max_length=32)
    auth_protocol: Literal["sha", "sha256", "sha512"] = "sha"
    priv_protocol: Literal["aes128", "aes256"] = "aes128"
    auth_key_file: SecretFile = None
    auth_key_credential: CredentialName = None
    priv_key_file: SecretFile = None
    priv_key_credential: CredentialName = None
    timeout_s: Annotated[float, at_most(
        30.0, "a hung PDU holds the tick this long every tick")] = Field(2.0, gt=0)
    retries: int = Field(1, ge=0, le=5)
    stale_after_s: Annotated[float, at_most(
        3600.0, "outlet states an hour old say nothing about what is powered now")] = \
        Field(120.0, gt=0, description="readings older than this are not used")

    @model_validator(mode="before")
    @classmethod
    def _not_inline(cls, data: Any) -> Any:
        return _no_literal(data, ("community", "write_community", "auth_key", "priv_key"))

    @field_validator("address")
    @classmethod
    def _ipv4(cls, v: str) -> str:
        try:
            return str(ipaddress.IPv4Address(v))
        except ValueError:
            raise ValueError(f"{v!r} is not an IPv4 address") from None

    @model_validator(mode="after")
    def _credentials(self) -> PduConfig:
        def one(key: str, required: bool) -> None:
            f, c = getattr(self, f"{key}_file"), getattr(self, f"{key}_credential")
            if f is not None and c is not None:
                raise ValueError(f"give one of {key}_file or {key}_credential, not both")
            if required and f is None and c is None:
                raise ValueError(f"{key}_file or {key}_credential: required for SNMP "
                                 f"{self.version}")

        if self.version == "v2c":
            one("community", True)
            one("write_community", False)
            if self.user is not None:
                raise ValueError("user: an SNMPv3 user with version = \"v2c\"; set "
                                 "version = \"v3\" or remove it")
        else:
            if self.user is None:
                raise ValueError("user: required for SNMP v3 (or set version = \"v2c\")")
            one("auth_key", True)
            one("priv_key", True)
            for key in ("community", "write_community"):
                if getattr(self, f"{key}_file") or getattr(self, f"{key}_credential"):
                    raise ValueError(f"{key}_file: a v2c community with version = \"v3\"")
        return self

    @property
    def key(self) -> str:
        """How the inventory and metrics name it."""
        return self.name or self.address


class MeterConfig(_Strict):
    """``[meter]``: the site's utility/revenue meter over Modbus TCP."""

    address: str
    port: int = Field(502, ge=1, le=65535)
    unit_id: int = Field(1, ge=0, le=255)
    map: Literal["sunspec"] = Field(
        "sunspec", description="SunSpec common model 1 then meter model 213 (float) or "
        "203 (integer + scale factors), found by walking the models from 40000")
    timeout_s: Annotated[float, at_most(30.0, "a hung meter holds the tick this long")] = \
        Field(2.0, gt=0)
    stale_after_s: Annotated[float, at_most(
        3600.0, "a site power an hour old cannot judge a cap now")] = Field(90.0, gt=0)

    @field_validator("address")
    @classmethod
    def _ipv4(cls, v: str) -> str:
        try:
            return str(ipaddress.IPv4Address(v))
        except ValueError:
            raise ValueError(f"{v!r} is not an IPv4 address") from None


class InventoryRow(_Strict):
    """``[[inventory.miner]]``: one placement (same columns as the CSV)."""

    id: str
    container: str | None = None
    rack: str | None = None
    pdu: str | None = None
    outlet: int | None = None
    phase: str | None = None


class InventoryConfig(_Strict):
    """``[inventory]``: the site map (controller/inventory.py), a file and/or inline rows."""

    file: SecretFile = Field(None, description="CSV (id,container,rack,pdu,outlet,phase) or "
                             "TOML ([[miner]]) site map; relative: beside the config file")
    miner: list[InventoryRow] = Field(default_factory=list)
    max_phase_imbalance_w: float | None = Field(
        None, gt=0, description="the most W the most loaded phase may carry above the least "
        "loaded one: sheds and restores (power cap, outlets, firmware) that would leave the "
        "phases further apart than this, and further than they are, wait or go elsewhere "
        "(core/phases.py); needs the site map's phases")


class HardPowerConfig(_Strict):
    """``[hard_power]``: switching outlets off for machines that cannot (or will not) sleep.

    Off unless ``enabled`` and the machine's rack, container or model is listed: cutting mains
    power is the operator's decision per part of the site. See controller/outlets.py for the
    safety rules (firmware sleep first, shared outlets, minimum off time, cycle cap,
    staggered switch-on, ownership).
    """

    enabled: bool = False
    racks: list[str] = Field(default_factory=list)
    containers: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list, description="model names as reported, "
                              "e.g. 'BitAxe Gamma' (case-insensitive)")
    min_off_s: Annotated[float, at_most(
        86400.0, "a machine kept off a day after it is wanted again is a site not mining")] = \
        Field(600.0, ge=0, description="an outlet curtaild switched off stays off this long")
    max_cycles_per_day: Annotated[int, at_most(
        96, "a PSU switched on every quarter hour wears its relays and capacitors", unit="")] \
        = Field(4, ge=1, description="switch-offs per outlet in any 24 h")
    max_on_per_pdu: int = Field(1, ge=1, le=96, description="outlets switched on per PDU per "
                                "tick (inrush)")
    max_on_per_phase: int = Field(2, ge=1, le=1000, description="outlets switched on per phase "
                                  "per tick, all PDUs together (inrush)")
    on_interval_s: Annotated[float, at_most(3600.0, "a restore this slow strands machines")] \
        = Field(10.0, ge=0, description="between two switch-ons on one PDU")
    emergency_skips_sleep: bool = Field(
        False, description="an emergency demand-response shed may cut a hashing machine "
        "without trying its firmware sleep first (for events measured in seconds)")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_phase_imbalance_w" in data:
            raise ValueError("max_phase_imbalance_w: set it in [inventory] (it balances every "
                             "shed and restore, firmware and power cap too, not only outlets)")
        return data

    @field_validator("racks", "containers", "models")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for i, name in enumerate(v):
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"[{i}]: empty name")
        return v


def load_inventory(cfg: InventoryConfig, pdus: list[PduConfig]) -> tuple[Inventory, list[str]]:
    """The inventory and its problems (``inventory...: reason`` lines; empty: usable)."""
    refs: dict[str, int | None] = {}
    for pdu in pdus:
        refs[pdu.address] = pdu.outlets
        if pdu.name:
            refs[pdu.name] = pdu.outlets
    rows: list[tuple[str, dict]] = []
    problems: list[str] = []
    if cfg.file is not None:
        try:
            rows += [(f"inventory.file {where}", row) for where, row in read_map_file(cfg.file)]
        except ValueError as exc:
            problems.append(f"inventory.file: {exc}")
    rows += [(f"inventory.miner[{i}]", r.model_dump(exclude_none=True))
             for i, r in enumerate(cfg.miner)]
    placements: list[Placement] = []
    seen: dict[str, str] = {}
    outlet_phase: dict[tuple[str, int], tuple[str, str]] = {}
    by_address = {p.address: p.key for p in pdus}
    for where, row in rows:
        try:
            p = check_row(row, refs)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if p.pdu in by_address:  # name the PDU one way (its key) whatever the row said
            p = Placement(p.id, p.container, p.rack, by_address[p.pdu], p.outlet, p.phase)
        key = p.id.casefold()
        if key in seen:
            problems.append(f"{where}: id: {p.id} is also placed by {seen[key]}")
            continue
        seen[key] = where
        if p.outlet_key is not None and p.phase:
            other = outlet_phase.setdefault(p.outlet_key, (p.phase, where))
            if other[0] != p.phase:
                problems.append(f"{where}: phase: outlet {p.outlet} of {p.pdu} is on "
                                f"{other[0]} in {other[1]}; one outlet is on one phase")
                continue
        placements.append(p)
    return Inventory(placements), problems[:50]


def check_site(pdu: list[PduConfig], inventory: InventoryConfig,
               hard_power: HardPowerConfig) -> Inventory:
    """Cross-checks over the whole site (ValueError with ``key: reason`` lines)."""
    problems: list[str] = []
    keys: dict[str, int] = {}
    for i, p in enumerate(pdu):
        for k in {p.key, p.address}:
            if k in keys:
                problems.append(f"pdu[{i}]: {k!r} is also pdu[{keys[k]}] (names and "
                                "addresses identify a PDU)")
            keys[k] = i
    inv, more = load_inventory(inventory, pdu)
    problems += more
    if hard_power.enabled:
        if not pdu:
            problems.append("hard_power.enabled: no [[pdu]] configured to switch")
        if not (hard_power.racks or hard_power.containers or hard_power.models):
            problems.append("hard_power.enabled: name the racks, containers or models whose "
                            "outlets curtaild may switch off (nothing is opted in)")
    if inventory.max_phase_imbalance_w is not None and not more \
            and not any(p.phase for p in inv.placements):
        problems.append("inventory.max_phase_imbalance_w: no inventory row gives a phase, so "
                        "there is nothing to balance")
    racks = {p.rack for p in inv.placements if p.rack}
    containers = {p.container for p in inv.placements if p.container}
    for i, r in enumerate(hard_power.racks):
        if r not in racks:
            problems.append(f"hard_power.racks[{i}]: no inventory row is in rack {r!r}")
    for i, c in enumerate(hard_power.containers):
        if c not in containers:
            problems.append(f"hard_power.containers[{i}]: no inventory row is in container "
                            f"{c!r}")
    if problems:
        raise ValueError("\n".join(problems))
    return inv
