"""Building the emulated fleet: ``--count N`` (every model in turn) or a ``--fleet`` TOML file.

Addresses are consecutive loopback addresses from ``--first-ip``, skipping last octets 0 and
255 (real sites never put a miner on a network or broadcast address, and some clients refuse
them). Fleet-file errors name the table and key (``miner[2].power_limit_w: ...``) so a typo in
a 2,000-line file is found in one go.

File format::

    time_scale = 0.05          # optional, --time-scale wins if given
    ambient_c = 28.0           # optional default for every miner

    [[miner]]
    model = "S19j Pro"         # a key of emulator.models.MODELS
    ip = "127.1.0.10"          # optional; default: next free consecutive address
    firmware = "antminer"      # optional; must equal the model's firmware family
    count = 3                  # optional; this many consecutive machines
    fault = "slow"             # optional; none|hang|refuse|garbage|slow|ignore_sleep|
                               #   endless|huge|nested|accept_close|drip
    delay_s = 2.0              # optional; the "slow" delay (the "drip" interval) in seconds
    size_bytes = 1048576       # optional; the "huge" reply length (default 50 MB)
    ambient_c = 35.0           # optional
    power_limit_w = 3000       # optional; only models whose firmware accepts a limit
    password = "s3cret"        # optional; the site's firmware password (stock Antminer web
                               # UI root password, Whatsminer API admin password); default:
                               # the factory one (a Whatsminer with it cannot be written:
                               # its write API stays off). LuxOS and Bitaxe have none.
    api = "v3"                 # optional, Whatsminer only: "v2" (4028) or "v3" (4433 too);
                               # default: what firmware_version implies, else "v2"
    firmware_version = "20250915.16.Rel2"  # optional, Whatsminer: must agree with api
                               # (pyasic speaks v3 to firmware dated after 2024-11);
                               # stock Antminer: a generation ("2022-12", "2025-02",
                               # "2025-10") or a version it reports (emulator/families/
                               # antminer.py GENERATIONS); default "2022-12";
                               # Whatsminer v2 dated before 2023: the legacy API daemon;
                               # Bitaxe: an AxeOS version ("v2.4.5" default, "v2.14.0")
    fast_boot = true           # optional, Whatsminer: a power limit applies without
                               # restarting btminer (v2 "btminer fast boot", v3 "Power Fast
                               # Boot"); default false
    write_api = false          # optional, Whatsminer (API v2 and v3): the WhatsMinerTool
                               # "Miner API Switch"; false: every write is refused ("can't
                               # access write cmd"); default: on once ``password`` is given,
                               # off with the factory password (true needs a password)
    atm = false                # optional, LuxOS only: advanced thermal management (default
                               # true, as LuxOS ships; it moves the profile with temperature)

``--count N`` cycles through every model; every M50 in it runs API v3 firmware and every M30S
older API v2 firmware (``whatsminer.FW_VERSION``, 2023-09); its stock Antminers run each
firmware generation in turn (``antminer.COUNT_GENERATIONS``). Its Whatsminers are set up as at
a site that drives them through the API: admin password changed to ``COUNT_PASSWORDS
["whatsminer"]`` (the demo's, ``demo/whatsminer-api-password``) and the write API switched on;
the factory ``admin`` writes nothing on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from curtaild.core.fleet import (
    DEFAULT_FIRST_IP,
    MINER_KEYS,
    FleetError,
    assign_addresses,
    consecutive,
    fleet_document,
    parse_loopback,
)
from curtaild.core.models import MODELS, demo_mix
from curtaild.emulator.families.antminer import (
    COUNT_GENERATIONS,
    DEFAULT_GENERATION,
    GENERATIONS,
    generation_named,
)
from curtaild.emulator.families.bitaxe import DEFAULT_VERSION as BITAXE_DEFAULT_VERSION
from curtaild.emulator.families.bitaxe import axeos_version
from curtaild.emulator.families.luxos import ATM_KEY as LUXOS_ATM_KEY
from curtaild.emulator.families.luxos import RAMP_S as LUXOS_RAMP_S
from curtaild.emulator.families.whatsminer import WRITE_API_KEY as WHATSMINER_WRITE_API_KEY
from curtaild.emulator.families.whatsminer_v3 import RAMP_S as V3_RAMP_S
from curtaild.emulator.families.whatsminer_v3 import api_for_version
from curtaild.emulator.pdu.plan import (
    SiteError,
    SitePlan,
    miner_site_keys,
    place,
    plan_site,
)
from curtaild.emulator.physics import FACTORY_PASSWORDS, FAULT_KINDS, EmulatedMiner, Fault

DEFAULT_AMBIENT_C = 25.0
#: ``--count`` fleets: models whose machines run Whatsminer API v3 firmware (the others run
#: API v2 firmware from before 2024-11).
COUNT_V3_MODELS = {"M50"}
#: ``--count`` fleets: the password the site set per family (a real site that commands its
#: Whatsminers must change the admin password before the write API can be switched on). The
#: shipped demo config reads the same one from ``demo/whatsminer-api-password``: a demo
#: secret, published, never one for a real machine.
COUNT_PASSWORDS: dict[str, str] = {"whatsminer": "demo-wm-Kx7q2Lr9"}


@dataclass(slots=True)
class MinerPlan:
    """One machine to emulate, before it exists."""

    ip: str
    model: str  # key of MODELS
    fault: str = "none"
    delay_s: float | None = None
    size_bytes: int | None = None
    ambient_c: float | None = None
    power_limit_w: float | None = None
    password: str | None = field(default=None, repr=False)  # None: factory password
    api: str | None = None  # Whatsminer: "v2" | "v3"; None: v2
    firmware_version: str | None = None  # None: the family's default for the API
    fast_boot: bool = False
    write_api: bool | None = None  # Whatsminer: the API switch (None: on iff password set)
    atm: bool | None = None  # LuxOS: ATM on (None: the firmware default, on)


@dataclass(slots=True)
class FleetPlan:
    miners: list[MinerPlan]
    time_scale: float | None = None  # from the file; the CLI flag overrides
    ambient_c: float | None = None
    #: PDUs and meter ([[pdu]], [meter]; --count: pdu/plan.plan_count_site); None: none
    site: SitePlan | None = None


def plan_count(count: int, first_ip: str = DEFAULT_FIRST_IP) -> FleetPlan:
    """``--count N``: cycle through every model so every family appears."""
    if count < 1:
        raise FleetError(f"--count: must be at least 1, got {count}")
    models = demo_mix(count)
    ips = consecutive(parse_loopback(first_ip))
    miners = []
    stock = 0  # stock Antminers so far: each gets the next firmware generation
    for i in range(count):
        try:
            ip = next(ips)
        except StopIteration:
            raise FleetError(f"--count: {count} miners do not fit in 127.0.0.0/8 after "
                             f"{first_ip}") from None
        model = models[i]
        plan = MinerPlan(ip=ip, model=model, api="v3" if model in COUNT_V3_MODELS else None,
                         password=COUNT_PASSWORDS.get(MODELS[model].firmware))
        if MODELS[model].firmware == "antminer":
            plan.firmware_version = COUNT_GENERATIONS[stock % len(COUNT_GENERATIONS)]
            stock += 1
        miners.append(plan)
    return FleetPlan(miners)


def _number(where: str, value: object, *, low: float | None = None,
            high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FleetError(f"{where}: expected a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise FleetError(f"{where}: {value} out of range [{low}, {high}]")
    return float(value)


def plan_fleet_text(text: str, first_ip: str = DEFAULT_FIRST_IP,
                    source: str = "fleet file") -> FleetPlan:
    """Parse and validate a fleet description (see the module docstring)."""
    doc, tables = fleet_document(text, source)
    plan = FleetPlan([])
    if "time_scale" in doc:
        plan.time_scale = _number(f"{source}: time_scale", doc["time_scale"], low=1e-6)
    if "ambient_c" in doc:
        plan.ambient_c = _number(f"{source}: ambient_c", doc["ambient_c"], low=-40, high=60)
    specs = [_table(f"{source}: miner[{i}]", t) for i, t in enumerate(tables)]
    try:
        plan.site = plan_site(doc, source)
    except SiteError as exc:
        raise FleetError(str(exc)) from None

    blocks = assign_addresses(
        [(where, table.get("ip"), table.get("count", 1)) for where, table in specs], first_ip)
    for (where, table), block in zip(specs, blocks, strict=True):
        try:
            place(plan.site, where, block, table.get("site", {}))
        except SiteError as exc:
            raise FleetError(str(exc)) from None
        for ip in block:
            plan.miners.append(MinerPlan(
                ip=ip, model=table["model"], fault=table.get("fault", "none"),
                delay_s=table.get("delay_s"), size_bytes=table.get("size_bytes"),
                ambient_c=table.get("ambient_c"),
                power_limit_w=table.get("power_limit_w"), password=table.get("password"),
                api=table.get("api"), firmware_version=table.get("firmware_version"),
                fast_boot=table.get("fast_boot", False), atm=table.get("atm"),
                write_api=table.get("write_api")))
    return plan


def _table(where: str, table: dict) -> tuple[str, dict]:
    """Validate one [[miner]] table; returns it with numbers normalised."""
    unknown = set(table) - MINER_KEYS
    if unknown:
        raise FleetError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: "
                         f"{', '.join(sorted(MINER_KEYS))}")
    if "model" not in table:
        raise FleetError(f"{where}.model: missing (one of: {', '.join(MODELS)})")
    model = table["model"]
    if not isinstance(model, str) or model not in MODELS:
        raise FleetError(f"{where}.model: unknown model {model!r}; one of: "
                         f"{', '.join(MODELS)}")
    spec = MODELS[model]
    out: dict = {"model": model}
    if "ip" in table:
        if not isinstance(table["ip"], str):
            raise FleetError(f"{where}.ip: expected a string like \"127.1.0.5\"")
        out["ip"] = table["ip"]
    if "firmware" in table and table["firmware"] != spec.firmware:
        raise FleetError(f"{where}.firmware: {table['firmware']!r} does not match model "
                         f"{model!r}, which runs {spec.firmware!r}")
    if "count" in table:
        count = table["count"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise FleetError(f"{where}.count: expected a positive integer, got {count!r}")
        out["count"] = count
    if "fault" in table:
        if table["fault"] not in FAULT_KINDS:
            raise FleetError(f"{where}.fault: unknown fault {table['fault']!r}; one of: "
                             f"{', '.join(FAULT_KINDS)}")
        out["fault"] = table["fault"]
    if "delay_s" in table:
        out["delay_s"] = _number(f"{where}.delay_s", table["delay_s"], low=0, high=3600)
    if "size_bytes" in table:
        size = table["size_bytes"]
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= 64 * 1024**3:
            raise FleetError(f"{where}.size_bytes: expected an integer number of bytes in "
                             f"[0, {64 * 1024**3}], got {size!r}")
        out["size_bytes"] = size
    if "ambient_c" in table:
        out["ambient_c"] = _number(f"{where}.ambient_c", table["ambient_c"], low=-40, high=60)
    if "power_limit_w" in table:
        limit = _number(f"{where}.power_limit_w", table["power_limit_w"], low=0)
        if spec.min_power_w >= spec.max_power_w:
            raise FleetError(f"{where}.power_limit_w: model {model!r} ({spec.firmware} "
                             "firmware) does not accept a power limit")
        if not spec.min_power_w <= limit <= spec.max_power_w:
            raise FleetError(f"{where}.power_limit_w: {limit:g} W outside what {model!r} "
                             f"accepts ({spec.min_power_w:g}-{spec.max_power_w:g} W)")
        out["power_limit_w"] = limit
    if "password" in table:
        out["password"] = _password(where, spec.firmware, table["password"])
    try:
        out["site"] = miner_site_keys(where, table)  # pdu/outlet (emulator/pdu/plan.py)
    except SiteError as exc:
        raise FleetError(str(exc)) from None
    if spec.firmware == "antminer":
        out.update(_antminer_firmware(where, table))
    else:
        rest = table
        if spec.firmware == "bitaxe" and "firmware_version" in table:
            out["firmware_version"] = _bitaxe_firmware(where, table["firmware_version"])
            rest = {k: v for k, v in table.items() if k != "firmware_version"}
        out.update(_whatsminer_api(where, spec.firmware, rest))
    if "atm" in table:
        if spec.firmware != "luxos":
            raise FleetError(f"{where}.atm: advanced thermal management is LuxOS's; model "
                             f"{model!r} runs {spec.firmware}")
        if not isinstance(table["atm"], bool):
            raise FleetError(f"{where}.atm: expected true or false, got {table['atm']!r}")
        out["atm"] = table["atm"]
    return where, out


def _antminer_firmware(where: str, table: dict) -> dict:
    """A stock Antminer's ``firmware_version``: one of the emulated generations, which differ
    in the config key they obey and in whether they lie (emulator/families/antminer.py)."""
    for key in ("api", "fast_boot", "write_api"):
        if key in table:
            raise FleetError(f"{where}.{key}: only emulated for Whatsminer firmware, not "
                             "antminer")
    if "firmware_version" not in table:
        return {}
    gen = generation_named(table["firmware_version"])
    if gen is None:
        raise FleetError(f"{where}.firmware_version: unknown stock Antminer firmware "
                         f"{table['firmware_version']!r}; one of: {', '.join(GENERATIONS)}")
    return {"firmware_version": gen.name}


def _whatsminer_api(where: str, firmware: str, table: dict) -> dict:
    """``api``, ``firmware_version`` and ``fast_boot``, coherent with each other: pyasic picks
    its Whatsminer backend from the firmware date, so a v3 machine must report a date after
    2024-11 and a v2 machine one before."""
    keys = [k for k in ("api", "firmware_version", "fast_boot", "write_api") if k in table]
    if not keys:
        return {}
    if firmware != "whatsminer":
        raise FleetError(f"{where}.{keys[0]}: only emulated for Whatsminer firmware, not "
                         f"{firmware}")
    out: dict = {}
    api = table.get("api")
    if api is not None and api not in ("v2", "v3"):
        raise FleetError(f"{where}.api: expected \"v2\" or \"v3\", got {api!r}")
    version = table.get("firmware_version")
    if version is not None:
        implied = api_for_version(version) if isinstance(version, str) else None
        if implied is None:
            raise FleetError(f"{where}.firmware_version: expected a btminer version such as "
                             f"\"20250915.16.Rel2\" (YYYYMMDD first), got {version!r}")
        if api is not None and api != implied:
            raise FleetError(f"{where}.firmware_version: {version} is firmware for API "
                             f"{implied} (pyasic speaks v3 only to firmware dated after "
                             f"2024-11), but api = {api!r}")
        api = implied
        out["firmware_version"] = version
    if api is not None:
        out["api"] = api
    if "fast_boot" in table:
        if not isinstance(table["fast_boot"], bool):
            raise FleetError(f"{where}.fast_boot: expected true or false, got "
                             f"{table['fast_boot']!r}")
        out["fast_boot"] = table["fast_boot"]
    if "write_api" in table:
        if not isinstance(table["write_api"], bool):
            raise FleetError(f"{where}.write_api: expected true or false, got "
                             f"{table['write_api']!r}")
        if table["write_api"] and "password" not in table:
            raise FleetError(f"{where}.write_api: the firmware switches the write API on only "
                             "once the admin password is changed; give this miner a "
                             "password too")
        out["write_api"] = table["write_api"]
    return out


def _bitaxe_firmware(where: str, value: object) -> str:
    """An AxeOS version ("v2.4.5", "v2.14.0-3-gabc"): which endpoints and reply shape the
    Bitaxe serves (emulator/families/bitaxe.py)."""
    parsed = axeos_version(value) if isinstance(value, str) else None
    if parsed is None or parsed[0] != 2 or parsed[1] < 4:
        raise FleetError(f"{where}.firmware_version: expected an AxeOS 2.x version from "
                         f"v2.4.0 on, such as \"v2.4.5\" or \"v2.14.0\", got {value!r}")
    return str(value)


def _password(where: str, firmware: str, value: object) -> str:
    """A firmware password, checked without ever echoing it (fleet files hold test secrets
    that the driver tests grep every output for)."""
    if FACTORY_PASSWORDS.get(firmware) is None:
        raise FleetError(f"{where}.password: {firmware} firmware has no password to change "
                         "(LuxOS logon carries none; AxeOS v2.4 has no authentication)")
    if not isinstance(value, str) or not value:
        raise FleetError(f"{where}.password: expected a non-empty string")
    if not value.isprintable():
        raise FleetError(f"{where}.password: contains control characters")
    return value


def plan_fleet_file(path: str | Path, first_ip: str = DEFAULT_FIRST_IP) -> FleetPlan:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise FleetError(f"--fleet {path}: cannot read: {exc.strerror or exc}") from None
    return plan_fleet_text(text, first_ip, source=str(path))


def build_miners(plan: FleetPlan, time_scale: float,
                 ambient_c: float | None = None) -> list[EmulatedMiner]:
    """EmulatedMiner objects for a plan. Precedence: per-miner, then file, then argument."""
    default_ambient = plan.ambient_c if plan.ambient_c is not None else (
        ambient_c if ambient_c is not None else DEFAULT_AMBIENT_C)
    miners = []
    for p in plan.miners:
        miner = EmulatedMiner(
            ip=p.ip, spec=MODELS[p.model], time_scale=time_scale,
            ambient_c=p.ambient_c if p.ambient_c is not None else default_ambient)
        if p.fault != "none" or p.delay_s is not None or p.size_bytes is not None:
            miner.fault = Fault(kind=p.fault)
            if p.delay_s is not None:
                miner.fault.delay_s = p.delay_s
            if p.size_bytes is not None:
                miner.fault.size_bytes = p.size_bytes
        if p.password is not None:
            miner.password = p.password
        if miner.spec.firmware == "antminer":
            miner.firmware_version = p.firmware_version or DEFAULT_GENERATION
        if miner.spec.firmware == "whatsminer":
            miner.api = p.api or "v2"
            miner.firmware_version = p.firmware_version
            miner.fast_boot = p.fast_boot
            # every Whatsminer ramps to full hashrate over minutes after power_on
            miner.ramp_s = V3_RAMP_S
            if p.write_api is not None:
                miner.firmware_state[WHATSMINER_WRITE_API_KEY] = p.write_api
        if miner.spec.firmware == "bitaxe":
            miner.firmware_version = p.firmware_version or BITAXE_DEFAULT_VERSION
        if miner.spec.firmware == "luxos":
            miner.ramp_s = LUXOS_RAMP_S  # a wakeup ramps the boards like a boot
            if p.atm is not None:
                miner.firmware_state[LUXOS_ATM_KEY] = p.atm
        if p.power_limit_w is not None:
            miner.actor = "fleet-file"
            miner.set_power_limit(p.power_limit_w)
            miner.actor = "client"
        miners.append(miner)
    return miners
