"""Comparing an emulator's replies with replies captured from real firmware, by shape.

A conformance test cares that the emulator answers with the same keys at every level, each
with the same JSON type, as the real machine -- not the same values (those are the emulated
machine's own). ``diff(shape(captured), shape(emulated))`` lists every difference by path;
one definition, so that every family's conformance is judged by the same rule.
"""

from __future__ import annotations

import json
from pathlib import Path

#: Replies captured from real Whatsminers (v1/v2: API v2 firmware; v3: API v3): copies kept with
#: the tests (tests/emulator/captures/SOURCES.md), so a checkout alone runs them.
WHATSMINER_CAPTURES = (Path(__file__).resolve().parents[1] / "emulator" / "captures"
                       / "whatsminer")


def whatsminer_capture(gen: str, name: str) -> dict:
    """The captured reply ``name`` of capture set ``gen`` ("v1", "v2", "v3"), parsed."""
    return json.loads((WHATSMINER_CAPTURES / gen / name).read_text())


def shape(value: object) -> object:
    """Keys and JSON types, recursively (list items merged: one shape per list)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        merged: dict = {}
        kinds: set = set()
        for item in value:
            s = shape(item)
            if isinstance(s, dict):
                merged.update(s)
            else:
                kinds.add(str(s))
        return [merged] if merged else sorted(kinds)
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return type(value).__name__


def diff(real: object, ours: object, path: str = "") -> list[str]:
    """Every key missing, extra or of another type, by path."""
    if isinstance(real, dict) and isinstance(ours, dict):
        out = [f"{path}.{k}: missing" for k in real.keys() - ours.keys()]
        out += [f"{path}.{k}: extra" for k in ours.keys() - real.keys()]
        for k in real.keys() & ours.keys():
            out += diff(real[k], ours[k], f"{path}.{k}")
        return out
    if isinstance(real, list) and isinstance(ours, list):
        return diff(real[0], ours[0], f"{path}[]") if real and ours else []
    return [] if real == ours else [f"{path}: {ours} where the firmware has {real}"]
