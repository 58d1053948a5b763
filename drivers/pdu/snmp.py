"""The SNMP side of the PDU drivers: credentials, GET in chunks and SET, each with a deadline.

One pysnmp engine serves every PDU of the daemon (an engine is a MIB builder and a dispatcher:
tens of ms and MBs each); it is created in the running loop on first use. SNMPv3 is authPriv
only -- an outlet switch is mains power, and an unauthenticated or cleartext switch could be
forged or replayed on the wire; v2c is allowed for PDUs that offer nothing else, with the
write community kept in a file like every secret.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    UsmUserData,
    get_cmd,
    set_cmd,
    usmAesCfb128Protocol,
    usmAesCfb256Protocol,
    usmHMAC192SHA256AuthProtocol,
    usmHMAC384SHA512AuthProtocol,
    usmHMACSHAAuthProtocol,
)
from pysnmp.proto.rfc1902 import Integer32

from curtaild.drivers.pdu import PduError

AUTH = {"sha": usmHMACSHAAuthProtocol, "sha256": usmHMAC192SHA256AuthProtocol,
        "sha512": usmHMAC384SHA512AuthProtocol}
PRIV = {"aes128": usmAesCfb128Protocol, "aes256": usmAesCfb256Protocol}
#: varbinds per GET: well under any agent's PDU size limit (484 bytes is the floor for v1)
CHUNK = 16
OID = str


class SnmpCredentials:
    """What one PDU is read and switched with (secrets as plain str, held only here)."""

    def __init__(self, *, read: CommunityData | UsmUserData,
                 write: CommunityData | UsmUserData) -> None:
        self.read = read
        self.write = write

    @classmethod
    def v2c(cls, community: str, write_community: str | None) -> SnmpCredentials:
        return cls(read=CommunityData(community, mpModel=1),
                   write=CommunityData(write_community or community, mpModel=1))

    @classmethod
    def v3(cls, user: str, auth_key: str, priv_key: str, auth: str = "sha",
           priv: str = "aes128") -> SnmpCredentials:
        usm = UsmUserData(user, auth_key, priv_key, authProtocol=AUTH[auth],
                          privProtocol=PRIV[priv])
        return cls(read=usm, write=usm)


_engine: SnmpEngine | None = None
_engine_loop: asyncio.AbstractEventLoop | None = None


def engine() -> SnmpEngine:
    """The process's SNMP engine, bound to the running loop (a new loop gets a new one)."""
    global _engine, _engine_loop
    loop = asyncio.get_running_loop()
    if _engine is None or _engine_loop is not loop:
        _engine, _engine_loop = SnmpEngine(), loop
    return _engine


class SnmpSession:
    """GET and SET against one agent, each bounded by ``timeout_s`` x (1 + retries) + 1 s."""

    def __init__(self, address: str, port: int, credentials: SnmpCredentials, *,
                 timeout_s: float = 2.0, retries: int = 1) -> None:
        self.address, self.port = address, port
        self.credentials = credentials
        self.timeout_s, self.retries = timeout_s, retries
        self.deadline_s = timeout_s * (1 + retries) + 1.0

    async def _target(self) -> UdpTransportTarget:
        return await UdpTransportTarget.create((self.address, self.port),
                                               timeout=self.timeout_s, retries=self.retries)

    async def get(self, oids: Sequence[OID]) -> dict[OID, object]:
        """Values by OID (dotted, as asked); an OID the agent does not have is absent.
        Raises PduError (timeout, refused, error status)."""
        out: dict[OID, object] = {}
        started = time.monotonic()
        for i in range(0, len(oids), CHUNK):
            chunk = oids[i:i + CHUNK]
            left = self.deadline_s - (time.monotonic() - started)
            if left <= 0:
                raise PduError(f"no answer within {self.deadline_s:g} s")
            err, status, index, binds = await self._call(
                get_cmd, self.credentials.read, [ObjectType(ObjectIdentity(o)) for o in chunk],
                left)
            if err is not None:
                raise PduError(str(err))
            if status:
                raise PduError(f"{status.prettyPrint()} at {chunk[int(index) - 1]}"
                               if 0 < int(index) <= len(chunk) else status.prettyPrint())
            for asked, (_name, value) in zip(chunk, binds, strict=False):
                if value.__class__.__name__ in ("NoSuchObject", "NoSuchInstance",
                                                "EndOfMibView"):
                    continue
                out[asked] = value
        return out

    async def set_int(self, oid: OID, value: int) -> None:
        """SET one INTEGER; PduError unless the agent answered without an error."""
        err, status, _index, _binds = await self._call(
            set_cmd, self.credentials.write, [ObjectType(ObjectIdentity(oid), Integer32(value))],
            self.deadline_s)
        if err is not None:
            raise PduError(str(err))
        if status:
            raise PduError(f"refused: {status.prettyPrint()}")

    async def _call(self, op, auth, varbinds: list, deadline_s: float):
        try:
            async with asyncio.timeout(deadline_s):
                target = await self._target()
                return await op(engine(), auth, target, ContextData(), *varbinds)
        except TimeoutError:
            raise PduError(f"no answer within {deadline_s:g} s") from None
        except PduError:
            raise
        except Exception as exc:  # a garbled reply pysnmp chokes on: a fault, not a crash
            raise PduError(f"{type(exc).__name__}: {exc}") from None


def as_int(value: object) -> int | None:
    """An SNMP integer value as int; None for anything else (garbage, a string)."""
    name = value.__class__.__name__
    if name not in ("Integer", "Integer32", "Unsigned32", "Gauge32", "Counter32"):
        return None
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
