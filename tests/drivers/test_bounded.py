"""drivers/bounded.py over real loopback sockets: the reply cap and the deadline that ends work.

Small asyncio servers on 127.151.2.1 play the hostile device (an endless stream, a length
prefix promising gigabytes, a gzip bomb, a hang); the client code is written the way pyasic's
is (``asyncio.open_connection`` + ``read()``, httpx through ``pyasic.settings.transport``,
probe tasks raced with ``as_completed`` and abandoned on cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pyasic.settings
import pytest

from curtaild.drivers import bounded

HOST = "127.151.2.1"
CAP = 256 * 1024


@contextlib.asynccontextmanager
async def serve(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                  Awaitable[None]]) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, HOST, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def write_forever(writer: asyncio.StreamWriter, chunk: bytes) -> None:
    """Stream ``chunk`` until the client goes away: a device whose reply never ends."""
    try:
        while True:
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass


@pytest.fixture
async def endless() -> AsyncIterator[int]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await write_forever(writer, b"x" * 65536)

    async with serve(handler) as port:
        yield port


def others() -> set[asyncio.Task]:
    """Tasks alive but this test's own and the play-hostile servers' connection handlers."""
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()
            and t.get_coro().__name__ != "handler"}


async def test_a_stream_read_stops_at_the_cap_and_the_connection_is_dropped(
        endless: int) -> None:
    async def read_all() -> bytes:
        reader, writer = await asyncio.open_connection(HOST, endless)
        writer.write(b'{"command":"summary"}')
        return await reader.read()  # pyasic's RPC read: until EOF

    with pytest.raises(bounded.StreamReplyTooLarge, match="over 262144 bytes"):
        await bounded.run(read_all, timeout_s=10, label="rpc", max_reply_bytes=CAP)
    # pyasic's discovery probe: 4 KiB reads appended to bytes (quadratic without a cap); the
    # error is a ConnectionResetError, which that probe already handles as a dropped link
    async def probe() -> int:
        reader, _ = await asyncio.open_connection(HOST, endless)
        data = b""
        while d := await reader.read(4096):
            data += d
        return len(data)

    with pytest.raises(ConnectionResetError):
        await bounded.run(probe, timeout_s=10, label="probe", max_reply_bytes=CAP)


async def test_a_length_prefix_cannot_make_the_reader_buffer_more() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(struct.pack("<I", 3 * 1024**3))  # btminer framing: "3 GiB follow"
        await write_forever(writer, b"y" * 65536)

    async with serve(handler) as port:
        async def read_framed() -> bytes:
            reader, _ = await asyncio.open_connection(HOST, port)
            (length,) = struct.unpack("<I", await reader.readexactly(4))
            return await reader.readexactly(length)

        with pytest.raises(bounded.StreamReplyTooLarge):
            await bounded.run(read_framed, timeout_s=10, label="v3", max_reply_bytes=CAP)


async def test_outside_a_scope_open_connection_is_untouched(endless: int) -> None:
    bounded.install()
    reader, writer = await asyncio.open_connection(HOST, endless)
    got = 0
    while got <= 4 * CAP:
        got += len(await reader.read(65536))
    writer.close()
    assert type(reader) is asyncio.StreamReader


@contextlib.asynccontextmanager
async def http_server(body: bytes, headers: dict[str, str]) -> AsyncIterator[int]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        writer.close()

    async with serve(handler) as port:
        yield port


async def test_http_bodies_are_capped_raw_and_inflated() -> None:
    bounded.install()
    assert pyasic.settings.transport is bounded.bounded_transport  # pyasic's HTTP hook

    async def get(port: int) -> httpx.Response:
        async with httpx.AsyncClient(transport=pyasic.settings.transport()) as client:
            return await client.get(f"http://{HOST}:{port}/")

    async with http_server(b"z" * (CAP + 1), {}) as port:
        with pytest.raises(bounded.HttpReplyTooLarge) as err:
            await bounded.run(lambda: get(port), timeout_s=10, label="web",
                              max_reply_bytes=CAP)
        assert isinstance(err.value, httpx.HTTPError)  # what pyasic's web clients catch
    # A gzip bomb: 40 KiB on the wire, 40 MiB inflated.
    bomb = gzip.compress(b"\0" * (40 * 1024 * 1024))
    assert len(bomb) < CAP
    async with http_server(bomb, {"Content-Encoding": "gzip"}) as port:
        with pytest.raises(bounded.HttpReplyTooLarge, match="inflated"):
            await bounded.run(lambda: get(port), timeout_s=10, label="web",
                              max_reply_bytes=CAP)
    # An honest compressed reply still reads as it should.
    honest = gzip.compress(b'{"ok": true}')
    async with http_server(honest, {"Content-Encoding": "gzip"}) as port:
        resp = await bounded.run(lambda: get(port), timeout_s=10, label="web",
                                 max_reply_bytes=CAP)
        assert resp.json() == {"ok": True}


async def test_the_deadline_ends_probes_their_caller_abandoned() -> None:
    """pyasic's concurrent_get_first_result: probes raced with as_completed keep running when
    the caller is cancelled; a probe that swallows cancellation retries a new connection."""
    hung: list[asyncio.StreamWriter] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung.append(writer)  # accept, never answer
        await asyncio.sleep(3600)

    async with serve(handler) as port:
        before = others()
        reconnects: list[str] = []

        async def stubborn_probe() -> bytes:
            while True:
                try:
                    reader, _ = await asyncio.open_connection(HOST, port)
                    return await reader.read()
                except asyncio.CancelledError:
                    continue  # swallows the cancellation: the socket is gone, so it reconnects
                except OSError as exc:
                    reconnects.append(type(exc).__name__)
                    return b""

        async def discover() -> bytes:
            probes = [asyncio.create_task(stubborn_probe()) for _ in range(3)]
            for fut in asyncio.as_completed(probes):
                return await fut
            return b""

        with pytest.raises(TimeoutError):
            await bounded.run(discover, timeout_s=0.5, label="discovery")
        assert others() <= before  # every probe ended with the deadline
        assert reconnects == ["ScopeClosed"] * 3  # their new connections were refused


async def test_tasks_left_behind_by_a_call_that_returned_are_ended() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    async def call() -> str:
        asyncio.get_running_loop().create_task(forever())  # fire and forget, as a careless
        # library does (nobody keeps a reference)
        await started.wait()
        return "ok"

    before = others()
    assert await bounded.run(call, timeout_s=5, label="poll") == "ok"
    assert others() <= before


async def test_our_caller_cancelled_ends_the_scope_too() -> None:
    async def slow() -> None:
        await asyncio.gather(asyncio.sleep(3600), asyncio.sleep(3600))

    before = others()
    outer = asyncio.ensure_future(bounded.run(slow, timeout_s=60, label="poll"))
    await asyncio.sleep(0.1)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert others() <= before
