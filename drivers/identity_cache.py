"""Warm start: the identity of each discovered miner, kept in the state directory.

Discovery (``pyasic.get_miner``) asks every address what it is -- several requests and ~4 ms of
client CPU per miner -- before the first poll: at 10,000 miners a restart spent minutes
before it could command anything (issue 19). What discovery learns is which pyasic class
speaks to the address (make, model, firmware family and API generation are that class), and
the machine's MAC and serial. Kept in ``identities.json`` beside the journal (with a LuxOS
machine's profile watts), a restart builds each miner object from its class at once, with no
request, and the first sweep is the ordinary poll of a known machine.

What discovery would have read besides -- the MAC and serial again, whether the firmware takes
our password, LuxOS profiles and ATM -- is read in the sweeps after the first, a share of the
fleet each (``drivers/miners.py``, SETTLE_SWEEPS), and before any command to a machine not yet
read. At 10,000 miners these reads made the first sweep cost four steady ones. A cached
identity that no longer answers (new firmware) fails its polls and is re-discovered in the
background like any miner that stops answering (``rediscover_after_failures``); another
machine of the same class at the address is found by the MAC read.

Only classes of pyasic's own table (``MINER_CLASSES``, what ``get_miner`` picks from) are built
from the file, by type and model: the file never names code to run.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("curtaild.identities")

CACHE_FILE = "identities.json"
VERSION = 1
#: Bounds of the profile watts taken from the file (any other value: none taken, the profiles
#: are read from the machine): no miner draws 20 kW, no firmware has 64 profiles.
MAX_PRESET_W = 20_000.0
MAX_PRESETS = 64


_by_class: dict[type, str] | None = None


def _classes() -> dict[type, str]:
    """pyasic's table of miner classes, reversed: class -> "TYPE/MODEL" (what get_miner
    picks from). Classes outside it are not cached (always discovered)."""
    global _by_class
    if _by_class is None:
        from pyasic.miners.factory import MINER_CLASSES

        out: dict[type, str] = {}
        for kind, models in MINER_CLASSES.items():
            for model, cls in models.items():
                out.setdefault(cls, f"{kind.name}/{'' if model is None else model}")
        _by_class = out
    return _by_class


_by_shape: dict[tuple[str, tuple[type, ...]], str] | None = None
#: A Whatsminer firmware API date after which pyasic 0.79 speaks API v3 (BTMiner.__new__)
V3_VERSION = "20250101"


def class_name(miner: Any) -> str | None:
    """The identity of ``miner``'s class in pyasic's table, None if it has none.

    pyasic builds a Whatsminer's class per object (``BTMiner.__new__``: API v2 or v3 by the
    firmware's API date, then the model's bases): it is found by name and model bases, and
    ``@v3`` says which API it speaks."""
    cls = type(miner)
    table = _classes()
    name = table.get(cls)
    if name is not None:
        return name
    global _by_shape
    if _by_shape is None:
        _by_shape = {(k.__name__, k.__bases__[1:]): v for k, v in table.items()}
    name = _by_shape.get((cls.__name__, cls.__bases__[1:]))
    if name is None:
        return None
    from pyasic.miners.backends.btminer import BTMinerV3

    return name + ("@v3" if isinstance(miner, BTMinerV3) else "")


def _resolve(name: str) -> type | None:
    """The class named by :func:`class_name`'s value; None for anything else (the file names
    code to run: only pyasic's own table is looked up)."""
    from pyasic.miners.factory import MINER_CLASSES, MinerTypes

    name = name.removesuffix("@v3")
    kind, sep, model = name.partition("/")
    if not sep or kind not in MinerTypes.__members__:
        return None
    models = MINER_CLASSES.get(MinerTypes[kind], {})
    cls = models.get(model or None)
    return cls if isinstance(cls, type) else None


class IdentityCache:
    """``identities.json``: address -> pyasic class, MAC, serial, LuxOS profile watts."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        self.dirty = False
        #: counts the changes to ``entries`` (a leader shares them again only after one)
        self.version = 0
        self.hits = 0
        self.load()

    def _changed(self) -> None:
        self.dirty = True
        self.version += 1

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("%s unreadable (%s): every miner is discovered afresh", self.path, exc)
            return
        if not isinstance(data, dict) or data.get("version") != VERSION:
            log.warning("%s: unknown format: every miner is discovered afresh", self.path)
            return
        miners = data.get("miners")
        if isinstance(miners, dict):
            self.entries = {ip: e for ip, e in miners.items()
                            if isinstance(ip, str) and isinstance(e, dict)
                            and isinstance(e.get("class"), str)}

    def build(self, ip: str) -> Any | None:
        """The miner object for ``ip`` from its cached class; None if none is cached."""
        entry = self.entries.get(ip)
        if entry is None:
            return None
        cls = _resolve(entry["class"])
        if cls is None:
            self.forget(ip)
            return None
        try:
            miner = cls(ip, V3_VERSION if entry["class"].endswith("@v3") else None)
        except Exception as exc:
            log.warning("%s: cached identity %s unusable (%s): discovering", ip,
                        entry["class"], exc)
            self.forget(ip)
            return None
        self.hits += 1
        return miner

    def record(self, ip: str, miner: Any) -> None:
        name = class_name(miner)
        if name is None:
            self.forget(ip)
            return
        entry = self.entries.get(ip)
        if entry is None or entry.get("class") != name:
            self.entries[ip] = {"class": name}
            self._changed()

    def note(self, ip: str, mac: str | None, serial: str | None,
             presets_w: tuple[float, ...] = ()) -> None:
        """What the polls learned of ``ip``'s machine: MAC, serial and (LuxOS) the watts of
        its power profiles."""
        entry = self.entries.get(ip)
        if entry is None:
            return
        now = {"mac": mac, "serial": serial, "presets_w": list(presets_w) or None}
        if any(entry.get(k) != v for k, v in now.items()):
            entry.update(now)
            if not presets_w:
                entry.pop("presets_w")
            self._changed()

    def cached_ids(self, ip: str) -> tuple[str | None, str | None]:
        """The MAC and serial last read at ``ip`` (None where unknown or not a string)."""
        entry = self.entries.get(ip) or {}
        mac, serial = entry.get("mac"), entry.get("serial")
        return (mac if isinstance(mac, str) and mac else None,
                serial if isinstance(serial, str) and serial else None)

    def cached_presets(self, ip: str) -> tuple[float, ...]:
        """The profile watts last read at ``ip``, ascending; () if none or malformed (the
        file is ours, but a hand edit must not put a NaN under the guards)."""
        raw = (self.entries.get(ip) or {}).get("presets_w")
        if not isinstance(raw, list) or not raw or len(raw) > MAX_PRESETS:
            return ()
        out = []
        for w in raw:
            if isinstance(w, bool) or not isinstance(w, int | float) \
                    or not math.isfinite(w) or not 0 < w <= MAX_PRESET_W:
                return ()
            out.append(float(w))
        return tuple(sorted(set(out)))

    def merge(self, shared: dict) -> int:
        """Entries shared by another instance (the cluster's leader) for addresses this
        cache has none for; returns how many were added. Only pyasic's table is looked up
        when one is built, as for the file's own entries."""
        added = 0
        for ip, entry in shared.items():
            if (isinstance(ip, str) and ip not in self.entries and isinstance(entry, dict)
                    and isinstance(entry.get("class"), str)):
                self.entries[ip] = {"class": entry["class"]}
                added += 1
        if added:
            self._changed()
        return added

    def forget(self, ip: str) -> None:
        if self.entries.pop(ip, None) is not None:
            self._changed()

    def save(self) -> None:
        """Atomically, 0600; never fatal (the cache only saves time)."""
        if not self.dirty:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": VERSION, "miners": self.entries}, f, separators=(",", ":"))
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError as exc:
            log.warning("cannot write %s: %s (the next start discovers every miner)", self.path,
                        exc.strerror or exc)
