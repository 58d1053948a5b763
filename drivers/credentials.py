"""Firmware passwords for pyasic's miner objects, and telling a refused password apart.

``CredentialStore.load`` reads every secret named in ``[fleet.credentials]`` (files, systemd
credentials; ``drivers/secret.py``) when the daemon starts and on each reload, so a missing
file is a configuration error naming its key, not a poll failure later. ``resolve`` picks the
password for one machine (most specific override first, see ``controller/credentials_config``)
and ``apply`` sets it on the pyasic object, where each backend keeps it (``web.pwd`` for web
logins, ``rpc.pwd`` for the Whatsminer API).

Why ``probe`` exists: with a wrong password a stock Antminer answers every CGI with 401, and
pyasic turns that into ``is_mining() is None`` and ``stop_mining() is True`` -- a sleep that
never happened, believed. Reads over the cgminer RPC need no password, so polling alone never
notices either. ``probe`` makes one cheap authenticated request and says whether the firmware
accepted the credentials, refused them, or could not tell (no answer, no probe for the family).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from pyasic import settings as pyasic_settings
from pyasic.errors import APIError
from pydantic import SecretStr

from curtaild.core.errors import ConfigError
from curtaild.drivers.credentials_config import (
    FAMILIES,
    CredentialsConfig,
    Match,
    SecretSource,
)
from curtaild.drivers.secret import read_secret

Verdict = Literal["accepted", "refused", "unknown"]
#: Whatsminer API codes that are not about the password (so never reported as ``auth``).
NOT_AUTH_CODES = {136}  # "token over max times": the 32-tokens-per-30-min limit
#: What Whatsminer API v2 firmware answers (in clear) to every write while its "Miner API
#: Switch" is off (pyasic's send_privileged_command tests for this very text). API v3 firmware
#: reports the switch (``apiswitch``); the emulator refuses its writes with the same text.
WRITE_API_DISABLED = "can't access write cmd"
#: CGI every stock Antminer generation serves behind digest auth (pyasic reads it for the MAC).
ANTMINER_PROBE_CGI = "get_system_info"


@dataclass(frozen=True, slots=True)
class Credential:
    """One password and the config key it came from (for reports; never the value)."""

    secret: SecretStr
    source: str  # e.g. "fleet.credentials.whatsminer", "fleet.credentials.override[2]"


@dataclass(frozen=True, slots=True)
class _Override:
    index: int
    family: str | None
    matches: tuple[Match, ...]
    credential: Credential


def _read(src: SecretSource, key: str) -> Credential:
    secret = read_secret(file=src.password_file, credential=src.password_credential,
                         file_key=f"{key}.password_file",
                         credential_key=f"{key}.password_credential")
    assert secret is not None  # SecretSource guarantees one source
    return Credential(secret, key)


class CredentialStore:
    """Every configured password, read; ``resolve`` answers per machine."""

    def __init__(self, families: dict[str, Credential] | None = None,
                 overrides: list[_Override] | None = None) -> None:
        self.families = families or {}
        self.overrides = overrides or []

    def __repr__(self) -> str:  # never the secrets; which keys are set is fine
        return (f"CredentialStore(families={sorted(self.families)}, "
                f"overrides={len(self.overrides)})")

    @classmethod
    def load(cls, cfg: CredentialsConfig) -> CredentialStore:
        """Read every secret now. Raises ConfigError with one ``key: reason`` per problem."""
        problems: list[str] = []
        families: dict[str, Credential] = {}
        for family in FAMILIES:
            src = cfg.family_source(family)
            if src is not None:
                try:
                    families[family] = _read(src, f"fleet.credentials.{family}")
                except ValueError as exc:
                    problems.append(str(exc))
        overrides: list[_Override] = []
        for i, o in enumerate(cfg.override):
            try:
                cred = _read(o, f"fleet.credentials.override[{i}]")
            except ValueError as exc:
                problems.append(str(exc))
                continue
            overrides.append(_Override(i, o.family, tuple(o.parsed()), cred))
        if problems:
            raise ConfigError(problems)
        return cls(families, overrides)

    def resolve(self, *, family: str, ip: str, mac: str | None = None,
                serial: str | None = None) -> Credential | None:
        """The password for one machine: MAC or serial, then IP, then the smallest range
        (first listed among equal ones); at each level an override naming the family beats
        one that does not; then the family's own; None: pyasic's factory default."""
        mac_u = mac.upper().replace("-", ":") if mac else None
        ip_n = _ip_int(ip)
        best: tuple[tuple[int, int, int, int], Credential] | None = None
        for o in self.overrides:
            if o.family is not None and o.family != family:
                continue
            for m in o.matches:
                if m.kind == "mac" and mac_u and m.value == mac_u:
                    level, size = 0, 1
                elif m.kind == "serial" and serial and m.value == serial:
                    level, size = 0, 1
                elif m.kind == "ip" and ip_n is not None and m.low == ip_n:
                    level, size = 1, 1
                elif m.kind == "range" and ip_n is not None and m.low <= ip_n <= m.high:
                    level, size = 2, m.size
                else:
                    continue
                rank = (level, size, 0 if o.family else 1, o.index)
                if best is None or rank < best[0]:
                    best = (rank, o.credential)
        if best is not None:
            return best[1]
        return self.families.get(family)


def _ip_int(ip: str) -> int | None:
    parts = ip.split(".")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        return None
    return int.from_bytes(bytes(int(p) for p in parts), "big")


# --------------------------------------------------------------------------- pyasic objects
def _targets(miner: Any, family: str) -> list[Any]:
    """The pyasic API objects that hold a password for this family."""
    if family == "whatsminer":
        return [t for t in (getattr(miner, "rpc", None),) if t is not None]
    if family in ("antminer", "braiins", "vnish"):
        return [t for t in (getattr(miner, "web", None),) if t is not None]
    return []


def apply(miner: Any, family: str, credential: Credential | None) -> bool:
    """Set (or, with None, restore pyasic's default) the password on ``miner``; True if it
    changed. A change drops what pyasic cached from the old password: the Whatsminer v2 token
    holds the password hash for 30 minutes, and a web login token is the old session."""
    changed = False
    for target in _targets(miner, family):
        if not hasattr(target, "pwd"):
            continue
        if not hasattr(target, "_curtaild_factory_pwd"):
            target._curtaild_factory_pwd = target.pwd  # pyasic's default, to restore
        wanted = (credential.secret.get_secret_value() if credential is not None
                  else target._curtaild_factory_pwd)
        if target.pwd != wanted:
            target.pwd = wanted
            if hasattr(target, "token"):
                target.token = None
            changed = True
    return changed


def has_probe(miner: Any, family: str) -> bool:
    """Families whose refusal ``probe`` can tell: stock Antminer web UI, Whatsminer API v2
    (``get_token``) and v3 (``get_salt``)."""
    if family == "antminer":
        return getattr(miner, "web", None) is not None
    if family == "whatsminer":
        rpc = getattr(miner, "rpc", None)
        return rpc is not None and (hasattr(rpc, "get_token") or hasattr(rpc, "get_salt"))
    return False


async def probe(miner: Any, family: str, timeout_s: float, *,
                trusted: bool = True) -> tuple[Verdict, str]:
    """One cheap authenticated request: did the firmware accept the credentials?

    ``trusted``: the last verdict was "accepted", so a Whatsminer refusal may be a token the
    firmware has forgotten and earns one retry with a fresh token. Never retried when already
    refused, so a wrong password re-checked every poll costs no new token (the firmware allows
    32 per client per 30 minutes). Returns (verdict, detail); the detail never holds a secret.
    """
    try:
        if family == "antminer":
            return await asyncio.wait_for(_probe_web_digest(miner.web, timeout_s), timeout_s)
        if family == "whatsminer" and hasattr(getattr(miner, "rpc", None), "get_token"):
            return await asyncio.wait_for(_probe_btminer(miner.rpc, timeout_s, trusted),
                                          timeout_s)
        if family == "whatsminer" and hasattr(getattr(miner, "rpc", None), "get_salt"):
            return await asyncio.wait_for(_probe_btminer_v3(miner.rpc, trusted), timeout_s)
    except (TimeoutError, OSError, httpx.HTTPError, APIError, ValueError, LookupError) as exc:
        return "unknown", f"probe failed: {type(exc).__name__}"
    return "unknown", "no credential check for this firmware"


async def _probe_web_digest(web: Any, timeout_s: float) -> tuple[Verdict, str]:
    url = f"http://{web.ip}:{getattr(web, 'port', 80)}/cgi-bin/{ANTMINER_PROBE_CGI}.cgi"
    # pyasic's transport: its SSL context is built once (a bare AsyncClient builds one per
    # client, which costs more CPU than the request itself)
    async with httpx.AsyncClient(transport=pyasic_settings.transport(),
                                 timeout=timeout_s) as client:
        reply = await client.get(url, auth=httpx.DigestAuth(web.username, web.pwd))
    if reply.status_code == 401:
        return "refused", "web UI refused the configured password (HTTP 401)"
    if reply.status_code == 200:
        return "accepted", "web UI accepted the password"
    return "unknown", f"web UI answered HTTP {reply.status_code}"


async def _probe_btminer(rpc: Any, timeout_s: float, trusted: bool) -> tuple[Verdict, str]:
    """A privileged request that changes nothing (``get_version`` inside the envelope): the
    firmware can only answer encrypted if it decrypted our request, i.e. if the admin password
    (from which the AES key is derived) is the one it has. A refusal comes back in clear."""
    from pyasic.rpc.btminer import create_privileged_cmd

    for attempt in (0, 1):
        token = await rpc.get_token()
        raw = await rpc._send_bytes(create_privileged_cmd(token, {"cmd": "get_version"}),
                                    timeout=max(1, int(timeout_s)))
        try:
            reply = json.loads(raw.decode("utf-8", "replace").rstrip("\x00 \r\n") or "{}")
        except ValueError:
            return "unknown", "API answered garbage"
        if isinstance(reply, dict) and "enc" in reply:
            return "accepted", "API accepted the admin password"
        status = reply.get("STATUS") if isinstance(reply, dict) else None
        code = reply.get("Code") if isinstance(reply, dict) else None
        msg = str(reply.get("Msg", "")) if isinstance(reply, dict) else ""
        if status != "E":
            return "unknown", "API answered without a status"
        if code in NOT_AUTH_CODES:
            return "unknown", f"API: {msg or code}"
        if msg == WRITE_API_DISABLED:
            # The firmware refused before reading the request: no password can help.
            return "refused", ("write API disabled on the miner (enable it in WhatsMinerTool: "
                               "Remote Ctrl -> Miner API Switch, and change the admin "
                               "password)")
        if trusted and attempt == 0:
            rpc.token = None  # maybe a token the firmware forgot: one fresh one
            continue
        return "refused", (f"API refused the admin password (code {code}: {msg}); the write "
                           "API must be enabled and the password set in [fleet.credentials]")
    return "refused", "API refused the admin password"  # pragma: no cover - loop returns


#: A ``set.`` command no firmware implements: API v3 signs every ``set.`` command with a token
#: made from the password, so the firmware must check the token before it can say "invalid
#: command"; an unknown name cannot be mistaken for an action (an odd *parameter* to a real
#: command might be).
V3_PROBE_CMD = "set.curtaild.credential_check"


async def _probe_btminer_v3(rpc: Any, trusted: bool) -> tuple[Verdict, str]:
    """API v3: answered "invalid token" (code -1) means the token, i.e. the password (or a
    salt the firmware has since changed), was refused; "can't access write cmd" means the
    write API is switched off; any other answer to a signed request means the signature was
    good. The salt costs a token of the firmware's 32 per 30 minutes,
    so it is fetched again only when the credentials were trusted until now."""
    for attempt in (0, 1):
        reply = await rpc.send_command(V3_PROBE_CMD)
        if not isinstance(reply, dict) or not reply:
            return "unknown", "API v3 gave no answer"
        code, msg = reply.get("code"), str(reply.get("msg", ""))
        if WRITE_API_DISABLED in msg:
            # The switch is off: refused before the token was looked at; no password helps.
            return "refused", ("write API disabled on the miner (switch the API on in "
                               "WhatsMinerTool and change the admin password)")
        if code == -1 and "token" in msg.lower():
            if trusted and attempt == 0:
                rpc.salt = None  # maybe a salt the firmware replaced: one fresh one
                continue
            return "refused", (f"API v3 refused the password (code {code}: {msg}); set it in "
                               "[fleet.credentials]")
        return "accepted", "API v3 accepted the password"
    return "refused", "API v3 refused the password"  # pragma: no cover - loop returns



def check_warnings(cfg: CredentialsConfig) -> list[str]:
    """For ``curtaild check``: the secrets ``run`` could not read, as warnings (check may run
    as another user than the service, so they do not fail it). Systemd credentials are only
    checked where ``$CREDENTIALS_DIRECTORY`` is set: outside the service it never is."""
    try:
        CredentialStore.load(cfg)
    except ConfigError as exc:
        return [f"{line} (curtaild run refuses to start without it)" for line in exc.problems
                if "$CREDENTIALS_DIRECTORY is not set" not in line]
    return []
