"""LuxOS (LUXminer) beyond what pyasic 0.79 does for it: sessions, ATM, curtailment state.

Three things real LuxOS firmware does that pyasic leaves to its caller (docs.luxor.tech;
shared/firmware-behaviour.md):

* **One session at a time.** Every write carries a session id; ``logon`` answers ``402
  Another session is active`` while another actor (LuxOS Commander, a script, the web UI) holds
  one, and a session dies a minute after its last use or when luxminer restarts. pyasic keeps
  the first id it got forever and, when its ``logon`` fails, sends writes with no id at all.
  ``open_session`` takes the live session (``session`` reveals it: LuxOS sessions coordinate,
  they do not authenticate) or logs on; a 402 is ``SessionBusy``, retried by the driver's
  jittered retries within the command deadline. A session curtaild created is logged off
  after the command, so curtaild never locks other actors out for a minute.
* **ATM undoes power limits.** Advanced thermal management steps the profile back up toward
  the default while the machine is cool, and pyasic's ``set_power_limit`` turns ATM back on
  after every ``profileset``. The documented choice (README "How it decides"): while curtaild
  holds a power limit on a LuxOS machine, ATM is off (``atmset enabled=false`` *before* the
  profile is set, so pyasic leaves it off); the operator's setting is remembered first --
  in the journal, so a restart in between loses nothing -- and put back when the limit is
  released. A profile that still drifts (someone turned ATM on again) shows as a limit off
  its target: the loop's verification re-sets it once per ``verify_grace_s``, never every
  tick.
* **Curtailment is a stored state, not a hashrate.** pyasic has no ``is_mining`` for LuxOS;
  ``config.CurtailMode`` says whether the machine is curtailed ("Sleep") or merely not hashing
  yet (booting, ramping after a wakeup or a power cut).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from pyasic.errors import APIError

log = logging.getLogger("curtaild.luxos")

#: Journal meta key: {miner key: the operator's ATM "Enabled" before curtaild limited it}.
ATM_META_KEY = "luxos_atm_operator"
BUSY = "Another session is active"


class SessionBusy(Exception):
    """Another actor holds the machine's one session (LuxOS ``402``); worth retrying."""

    retryable = True


class MetaStore(Protocol):
    """Where the operator's ATM settings survive a restart (controller.journal.Journal)."""

    def get_meta(self, key: str) -> object | None: ...

    def set_meta(self, key: str, value: object) -> None: ...


async def open_session(rpc: Any) -> bool:
    """Give ``rpc`` a live session id; True when curtaild created it (then ``close_session``).

    SessionBusy when ``logon`` finds another session active (one appeared between our
    ``session`` and our ``logon``: the next attempt takes it)."""
    rpc.session_token = None
    reply = await rpc.session()
    sid = str(reply["SESSION"][0].get("SessionID") or "")
    if sid:
        rpc.session_token = sid
        return False
    try:
        reply = await rpc.logon()
    except APIError as exc:
        if BUSY in str(exc):
            raise SessionBusy(f"LuxOS: {BUSY.lower()} (another tool holds the machine's one "
                              "session)") from None
        raise
    rpc.session_token = str(reply["SESSION"][0]["SessionID"])
    return True


async def close_session(rpc: Any, created: bool) -> None:
    """Log off a session curtaild created, so the next actor can act; best effort (it expires
    by itself a minute later)."""
    token, rpc.session_token = rpc.session_token, None
    if not created or not token:
        return
    try:
        await rpc.send_command("logoff", token)
    except Exception as exc:  # gone already (luxminer restarted): nothing to free
        log.debug("%s: logoff: %r", getattr(rpc, "ip", "?"), exc)


async def atm_enabled(rpc: Any) -> bool:
    """The machine's ATM switch (``atm``: ``ATM[0].Enabled``); APIError/LookupError if
    unreadable."""
    reply = await rpc.atm()
    return bool(reply["ATM"][0]["Enabled"])


async def set_atm(rpc: Any, enabled: bool) -> None:
    """``atmset enabled=...`` in the current session; APIError when the firmware refuses."""
    await rpc.atmset(enabled=enabled)


async def curtailed(rpc: Any) -> bool | None:
    """``config.CurtailMode``: True "Sleep", False "None", None when it cannot be read."""
    try:
        reply = await rpc.config()
        mode = reply["CONFIG"][0].get("CurtailMode")
    except (APIError, LookupError, TypeError) as exc:
        log.debug("%s: CurtailMode unread: %r", getattr(rpc, "ip", "?"), exc)
        return None
    if mode is None:
        return None
    return str(mode).lower() == "sleep"


def profile_for(target_w: float, steps_w: tuple[float, ...]) -> float | None:
    """The watts of the profile pyasic picks for ``target_w`` (the highest at or below it)."""
    fitting = [w for w in steps_w if w <= target_w]
    return max(fitting) if fitting else None


class AtmMemory:
    """The operator's ATM setting of every LuxOS machine whose ATM curtaild turned off,
    written to the journal before ATM is touched and removed once it is put back.

    Without a store (a plan, a test) it lives in memory only."""

    def __init__(self) -> None:
        self._store: MetaStore | None = None
        self._local: dict[str, bool] = {}

    def attach(self, store: MetaStore) -> None:
        self._store = store

    def _all(self) -> dict[str, bool]:
        if self._store is None:
            return dict(self._local)
        value = self._store.get_meta(ATM_META_KEY)
        return {str(k): bool(v) for k, v in value.items()} if isinstance(value, dict) else {}

    def _write(self, value: dict[str, bool]) -> None:
        if self._store is None:
            self._local = dict(value)
        else:
            self._store.set_meta(ATM_META_KEY, value)

    def get(self, key: str) -> bool | None:
        return self._all().get(key)

    def remember(self, key: str, enabled: bool) -> None:
        """Record ``enabled`` as the operator's setting unless one is already recorded (then
        the ATM now off is curtaild's doing). Raises whatever the store raises."""
        known = self._all()
        if key not in known:
            known[key] = enabled
            self._write(known)

    def forget(self, key: str) -> None:
        known = self._all()
        if known.pop(key, None) is not None:
            self._write(known)

    def keys(self) -> set[str]:
        return set(self._all())


async def hold_atm(rpc: Any, key: str, memory: AtmMemory) -> str:
    """Before curtaild sets a profile: remember the operator's ATM setting (journal first),
    then turn ATM off so the profile stays where curtaild puts it."""
    enabled = await atm_enabled(rpc)
    try:
        memory.remember(key, enabled)
    except Exception as exc:
        # not journaled: a restart could not put the operator's ATM back, so leave it alone
        raise AtmNotJournaled(f"ATM setting not journaled, ATM left as it is: {exc}") from exc
    if enabled:
        await set_atm(rpc, False)
        return "atm off"
    return "atm already off"


async def release_atm(rpc: Any, key: str, memory: AtmMemory,
                      on_unknown: Callable[[], None] | None = None) -> str:
    """After curtaild released a LuxOS machine's limit: put the operator's ATM setting back
    (and forget it). Nothing recorded: ATM is not curtaild's to change."""
    operator = memory.get(key)
    if operator is None:
        if on_unknown is not None:
            on_unknown()
        return "atm untouched"
    if operator and not await atm_enabled(rpc):
        await set_atm(rpc, True)
        memory.forget(key)
        return "atm restored on"
    memory.forget(key)
    return "atm restored" if operator else "atm left off (operator's setting)"


class AtmNotJournaled(Exception):
    """The operator's ATM setting could not be written: ATM is left alone, the limit too."""

    retryable = False
