"""``[fleet.credentials]``: the firmware passwords curtaild gives pyasic, per family and miner.

Real sites change factory passwords: a stock Antminer's web UI (root/root out of the box), a
Whatsminer's API admin password (which *must* be changed before its write API works), BOS+ and
VNish web logins. pyasic uses its factory defaults unless told otherwise, so without this
section curtaild cannot command a correctly set-up site, and (worse, on stock Antminers) pyasic
reports the refused sleep as done.

Like the MQTT password, a secret never lives in the config: each entry names a file
(``password_file``) or a systemd credential (``password_credential``). This module only
validates *where* secrets are; ``drivers/credentials.py`` reads them (at start and on every
reload) and hands them to pyasic.

Per-miner overrides match by MAC, serial number, IP address, range (``A-B``) or CIDR block;
the most specific match wins: MAC or serial, then IP, then the smallest range (the first listed
among equal ones). An override with ``family`` applies only to that firmware family and beats
one without at the same level.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from curtaild.drivers.secret import CredentialName, SecretFile

#: Families whose pyasic 0.79 backends take a password, and what it is for.
FAMILIES: dict[str, str] = {
    "antminer": "stock Bitmain web UI, user root (pyasic web.pwd; factory 'root')",
    "whatsminer": "btminer API admin password, API v2 and v3 (pyasic rpc.pwd; factory 'admin')",
    "braiins": "Braiins OS+ web/gRPC login, user root (pyasic web.pwd; factory 'root')",
    "vnish": "VNish web login (pyasic web.pwd; factory 'admin')",
}
#: Families with nothing to configure, and why (so the error says it, not "extra input").
NO_PASSWORD: dict[str, str] = {
    "luxos": "LuxOS's API takes no password: pyasic 0.79 sends a bare 'logon' and LuxOS "
             "sessions are not a security feature (docs.luxor.tech/firmware/api/sessions)",
    "bitaxe": "AxeOS has no authentication on its HTTP API (v2.4-v2.12; later firmware "
              "only refuses clients outside private networks)",
}
Family = Literal["antminer", "whatsminer", "braiins", "vnish"]

_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$")
_SERIAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,63}$")
_IPISH = re.compile(r"^[0-9./\s-]+$")
MAX_RANGE_ADDRESSES = 1 << 24


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_literal_secret(data: Any) -> Any:
    """A ``password = ...`` key gets a message that says why, never the value."""
    if isinstance(data, dict) and "password" in data:
        raise ValueError("password: secrets never live in the config file; give "
                         "password_file or password_credential (a systemd credential)")
    return data


class SecretSource(_Strict):
    """Where one password comes from: exactly one of a file or a systemd credential."""

    password_file: SecretFile = Field(None, min_length=1,
                                      description="file holding the password (one line)")
    password_credential: CredentialName = Field(
        None, description="systemd credential name ($CREDENTIALS_DIRECTORY/<name>)")

    @model_validator(mode="before")
    @classmethod
    def _not_inline(cls, data: Any) -> Any:
        return _no_literal_secret(data)

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretSource:
        if (self.password_file is None) == (self.password_credential is None):
            raise ValueError("give exactly one of password_file or password_credential")
        return self


class Match:
    """One parsed ``match`` entry: what kind of identity it is and how specific."""

    __slots__ = ("high", "kind", "low", "value")

    def __init__(self, kind: str, value: str, low: int = 0, high: int = 0) -> None:
        self.kind = kind  # "mac" | "serial" | "ip" | "range"
        self.value = value  # normalised: MAC upper-case with ':', IP dotted
        self.low, self.high = low, high  # range bounds as integers (inclusive)

    @property
    def size(self) -> int:
        return self.high - self.low + 1


def parse_match(text: str) -> Match:
    """A MAC, serial, IPv4 address, ``A-B`` range (B a full address or a last octet) or CIDR.

    Anything made only of digits, dots, dashes and slashes must be a valid address, range or
    block: ``10.0.0.300`` is an error, not a serial number that never matches.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("expected a MAC, serial, IP address, range 'A-B' or CIDR block")
    t = text.strip()
    if _MAC.match(t):
        return Match("mac", t.upper().replace("-", ":"))
    if _IPISH.match(t):
        try:
            if "/" in t:
                net = ipaddress.IPv4Network(t, strict=False)
                low, high = int(net.network_address), int(net.broadcast_address)
            elif "-" in t:
                first_s, last_s = (p.strip() for p in t.split("-", 1))
                first = ipaddress.IPv4Address(first_s)
                last = ipaddress.IPv4Address(
                    last_s if "." in last_s else first_s.rsplit(".", 1)[0] + "." + last_s)
                low, high = int(first), int(last)
                if high < low:
                    raise ValueError(f"range {t!r} ends before it starts")
            else:
                ip = ipaddress.IPv4Address(t)
                return Match("ip", str(ip), int(ip), int(ip))
        except ipaddress.AddressValueError:
            raise ValueError(f"{t!r} is not a valid IPv4 address, range or block") from None
        except ipaddress.NetmaskValueError:
            raise ValueError(f"{t!r} has an invalid prefix length") from None
        if high - low + 1 > MAX_RANGE_ADDRESSES:
            raise ValueError(f"{t!r} covers more than {MAX_RANGE_ADDRESSES} addresses")
        return Match("range", t, low, high)
    if _SERIAL.match(t):
        return Match("serial", t)
    raise ValueError(f"{t!r} is neither a MAC (aa:bb:cc:dd:ee:ff), an IPv4 address, a range "
                     "'A-B', a CIDR block nor a serial number (letters, digits, _./-)")


class CredentialOverride(SecretSource):
    """``[[fleet.credentials.override]]``: a password for some machines."""

    match: list[str] = Field(..., min_length=1,
                             description="MACs, serials, IPs, ranges 'A-B' or CIDR blocks")
    family: Family | None = Field(None, description="only miners of this firmware family")

    @field_validator("match")
    @classmethod
    def _matches_parse(cls, values: list[str]) -> list[str]:
        for i, v in enumerate(values):
            try:
                parse_match(v)
            except ValueError as exc:
                raise ValueError(f"[{i}] {exc}") from None
        return values

    def parsed(self) -> list[Match]:
        return [parse_match(v) for v in self.match]


class CredentialsConfig(_Strict):
    """``[fleet.credentials]``: one secret source per family, then per-miner overrides."""

    antminer: SecretSource | None = Field(None, description=FAMILIES["antminer"])
    whatsminer: SecretSource | None = Field(None, description=FAMILIES["whatsminer"])
    braiins: SecretSource | None = Field(None, description=FAMILIES["braiins"])
    vnish: SecretSource | None = Field(None, description=FAMILIES["vnish"])
    override: list[CredentialOverride] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _families_without_password(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, why in NO_PASSWORD.items():
                if name in data:
                    raise ValueError(f"{name}: {why}; remove [fleet.credentials.{name}]")
        return _no_literal_secret(data)

    @model_validator(mode="after")
    def _no_duplicate_identity(self) -> CredentialsConfig:
        """The same MAC, serial or IP in two overrides of the same scope is ambiguous."""
        seen: dict[tuple[str, str, str | None], int] = {}
        for i, o in enumerate(self.override):
            for m in o.parsed():
                if m.kind == "range":
                    continue
                key = (m.kind, m.value.upper(), o.family)
                if key in seen and seen[key] != i:
                    raise ValueError(f"override[{i}].match: {m.value} is also matched by "
                                     f"override[{seen[key]}]; which password applies would be "
                                     "a guess")
                seen[key] = i
        return self

    def family_source(self, family: str) -> SecretSource | None:
        return getattr(self, family, None) if family in FAMILIES else None
