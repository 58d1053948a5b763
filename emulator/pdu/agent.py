"""One SNMP agent (a pysnmp 7 engine) answering every emulated PDU on its own address.

A PDU per engine would cost a MIB builder each (tens of ms and MBs): a ``--count 10000`` fleet
has 1,250 PDUs. So one engine opens one UDP transport per PDU (transport domain
``udp + (i,)``), and the responder tells the PDUs apart by the domain a request came in on.
It answers from the PDU's own :class:`~emulator.pdu.mibs.MibView` -- GET, GETNEXT, GETBULK and
SET -- and does its own access check (the engine's VACM knows nothing of per-address rights):

- SNMPv1/v2c: the PDU's read community reads, its write community reads and writes; any other
  community is dropped by the engine (no answer, as a real agent does);
- SNMPv3: the PDU's USM user (HMAC-SHA-96 auth, AES-128 privacy) at authPriv reads and writes;
  a user of another PDU, or a lower security level, gets ``authorizationError``.
"""

from __future__ import annotations

import logging
import socket
import time

from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import cmdrsp, context
from pysnmp.proto import rfc1902, rfc1905
from pysnmp.proto.api import v2c

from curtaild.emulator.pdu.mibs import MibView, SetError, mib_view
from curtaild.emulator.pdu.model import EmulatedPdu

log = logging.getLogger("emulator.pdu")
#: GETBULK answers at most this many varbinds (net-snmp's snmpbulkwalk asks for 10 per round).
MAX_BULK_VARBINDS = 256
AUTH_PRIV = 3  # securityLevel authPriv


class AgentBindError(OSError):
    """A PDU's UDP address could not be bound; the message names address and port."""


def bind_udp(address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        why = exc.strerror or str(exc)
        if exc.errno == 13:
            why += " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        raise AgentBindError(f"PDU {address} udp/{port}: cannot bind: {why}") from None
    sock.setblocking(False)
    return sock


class _Responder(cmdrsp.CommandResponderBase):
    SUPPORTED_PDU_TYPES = (
        rfc1905.GetRequestPDU.tagSet,
        rfc1905.GetNextRequestPDU.tagSet,
        rfc1905.GetBulkRequestPDU.tagSet,
        rfc1905.SetRequestPDU.tagSet,
    )

    def __init__(self, agent: PduAgent, snmp_engine, snmp_context) -> None:
        super().__init__(snmp_engine, snmp_context)
        self.agent = agent

    def handle_management_operation(self, snmpEngine, stateReference, contextName, PDU):
        ctx = snmpEngine.observer.get_execution_context("rfc3412.receiveMessage:request")
        site = self.agent.by_domain.get(tuple(ctx["transportDomain"]))
        if site is None:
            return self.send_varbinds(snmpEngine, stateReference, "genErr", 1,
                                      v2c.apiPDU.get_varbinds(PDU))
        pdu, view = site
        varbinds = v2c.apiPDU.get_varbinds(PDU)
        writing = PDU.tagSet == rfc1905.SetRequestPDU.tagSet
        if not self.agent.allowed(pdu, ctx, writing):
            self.agent.refused += 1
            return self.send_varbinds(snmpEngine, stateReference, "authorizationError", 1,
                                      varbinds)
        self.agent.requests += 1
        tag = PDU.tagSet
        if tag == rfc1905.GetRequestPDU.tagSet:
            out = [(oid, self._get(view, tuple(oid))) for oid, _ in varbinds]
            return self.send_varbinds(snmpEngine, stateReference, 0, 0, out)
        if tag == rfc1905.GetNextRequestPDU.tagSet:
            out = [self._next(view, tuple(oid)) for oid, _ in varbinds]
            return self.send_varbinds(snmpEngine, stateReference, 0, 0, out)
        if tag == rfc1905.GetBulkRequestPDU.tagSet:
            return self.send_varbinds(snmpEngine, stateReference, 0, 0,
                                      self._bulk(view, PDU, varbinds))
        status, index = self._set(view, varbinds)
        return self.send_varbinds(snmpEngine, stateReference, status, index, varbinds)

    @staticmethod
    def _get(view: MibView, oid: tuple[int, ...]):
        obj = view.get(oid)
        if obj is not None:
            return obj.get()
        return rfc1905.noSuchInstance if view.under(oid[:-1]) else rfc1905.noSuchObject

    @staticmethod
    def _next(view: MibView, oid: tuple[int, ...]):
        obj = view.next(oid)
        if obj is None:
            return rfc1902.ObjectName(oid), rfc1905.endOfMibView
        return rfc1902.ObjectName(obj.oid), obj.get()

    def _bulk(self, view: MibView, PDU, varbinds):
        non_repeaters = max(0, int(v2c.apiBulkPDU.get_non_repeaters(PDU)))
        repetitions = max(0, int(v2c.apiBulkPDU.get_max_repetitions(PDU)))
        out = [self._next(view, tuple(oid)) for oid, _ in varbinds[:non_repeaters]]
        cursors = [tuple(oid) for oid, _ in varbinds[non_repeaters:]]
        for _ in range(repetitions):
            if not cursors or len(out) >= MAX_BULK_VARBINDS:
                break
            row = [self._next(view, c) for c in cursors]
            out.extend(row)
            cursors = [tuple(name) for name, _ in row]
            if all(v is rfc1905.endOfMibView for _, v in row):
                break
        return out[:MAX_BULK_VARBINDS]

    @staticmethod
    def _set(view: MibView, varbinds) -> tuple[object, int]:
        """All or nothing: every varbind is checked before the first is applied."""
        plan = []
        for i, (oid, value) in enumerate(varbinds, start=1):
            obj = view.get(tuple(oid))
            if obj is None:
                return ("noCreation" if view.under(tuple(oid)[:-1]) else "noAccess"), i
            if obj.set is None:
                return "notWritable", i
            if not isinstance(value, rfc1902.Integer32 | rfc1902.Integer):
                return "wrongType", i
            plan.append((i, obj, value))
        for i, obj, value in plan:
            try:
                obj.set(value)  # type: ignore[misc]
            except SetError as exc:
                return exc.status, i
        return 0, 0


class PduAgent:
    """Every emulated PDU's SNMP service. ``start()`` binds; ``close()`` releases."""

    def __init__(self, pdus: list[EmulatedPdu]) -> None:
        self.pdus = pdus
        self.engine: engine.SnmpEngine | None = None
        self.by_domain: dict[tuple[int, ...], tuple[EmulatedPdu, MibView]] = {}
        self.transports: list[udp.UdpAsyncioTransport] = []
        self.requests = 0
        self.refused = 0
        self._communities: dict[str, str] = {}  # community -> securityName
        self._users: dict[str, tuple[str, str]] = {}

    def allowed(self, pdu: EmulatedPdu, ctx: dict, writing: bool) -> bool:
        model, name, level = int(ctx["securityModel"]), str(ctx["securityName"]), \
            int(ctx["securityLevel"])
        if model in (1, 2):
            names = {self._communities.get(c) for c in
                     ((pdu.write_community,) if writing else
                      (pdu.read_community, pdu.write_community)) if c}
            return name in names
        if model == 3 and pdu.v3_user is not None:
            return name == pdu.v3_user[0] and level == AUTH_PRIV
        return False

    def start(self) -> None:
        """Bind every PDU's address (AgentBindError names the first that fails)."""
        snmp = engine.SnmpEngine()
        sockets: list[socket.socket] = []
        try:
            for pdu in self.pdus:
                sockets.append(bind_udp(pdu.address, pdu.port))
        except AgentBindError:
            for s in sockets:
                s.close()
            raise
        started = time.monotonic()
        for i, (pdu, sock) in enumerate(zip(self.pdus, sockets, strict=True), start=1):
            domain = (*udp.DOMAIN_NAME, i)
            transport = udp.UdpAsyncioTransport().open_server_mode(sock=sock)
            config.add_transport(snmp, domain, transport)
            self.transports.append(transport)
            self.by_domain[domain] = (pdu, mib_view(pdu, started))
            for community in (pdu.read_community, pdu.write_community):
                if community and community not in self._communities:
                    name = f"community-{len(self._communities) + 1}"
                    self._communities[community] = name
                    config.add_v1_system(snmp, name, community)
            if pdu.v3_user is not None:
                user, auth, priv = pdu.v3_user
                if user in self._users:
                    if self._users[user] != (auth, priv):
                        raise ValueError(f"PDU {pdu.address}: v3 user {user!r} is also "
                                         "defined with other keys")
                    continue
                self._users[user] = (auth, priv)
                config.add_v3_user(snmp, user, config.USM_AUTH_HMAC96_SHA, auth,
                                   config.USM_PRIV_CFB128_AES, priv)
        _Responder(self, snmp, context.SnmpContext(snmp))
        self.engine = snmp

    def close(self) -> None:
        if self.engine is None:
            return
        for transport in self.transports:
            transport.close_transport()
        self.transports = []
        self.engine = None
