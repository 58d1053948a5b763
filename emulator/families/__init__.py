"""Firmware families: each turns protocol requests into calls on the physical model.

``get_family(name)`` returns the one shared instance of a family (families are stateless
protocol code; per-machine state lives on ``EmulatedMiner``). Modules are imported lazily so
that a missing or broken family fails with a message naming it, not an ImportError at start.
"""

from __future__ import annotations

import importlib

from curtaild.core.models import FAMILIES
from curtaild.emulator.families.base import Family

#: family name -> (module, class)
REGISTRY: dict[str, tuple[str, str]] = {
    "antminer": ("curtaild.emulator.families.antminer", "AntminerFamily"),
    # API v2 machines are emulator.families.whatsminer's; the subclass adds API v3 per machine
    "whatsminer": ("curtaild.emulator.families.whatsminer_v3", "BtminerFamily"),
    "luxos": ("curtaild.emulator.families.luxos", "LuxosFamily"),
    "bitaxe": ("curtaild.emulator.families.bitaxe", "BitaxeFamily"),
}
assert set(REGISTRY) == set(FAMILIES), "every family in models.FAMILIES needs a registry entry"

_instances: dict[str, Family] = {}


class FamilyUnavailable(LookupError):
    """The family is unknown, or its module is missing or fails to import."""


def get_family(name: str) -> Family:
    """The shared instance of family ``name``; FamilyUnavailable with the reason otherwise."""
    family = _instances.get(name)
    if family is not None:
        return family
    try:
        module_name, class_name = REGISTRY[name]
    except KeyError:
        raise FamilyUnavailable(
            f"unknown firmware family {name!r}; known: {', '.join(REGISTRY)}") from None
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise FamilyUnavailable(
                f"firmware family {name!r} cannot be loaded: {exc}") from exc
        raise FamilyUnavailable(
            f"firmware family {name!r} is not available: module {module_name} is missing"
        ) from exc
    except (ImportError, AttributeError) as exc:
        raise FamilyUnavailable(f"firmware family {name!r} cannot be loaded: {exc}") from exc
    family = cls()
    _instances[name] = family
    return family


def unavailable_families() -> dict[str, str]:
    """name -> reason for every registered family that cannot be loaded right now."""
    out: dict[str, str] = {}
    for name in REGISTRY:
        try:
            get_family(name)
        except FamilyUnavailable as exc:
            out[name] = str(exc)
    return out
