"""A minimal in-test socket layer: one firmware family serving one miner on loopback.

The protocol tests drive ``Family.handle_rpc``/``handle_http`` through real sockets with
unmodified pyasic, without depending on ``emulator.server`` (written separately): one request
per RPC connection, closed after the reply, and a bare HTTP/1.1 responder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from curtaild.emulator.families.base import HttpRequest
from curtaild.emulator.physics import EmulatedMiner


class FamilyServer:
    """``async with FamilyServer(family, miner):`` listens on ``miner.ip`` at the family's ports."""

    def __init__(self, family, miner: EmulatedMiner) -> None:
        self.family = family
        self.miner = miner
        self._servers: list[asyncio.Server] = []
        self.requests: list[bytes] = []

    async def __aenter__(self) -> FamilyServer:
        if self.family.rpc_port:
            self._servers.append(await asyncio.start_server(
                self._rpc, self.miner.ip, self.family.rpc_port, reuse_address=True))
        if self.family.http_port:
            self._servers.append(await asyncio.start_server(
                self._http, self.miner.ip, self.family.http_port, reuse_address=True))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()

    async def _rpc(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            while True:
                chunk = await asyncio.wait_for(reader.read(65536), timeout=5)
                if not chunk:
                    break
                data += chunk
                try:
                    json.loads(data.rstrip(b"\0").decode())
                    break
                except (ValueError, UnicodeDecodeError):
                    continue
        self.requests.append(data)
        writer.write(self.family.handle_rpc(self.miner, data))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
        path, _, query = target.partition("?")
        resp = self.family.handle_http(self.miner, HttpRequest(method, path, query, headers, body))
        out = [f"HTTP/1.1 {resp.status} X", f"Content-Length: {len(resp.body)}",
               "Connection: close", *(f"{k}: {v}" for k, v in resp.headers.items())]
        writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + resp.body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()


async def wait_state(miner: EmulatedMiner, state: str, within_s: float = 5.0) -> None:
    """Poll the physics until it reaches ``state`` (boots take boot_s * time_scale)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while miner.read().state != state:
        if loop.time() > deadline:
            raise AssertionError(f"{miner.ip} still {miner.read().state}, expected {state}")
        await asyncio.sleep(0.02)
