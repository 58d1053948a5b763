"""The site inventory: where each miner is -- container, rack, PDU outlet, phase.

An optional site map, inline (``[[inventory.miner]]``) or in a file an operator exports from a
spreadsheet (``[inventory] file = "site-map.csv"``; a ``.toml`` file with ``[[miner]]`` tables
works too). Each row names a miner by MAC, serial or IP (``id``) and places it::

    id,container,rack,pdu,outlet,phase
    AA:BB:CC:00:00:01,C1,R01,pdu-r01,1,L1
    127.180.3.7,C1,R01,pdu-r01,1,L1        # a second machine on the same outlet (shared)

``pdu`` is a ``[[pdu]]``'s ``name`` or ``address``; ``outlet`` a 1-based outlet number;
``phase`` L1, L2 or L3. Every column but ``id`` is optional.

What it is for: labels (``plan``, ``status``, metrics, MQTT) say where a machine is; ``[guards]
exclude`` and MQTT overrides may name ``rack:R01`` or ``container:C1``; the hard power-down
tier (controller/outlets.py) switches a machine's outlet, and only when every machine on that
outlet should be off; phase balance needs the phases.

Problems are reported like the rest of the config, one ``key: reason`` line each, naming the
row (``inventory.file site-map.csv line 4: outlet: ...``), so a 2,000-row sheet is fixed in one
pass. Nothing is partly applied: a map with one bad row is rejected whole.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PHASES = ("L1", "L2", "L3")
COLUMNS = ("id", "container", "rack", "pdu", "outlet", "phase")
#: A site map larger than this is refused before it is read (a 100,000-row CSV is ~6 MB).
MAX_MAP_BYTES = 32 * 1024 * 1024
_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$")
_SERIAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,63}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/ -]{0,63}$")
#: what ``[guards] exclude`` and overrides may name besides a miner
GROUP_KINDS = ("rack", "container")


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one miner is. ``pdu`` is the PDU's key (its name, else its address)."""

    id: str  # as written: MAC (upper case, ':'), serial or IP
    container: str | None = None
    rack: str | None = None
    pdu: str | None = None
    outlet: int | None = None
    phase: str | None = None

    @property
    def outlet_key(self) -> tuple[str, int] | None:
        return (self.pdu, self.outlet) if self.pdu is not None and self.outlet else None

    def labels(self) -> dict[str, str]:
        """Non-empty placement fields as strings (metrics, MQTT, status)."""
        out = {"container": self.container, "rack": self.rack, "pdu": self.pdu,
               "outlet": str(self.outlet) if self.outlet else None, "phase": self.phase}
        return {k: v for k, v in out.items() if v}


def normalise_id(text: str) -> str:
    """A MAC, serial or IPv4 address, normalised (MAC upper case with ':'); ValueError."""
    t = text.strip()
    if _MAC.match(t):
        return t.upper().replace("-", ":")
    if re.fullmatch(r"[0-9.]+", t):
        try:
            return str(ipaddress.IPv4Address(t))
        except ValueError:
            raise ValueError(f"{t!r} is not a valid IPv4 address") from None
    if _SERIAL.match(t):
        return t
    raise ValueError(f"{t!r} is neither a MAC (aa:bb:cc:dd:ee:ff), an IPv4 address nor a "
                     "serial number (letters, digits, _./-)")


def check_row(row: dict, pdus: dict[str, int | None]) -> Placement:
    """One placement from a dict of column -> value (strings from a CSV, or TOML values);
    ``pdus`` maps every accepted PDU reference (name and address) to its outlet count (None:
    unknown). Raises ValueError("key: reason")."""
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"{sorted(unknown)[0]}: unknown column; allowed: "
                         f"{', '.join(COLUMNS)}")
    raw_id = row.get("id")
    if not isinstance(raw_id, str) or not raw_id.strip():
        raise ValueError("id: required (the miner's MAC, serial or IP)")
    try:
        ident = normalise_id(raw_id)
    except ValueError as exc:
        raise ValueError(f"id: {exc}") from None
    fields: dict[str, object] = {}
    for key in ("container", "rack"):
        value = row.get(key)
        if value in (None, ""):
            continue
        if not isinstance(value, str) or not _NAME.match(value.strip()):
            raise ValueError(f"{key}: {value!r} is not a name (letters, digits, _.:/- and "
                             "spaces, at most 64)")
        fields[key] = value.strip()
    pdu = row.get("pdu")
    outlet = row.get("outlet")
    if pdu in (None, "") and outlet in (None, ""):
        pass
    elif pdu in (None, ""):
        raise ValueError("pdu: required with outlet (a [[pdu]] name or address)")
    elif outlet in (None, ""):
        raise ValueError("outlet: required with pdu (a 1-based outlet number)")
    else:
        if not isinstance(pdu, str) or pdu.strip() not in pdus:
            known = ", ".join(sorted(pdus)) or "none configured"
            raise ValueError(f"pdu: {pdu!r} is not a [[pdu]] name or address (known: {known})")
        try:
            number = int(outlet) if not isinstance(outlet, bool) else -1  # type: ignore[arg-type]
        except (TypeError, ValueError):
            number = -1
        if isinstance(outlet, float) or number < 1:
            raise ValueError(f"outlet: {outlet!r} is not an outlet number (1, 2, ...)")
        count = pdus[pdu.strip()]
        if count is not None and number > count:
            raise ValueError(f"outlet: {number} but PDU {pdu.strip()!r} has {count} outlets")
        fields["pdu"], fields["outlet"] = pdu.strip(), number
    phase = row.get("phase")
    if phase not in (None, ""):
        if not isinstance(phase, str) or phase.strip().upper() not in PHASES:
            raise ValueError(f"phase: {phase!r} is not one of {', '.join(PHASES)}")
        fields["phase"] = phase.strip().upper()
    return Placement(id=ident, **fields)  # type: ignore[arg-type]


def read_map_file(path: str | Path) -> list[tuple[str, dict]]:
    """(where, row) for every row of a CSV or TOML site map; ValueError naming the file."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_MAP_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {p}: {exc.strerror or exc}") from None
    if len(raw) > MAX_MAP_BYTES:
        raise ValueError(f"{p} is larger than {MAX_MAP_BYTES // 2**20} MiB")
    try:
        text = raw.decode("utf-8-sig")  # spreadsheets write a BOM
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p} is not UTF-8 text (byte {exc.start})") from None
    if p.suffix.lower() == ".toml":
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{p} is not valid TOML: {exc}") from None
        extra = set(doc) - {"miner"}
        if extra:
            raise ValueError(f"{p}: unknown key {sorted(extra)[0]!r}; a TOML site map holds "
                             "[[miner]] tables")
        tables = doc.get("miner", [])
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise ValueError(f"{p}: 'miner' must be an array of tables ([[miner]])")
        return [(f"{p} miner[{i}]", t) for i, t in enumerate(tables)]
    reader = csv.reader(io.StringIO(text))
    rows = [r for r in reader]
    while rows and not any(c.strip() for c in rows[0]):
        rows.pop(0)
    if not rows:
        raise ValueError(f"{p} is empty (expected a header: {','.join(COLUMNS)})")
    header = [c.strip().lower() for c in rows[0]]
    bad = [c for c in header if c not in COLUMNS]
    if bad or "id" not in header:
        what = f"unknown column {bad[0]!r}" if bad else "no 'id' column"
        raise ValueError(f"{p} line 1: {what}; the header names columns of: "
                         f"{', '.join(COLUMNS)}")
    out = []
    for n, cells in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
            continue
        if len(cells) > len(header):
            raise ValueError(f"{p} line {n}: {len(cells)} cells, the header has "
                             f"{len(header)}")
        out.append((f"{p} line {n}", dict(zip(header, (c.strip() for c in cells),
                                             strict=False))))
    return out


class Inventory:
    """Placements looked up by a reading's identities (key, MAC, serial, IP)."""

    def __init__(self, placements: Iterable[Placement] = ()) -> None:
        self.placements = list(placements)
        self._by_id = {p.id.casefold(): p for p in self.placements}

    def __bool__(self) -> bool:
        return bool(self.placements)

    def find(self, *ids: str | None) -> Placement | None:
        """The placement of the first identity that has one (MAC, serial, then IP)."""
        for i in ids:
            if i:
                p = self._by_id.get(i.casefold())
                if p is not None:
                    return p
        return None

    def of(self, reading) -> Placement | None:
        """A MinerReading's placement (by MAC, serial, key, then IP)."""
        return self.find(reading.mac, reading.serial, reading.key, reading.ip)

    def groups(self) -> set[str]:
        """Every ``rack:NAME`` and ``container:NAME`` the map names."""
        out = set()
        for p in self.placements:
            if p.rack:
                out.add(f"rack:{p.rack}")
            if p.container:
                out.add(f"container:{p.container}")
        return out

    def members(self, group: str, readings) -> list:
        """Readings in ``rack:NAME`` or ``container:NAME`` (empty for anything else)."""
        kind, _, name = group.partition(":")
        if kind not in GROUP_KINDS or not name:
            return []
        out = []
        for r in readings:
            p = self.of(r)
            if p is not None and getattr(p, kind) == name:
                out.append(r)
        return out


def parse_group(text: str) -> tuple[str, str] | None:
    """``rack:R01`` -> ("rack", "R01"); None when ``text`` names no group."""
    kind, sep, name = text.strip().partition(":")
    if sep and kind.casefold() in GROUP_KINDS and name.strip() and not _MAC.match(text.strip()):
        return kind.casefold(), name.strip()
    return None
