"""The simulated fleet of a backtest, read from the same fleet files ``curtaild emulate
--fleet`` takes, without importing the emulator.

A backtest needs, per machine, only its address (its identity), its model (whose nameplate
and efficiency curve the core's catalogue holds), a starting power limit and whether its
firmware applies a limit without restarting (``fast_boot``). Everything else a fleet file may
say (faults, passwords, firmware generations, PDUs) describes how an emulated machine
misbehaves on the wire; the emulator validates those values when it runs the file, and a
backtest has no wire, so it uses none of them. Unknown keys are refused by both (one
vocabulary, core/fleet.py), so a typo is caught whichever command reads the file first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from curtaild.core.fleet import (
    DEFAULT_FIRST_IP,
    MINER_KEYS,
    FleetError,
    assign_addresses,
    fleet_document,
)
from curtaild.core.models import MODELS

#: Fleet files larger than this are refused before they are read (a 100,000-machine file
#: written one table per machine is about 10 MB).
MAX_FLEET_FILE_BYTES = 64 * 1024 * 1024


@dataclass(slots=True)
class SimPlan:
    """One machine to simulate."""

    ip: str
    model: str  # key of core.models.MODELS
    power_limit_w: float | None = None
    fast_boot: bool = False


@dataclass(slots=True)
class SimFleet:
    miners: list[SimPlan]


def _count(where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FleetError(f"{where}.count: must be a whole number of at least 1, got {value!r}")
    return value


def _limit(where: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e6:
        raise FleetError(f"{where}.power_limit_w: must be a number of watts above 0, "
                         f"got {value!r}")
    return float(value)


def read_fleet_text(text: str, source: str = "fleet file",
                    first_ip: str = DEFAULT_FIRST_IP) -> SimFleet:
    """The machines of a fleet file (see emulator/fleet.py for the format)."""
    _doc, tables = fleet_document(text, source)
    specs = []
    for i, table in enumerate(tables):
        where = f"{source}: miner[{i}]"
        unknown = set(table) - MINER_KEYS
        if unknown:
            raise FleetError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: "
                             f"{', '.join(sorted(MINER_KEYS))}")
        model = table.get("model")
        if not isinstance(model, str) or model not in MODELS:
            raise FleetError(f"{where}.model: unknown model {model!r}; one of: "
                             f"{', '.join(MODELS)}")
        ip = table.get("ip")
        if ip is not None and not isinstance(ip, str):
            raise FleetError(f"{where}.ip: must be a string like \"127.1.0.10\"")
        fast_boot = table.get("fast_boot", False)
        if not isinstance(fast_boot, bool):
            raise FleetError(f"{where}.fast_boot: must be true or false")
        specs.append((where, ip, _count(where, table.get("count", 1)), model,
                      _limit(where, table.get("power_limit_w")), fast_boot))
    blocks = assign_addresses([(where, ip, count) for where, ip, count, *_ in specs], first_ip)
    miners = [SimPlan(ip=ip, model=model, power_limit_w=limit, fast_boot=fast_boot)
              for (_w, _ip, _n, model, limit, fast_boot), block in zip(specs, blocks, strict=True)
              for ip in block]
    return SimFleet(miners)


def read_fleet_file(path: str | Path) -> SimFleet:
    """:func:`read_fleet_text` of a file, with the file named in every error."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_FLEET_FILE_BYTES:
            raise FleetError(f"--fleet {p}: larger than {MAX_FLEET_FILE_BYTES // 2**20} MiB")
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise FleetError(f"--fleet {p}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise FleetError(f"--fleet {p}: not UTF-8 text") from None
    return read_fleet_text(text, source=str(p))
