"""Emulator fleet files and site maps of machines behind one emulated PDU (docs/pdu.md).

The hard power-down tests all describe the same shape -- one APC PDU, machines on its
outlets, and the operator's site map of them -- so they build it here rather than each
repeating the TOML and CSV.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plugged:
    """``count`` machines of ``model`` from ``ip`` on, on outlet ``outlet``."""

    model: str
    ip: str
    outlet: int
    count: int = 1
    per_outlet: int | None = None  # the emulator's machines per outlet, from this entry on


def pdu_fleet(pdu: str, outlets: int, machines: list[Plugged], *, mib: str = "apc",
              phase: str = "L1") -> str:
    """The emulator's fleet TOML: one ``[[pdu]]`` and a ``[[miner]]`` per entry."""
    out = [f'\n[[pdu]]\naddress = "{pdu}"\nmib = "{mib}"\noutlets = {outlets}\n'
           f'phase = "{phase}"\n']
    for i, m in enumerate(machines):
        out.append(("\n" if i == 0 else "") + f'[[miner]]\nmodel = "{m.model}"\nip = "{m.ip}"\n'
                   + (f"count = {m.count}\n" if m.count != 1 else "")
                   + f'pdu = "{pdu}"\noutlet = {m.outlet}\n'
                   + (f"per_outlet = {m.per_outlet}\n" if m.per_outlet is not None else ""))
    return "".join(out)


def site_map(rows: list[tuple[str, str, int]], *, pdu_key: str = "pdu-a",
             container: str = "C1", phase: str = "L1") -> str:
    """The operator's site map CSV: (address, rack, outlet) per machine."""
    return "id,container,rack,pdu,outlet,phase\n" + "".join(
        f"{ip},{container},{rack},{pdu_key},{outlet},{phase}\n" for ip, rack, outlet in rows)
