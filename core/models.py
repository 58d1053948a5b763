"""Nameplate specifications of the emulated machines.

Figures are the manufacturers' public stock specifications (hashrate at nameplate power);
idle power is what a sleeping control board plus fans draw. ``firmware`` is the emulated
firmware family, which decides the protocols the miner speaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Firmware families the emulator speaks.
FAMILIES: tuple[str, ...] = ("antminer", "whatsminer", "luxos", "bitaxe")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One machine model as sold: what the physics model needs and what firmware reports."""

    make: str  # as pyasic names it: "AntMiner", "WhatsMiner", "BitAxe"
    model: str  # as the firmware reports it, e.g. "S19j Pro"
    firmware: str  # one of FAMILIES
    hashrate_ths: float  # nameplate hashrate
    power_w: float  # nameplate wall power
    idle_power_w: float  # asleep: control board and slow fans
    min_power_w: float  # lowest power target the firmware accepts
    max_power_w: float  # highest power target the firmware accepts
    chains: int = 3
    chips_per_chain: int = 76
    fans: int = 4
    boot_s: float = 90.0  # from wake/reboot to hashing, before --time-scale

    @property
    def efficiency_j_per_th(self) -> float:
        return self.power_w / self.hashrate_ths


def _spec(make: str, model: str, firmware: str, ths: float, w: float, idle: float,
          lo: float, hi: float, **kw: Any) -> ModelSpec:
    return ModelSpec(make, model, firmware, ths, w, idle, lo, hi, **kw)


#: key -> spec; the key is what ``--fleet`` files use as ``model``.
MODELS: dict[str, ModelSpec] = {
    # Bitmain stock firmware (web UI + bmminer RPC; reports no wattage).
    "S19": _spec("AntMiner", "S19", "antminer", 95.0, 3250.0, 40.0, 3250.0, 3250.0),
    "S19j Pro": _spec("AntMiner", "S19j Pro", "antminer", 104.0, 3068.0, 40.0, 3068.0, 3068.0,
                      chips_per_chain=126),
    "S21": _spec("AntMiner", "S21", "antminer", 200.0, 3500.0, 45.0, 3500.0, 3500.0,
                 chips_per_chain=108),
    # MicroBT Whatsminer (btminer RPC, reports power and accepts power limits).
    "M30S": _spec("WhatsMiner", "M30S", "whatsminer", 88.0, 3344.0, 35.0, 1500.0, 3600.0,
                  chips_per_chain=148, fans=2, boot_s=120.0),
    "M50": _spec("WhatsMiner", "M50", "whatsminer", 114.0, 3306.0, 35.0, 1500.0, 3600.0,
                 chips_per_chain=105, fans=2, boot_s=120.0),
    # Luxor LuxOS on Antminer hardware (profiles, curtail sleep/wakeup, power targets). The
    # power range is the ends of the 25-step profile ladder (the captured S19k Pro ladder,
    # 784-4195 W at 2794 W, scaled to the nameplate: emulator/families/luxos.py).
    "S19 XP": _spec("AntMiner", "S19 XP", "luxos", 141.0, 3010.0, 40.0, 845.0, 4519.0,
                    chips_per_chain=110, boot_s=60.0),
    "S19j Pro LuxOS": _spec("AntMiner", "S19j Pro", "luxos", 104.0, 3068.0, 40.0, 861.0, 4606.0,
                            chips_per_chain=126, boot_s=60.0),
    # Bitaxe (AxeOS/ESP-Miner HTTP API): a hobby miner that cannot be curtailed remotely
    # through pyasic, present in real fleets and a test of "cannot command" handling.
    "BitAxe Gamma": _spec("BitAxe", "Gamma", "bitaxe", 1.2, 17.0, 3.0, 17.0, 17.0,
                          chains=1, chips_per_chain=1, fans=1, boot_s=10.0),
}


#: Exponent of the hashrate/ASIC-power curve: hashrate ~ power**ALPHA, ALPHA < 1, so J/TH
#: improves when underclocked (lower voltage), as measured on real power-tuned firmware.
ALPHA = 0.75


def demo_mix(count: int) -> list[str]:
    """The demo fleet's models (``curtaild emulate --count N``, the backtest's default fleet):
    every model in turn, so every family appears."""
    keys = list(MODELS)
    return [keys[i % len(keys)] for i in range(count)]
