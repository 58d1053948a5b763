"""Nameplate figures of common SHA-256 machines (manufacturers' public stock specs).

The last link of the power fallback chain (firmware -> per-miner override -> per-model table
in the config -> this table), and the reference point for what a sleeping machine would hash
and draw if woken. Matched on the model string pyasic reports, longest prefix first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Nameplate:
    hashrate_ths: float
    power_w: float
    min_limit_w: float | None = None  # lowest power target power-tuning firmware accepts
    max_limit_w: float | None = None


_TABLE: dict[str, Nameplate] = {
    "S19": Nameplate(95.0, 3250.0),
    "S19 Pro": Nameplate(110.0, 3250.0),
    "S19j Pro": Nameplate(104.0, 3068.0, 1200.0, 3400.0),
    "S19k Pro": Nameplate(120.0, 2760.0, 1200.0, 3000.0),
    "S19 XP": Nameplate(141.0, 3010.0, 1200.0, 3600.0),
    "S21": Nameplate(200.0, 3500.0, 1500.0, 3700.0),
    "S21 Pro": Nameplate(234.0, 3510.0, 1500.0, 3700.0),
    "T21": Nameplate(190.0, 3610.0),
    "M30S": Nameplate(88.0, 3344.0, 1500.0, 3600.0),
    "M30S+": Nameplate(100.0, 3400.0, 1500.0, 3600.0),
    "M30S++": Nameplate(112.0, 3472.0, 1500.0, 3600.0),
    "M50": Nameplate(114.0, 3306.0, 1500.0, 3600.0),
    "M50S": Nameplate(126.0, 3276.0, 1500.0, 3600.0),
    "M60": Nameplate(172.0, 3422.0, 1500.0, 3800.0),
    "Gamma": Nameplate(1.2, 17.0),
    "Supra": Nameplate(0.7, 15.0),
}


def lookup(model: str | None) -> Nameplate | None:
    """Best match for a pyasic model string such as 'S19j Pro (LuxOS)' or 'M50 VH10'."""
    if not model:
        return None
    name = model.split("(")[0].strip()
    name = name.removeprefix("Antminer ").removeprefix("AntMiner ")
    for key in sorted(_TABLE, key=len, reverse=True):
        if name == key or name.startswith(key + " ") or name.startswith(key + "V"):
            return _TABLE[key]
    return None
