"""Socket layer for length-framed JSON: the Whatsminer API v3 transport on port 4433.

Every message, both ways, is a 4-byte little-endian length followed by that many bytes of
JSON (pyasic's ``BTMinerV3RPCAPI`` packs ``struct.pack("<I", len)``; its factory writes the
length and the body as two separate writes, so a request can arrive split anywhere). A frame
of length zero is the protocol's heartbeat and gets no answer. The connection stays open for
further requests (real clients may keep it; pyasic closes after one reply).

The family sees the client's address (``handle_framed(miner, body, client_ip)``): the firmware
counts tokens per client IP. A family that returns ``None`` is not answering (btminer is
restarting): the connection is closed without a byte, which is what a client sees of a
process that died under it. Faults apply exactly as on the other ports (``server._deliver``).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import TYPE_CHECKING, cast

from curtaild.emulator.families.base import FramedFamily
from curtaild.emulator.server import (
    Streamer,
    StreamingProtocol,
    _deliver,
    accept_hostile,
    peer_ip,
)

if TYPE_CHECKING:
    from curtaild.emulator.server import MinerEndpoint

log = logging.getLogger("emulator.framed")

#: Largest request accepted; a bigger length prefix is garbage (or an attack): the connection
#: is closed.
MAX_FRAME = 64 * 1024


def frame(body: bytes) -> bytes:
    """``body`` with its length prefix."""
    return struct.pack("<I", len(body)) + body


class FramedProtocol(StreamingProtocol):
    """One client connection to a miner's length-framed JSON API."""

    __slots__ = ("buf", "busy", "endpoint", "peer")

    def __init__(self, endpoint: MinerEndpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False
        self.peer = ""
        self.streamer: Streamer | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = peer_ip(transport)
        if accept_hostile(self.endpoint.fault(), transport, self, http=False):
            self.busy = True  # taken over: requests on this connection are never answered

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()
        elif len(self.buf) > 4 * MAX_FRAME and self.transport is not None:
            self.transport.abort()  # a client piling requests behind one that never ends

    def eof_received(self) -> bool:
        return self.busy  # a reply may still be on its way (slow): keep our side open

    def _next(self) -> None:
        while not self.busy and self.transport is not None and len(self.buf) >= 4:
            (length,) = struct.unpack_from("<I", self.buf)
            if length > MAX_FRAME:
                self.transport.close()
                return
            if len(self.buf) < 4 + length:
                return  # the rest of the frame is still on its way
            body = bytes(self.buf[4:4 + length])
            del self.buf[:4 + length]
            if length:  # a zero-length frame is a heartbeat: nothing to answer
                self._answer(body)

    def _answer(self, body: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        self.busy = True
        endpoint = self.endpoint
        endpoint.miner.commands_received += 1
        peer = self.peer
        # Only a family whose ports_for lists a "framed" port gets this protocol.
        family = cast(FramedFamily, endpoint.family)

        def render() -> bytes:
            try:
                reply = family.handle_framed(endpoint.miner, body, peer)
            except Exception:
                log.exception("%s: framed handler failed for %r", endpoint.ip, body[:200])
                return b""
            return b"" if reply is None else frame(reply)

        def send(data: bytes) -> None:
            if not data:  # not answering (or the end of a dripped reply): close
                transport.close()
                return
            transport.write(data)
            self.busy = False
            if self.buf:
                self._next()

        _deliver(endpoint.loop, endpoint.fault(), transport, render, send, self, http=False)
        endpoint.after_request()  # a reboot command silences the control board
