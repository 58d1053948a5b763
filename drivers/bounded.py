"""Bounded pyasic calls: a size cap on every reply and a deadline that really ends the work.

A device on a fleet address can be hostile (issue 15): an endless reply grew the daemon to
3 GB in 60 s, a 50 MB one cost 0.8 GB and quadratic CPU (pyasic's discovery probe appends
4 KiB reads to a bytes object), deeply nested JSON raises RecursionError out of ``json.loads``,
and pyasic's discovery leaves its probe tasks running after the caller's deadline cancels it
(``concurrent_get_first_result`` awaits ``asyncio.as_completed``, which does not pass a
cancellation on to the probes). Every pyasic call the driver makes therefore runs through
``run()``, inside a *miner scope*:

* **Reply cap.** pyasic reads every TCP protocol through ``asyncio.open_connection``
  (cgminer/bmminer/LuxOS/btminer RPC and the discovery probes) and every web API through an
  ``httpx.AsyncClient(transport=settings.transport())`` (its documented hook for the HTTP
  transport). ``install()`` replaces both: inside a scope, ``open_connection`` hands out a
  ``StreamReader`` that counts every byte the socket delivers and, past ``max_reply_bytes``,
  aborts the connection and fails every read with ``StreamReplyTooLarge`` (a
  ``ConnectionResetError``, which pyasic already handles as a dropped connection); the httpx
  transport counts body bytes the same way and raises ``HttpReplyTooLarge`` (an
  ``httpx.ReadError``, which pyasic already catches). Compressed bodies are inflated here,
  under the same cap on the *inflated* size, so a small gzip bomb cannot expand in httpx. The
  cap is per connection, i.e. per reply (pyasic opens one connection per RPC command).
* **Deadline.** A task factory on the running loop records every task created inside the
  scope (the ``contextvars`` context is inherited by the tasks pyasic spawns, and by theirs).
  When the deadline passes, or the call ends either way, the scope closes: its sockets are
  aborted, new connections inside it are refused at once, and every task it spawned is
  cancelled and awaited (briefly: a task that swallows the cancellation finds its socket gone
  and returns). No task outlives its miner's deadline.

Why wrap pyasic's I/O entry points rather than run discovery ourselves with bounded probes
and then construct pyasic's miner class: the size cap is needed on the poll and command paths
as well, which are pyasic's own code, so the I/O has to be wrapped anyway; re-implementing
pyasic's detection (19 firmware types, web and socket probes, model and version look-ups)
would duplicate about a thousand lines that change with every pyasic release, whereas the two
entry points wrapped here are stable, public ones. Outside a scope both behave exactly as
before (the original ``open_connection``; an ``AsyncHTTPTransport`` that is only capped), so
nothing else in the process changes.

Not covered by the byte cap (the deadline still ends them): transports pyasic opens other
ways (gRPC for Braiins OS+ via grpclib, SSH via asyncssh, btminer's ``open_api`` which uses a
default httpx client); none of them is on a path curtaild uses against the emulated families.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import httpx

log = logging.getLogger("curtaild.bounded")

#: Largest reply (bytes on one connection; inflated bytes of one HTTP body) pyasic may read.
#: Real firmware replies are under 64 KiB (an Antminer ``stats`` is ~5 KiB, a LuxOS profile
#: list ~15 KiB, a web UI login page ~10 KiB): 1 MiB leaves a wide margin and bounds what one
#: hostile miner costs (a few copies of 1 MiB while pyasic cleans up and parses it).
MAX_REPLY_BYTES = 1024 * 1024
#: How long a closing scope waits for its cancelled tasks to unwind (they normally take one or
#: two loop iterations; the wait ends as soon as they are done).
CANCEL_GRACE_S = 1.0

T = TypeVar("T")


class ReplyTooLarge(Exception):
    """A reply went past the scope's byte cap; the connection has been dropped."""


class StreamReplyTooLarge(ReplyTooLarge, ConnectionResetError):
    """On a raw TCP stream (RPC). A ConnectionResetError: pyasic treats it as a dropped link."""


class HttpReplyTooLarge(ReplyTooLarge, httpx.ReadError):
    """On an HTTP body. An httpx.ReadError: pyasic catches httpx.HTTPError everywhere."""


class ScopeClosed(ConnectionAbortedError):
    """A connection attempted after the scope's deadline (a straggling pyasic probe)."""


class Scope:
    """The tasks and sockets of one bounded pyasic call (one miner, one deadline)."""

    __slots__ = ("closed", "label", "max_reply_bytes", "tasks", "transports")

    def __init__(self, label: str, max_reply_bytes: int) -> None:
        self.label = label
        self.max_reply_bytes = max_reply_bytes
        self.tasks: set[asyncio.Task[Any]] = set()
        self.transports: set[asyncio.Transport] = set()
        self.closed = False

    def adopt(self, task: asyncio.Task[Any]) -> None:
        if self.closed:
            task.cancel()  # created while unwinding after the deadline: never runs
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled():
            task.exception()  # a straggler's error is expected: no "never retrieved" noise

    def close(self) -> list[asyncio.Task[Any]]:
        """Refuse new connections, drop open ones, cancel every task; returns those pending."""
        self.closed = True
        for transport in list(self.transports):
            transport.abort()
        self.transports.clear()
        pending = [t for t in self.tasks if not t.done()]
        for task in pending:
            task.cancel()
        return pending


_SCOPE: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("curtaild_scope",
                                                                     default=None)


def current_scope() -> Scope | None:
    return _SCOPE.get()


# ------------------------------------------------------------------------- streams (RPC)
class CappedStreamReader(asyncio.StreamReader):
    """A StreamReader that refuses to buffer more than ``cap`` bytes over its lifetime.

    Counting in ``feed_data`` (called by the protocol for every chunk the socket delivers)
    bounds memory whatever the reader does: ``read()`` until EOF, ``readexactly(n)`` with a
    length the peer chose, or 4 KiB reads appended in a loop.
    """

    def __init__(self, cap: int, label: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cap = cap
        self._label = label
        self._received = 0

    # typeshed types data as Iterable[SupportsIndex] (what bytearray.extend takes); the
    # protocol only ever feeds the bytes it received.
    def feed_data(self, data: bytes) -> None:  # type: ignore[override]
        if self._exception is not None:  # type: ignore[attr-defined]
            return
        self._received += len(data)
        if self._received > self._cap:
            self.set_exception(StreamReplyTooLarge(
                f"{self._label}: reply over {self._cap} bytes, connection dropped"))
            transport = self._transport  # type: ignore[attr-defined]
            if transport is not None:
                transport.abort()
            return
        super().feed_data(data)


_original_open_connection = asyncio.open_connection


async def open_connection(host: Any = None, port: Any = None, *,
                          limit: int = 2 ** 16, **kwds: Any
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection`` with a capped reader inside a miner scope (the same steps
    as the standard library's, with our reader); the original one outside."""
    scope = _SCOPE.get()
    if scope is None:
        return await _original_open_connection(host, port, limit=limit, **kwds)
    if scope.closed:
        raise ScopeClosed(f"{scope.label}: deadline passed, no new connection")
    loop = asyncio.get_running_loop()
    reader = CappedStreamReader(scope.max_reply_bytes, scope.label, limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, host, port, **kwds)
    if scope.closed:  # the deadline passed while connecting
        transport.abort()
        raise ScopeClosed(f"{scope.label}: deadline passed, no new connection")
    scope.transports.add(transport)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


# --------------------------------------------------------------------------- HTTP (httpx)
class _Inflater:
    """One Content-Encoding layer (gzip or deflate) inflated under the cap."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self.first = True
        wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
        self.z = zlib.decompressobj(wbits)

    def feed(self, data: bytes, room: int) -> bytes:
        """Inflate ``data``; at most ``room + 1`` bytes come out (more means over the cap)."""
        try:
            out = self.z.decompress(data, room + 1)
        except zlib.error:
            if not (self.first and self.encoding == "deflate"):
                raise
            self.z = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, as some servers send
            out = self.z.decompress(data, room + 1)
        self.first = False
        return out


class CappedByteStream(httpx.AsyncByteStream):
    """A response body that stops at ``cap`` bytes, raw and inflated."""

    def __init__(self, inner: httpx.AsyncByteStream, cap: int, request: httpx.Request,
                 encodings: list[str]) -> None:
        self._inner = inner
        self._cap = cap
        self._request = request
        self._inflaters = [_Inflater(e) for e in reversed(encodings)]

    def _too_large(self, what: str) -> HttpReplyTooLarge:
        return HttpReplyTooLarge(f"{self._request.url.host}: {what} over {self._cap} bytes",
                                 request=self._request)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        raw = out = 0
        async for chunk in self._inner:
            raw += len(chunk)
            if raw > self._cap:
                raise self._too_large("HTTP body")
            for inflater in self._inflaters:
                try:
                    chunk = inflater.feed(chunk, self._cap - out)
                except zlib.error as exc:
                    raise httpx.DecodingError(f"{inflater.encoding}: {exc}",
                                              request=self._request) from None
            out += len(chunk)
            if out > self._cap:
                raise self._too_large("inflated HTTP body")
            if chunk:
                yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


#: Encodings this module inflates itself; any other is passed through raw (httpx ignores
#: encodings it has no decoder for) unless httpx could expand it, which is refused.
_INFLATED = {"gzip", "deflate"}


class BoundedTransport(httpx.AsyncHTTPTransport):
    """pyasic's HTTP transport with a cap on every response body (see the module docstring).

    The cap is the scope's, or MAX_REPLY_BYTES when pyasic is used outside a scope.
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        scope = _SCOPE.get()
        if scope is not None and scope.closed:
            raise httpx.ConnectError(f"{scope.label}: deadline passed, no new request",
                                     request=request)
        cap = scope.max_reply_bytes if scope is not None else MAX_REPLY_BYTES
        response = await super().handle_async_request(request)
        encodings = [e.strip().lower()
                     for e in response.headers.get_list("content-encoding", split_commas=True)]
        encodings = [e for e in encodings if e and e != "identity"]
        headers = response.headers
        if encodings:
            if any(e not in _INFLATED for e in encodings):
                await response.aclose()
                raise httpx.DecodingError(f"unsupported content-encoding {encodings}",
                                          request=request)
            # inflated here under the cap: httpx must not inflate it again, unbounded
            headers = httpx.Headers([(k, v) for k, v in response.headers.multi_items()
                                     if k.lower() not in ("content-encoding", "content-length")])
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(status_code=response.status_code, headers=headers,
                              stream=CappedByteStream(response.stream, cap, request, encodings),
                              extensions=response.extensions)


def bounded_transport(verify: Any = None) -> httpx.AsyncHTTPTransport:
    """Stands in for ``pyasic.settings.transport`` (same signature and default)."""
    import pyasic.settings

    return BoundedTransport(verify=pyasic.settings.ssl_cxt if verify is None else verify)


# -------------------------------------------------------------------------- tasks, install
def _task_factory(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], *,
                  context: contextvars.Context | None = None) -> asyncio.Task[Any]:
    """The default Task, recorded in the creating code's scope (if any)."""
    task = asyncio.Task(coro, loop=loop, context=context)
    scope = context.get(_SCOPE) if context is not None else _SCOPE.get()
    if scope is not None:
        scope.adopt(task)
    return task


_installed = False


def install() -> None:
    """Route pyasic's sockets and HTTP clients through the caps; record scoped tasks.

    Idempotent. Patches two module attributes once per process and sets the running loop's
    task factory (every new loop, e.g. one per test, gets it on its first ``run()``).
    """
    global _installed
    loop = asyncio.get_running_loop()
    current = loop.get_task_factory()
    if current is not _task_factory:
        if current is not None:
            raise RuntimeError(f"another task factory is installed ({current!r}); "
                               "drivers.bounded cannot record pyasic's tasks")
        loop.set_task_factory(_task_factory)  # type: ignore[arg-type]
    if not _installed:
        import pyasic.settings

        asyncio.open_connection = open_connection  # type: ignore[assignment]
        pyasic.settings.transport = bounded_transport  # type: ignore[assignment]
        _installed = True


async def run(call: Callable[[], Awaitable[T]], *, timeout_s: float, label: str,
              max_reply_bytes: int = MAX_REPLY_BYTES) -> T:
    """``await call()`` inside a new scope; TimeoutError at the deadline.

    Whatever happens (result, exception, deadline, our caller cancelled), the scope is closed
    before this returns: no socket or task of the call is left behind.
    """
    install()
    scope = Scope(label, max_reply_bytes)
    context = contextvars.copy_context()
    context.run(_SCOPE.set, scope)

    async def body() -> T:
        return await call()

    loop = asyncio.get_running_loop()
    task = loop.create_task(body(), context=context)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        await _close(scope)
        raise
    if not done:
        await _close(scope)
        if not task.done():
            log.warning("%s: pyasic call still running after its deadline was cancelled", label)
        raise TimeoutError(f"{label}: no answer within {timeout_s:g}s")
    await _close(scope)
    if task.cancelled():  # cancelled from inside pyasic (it catches and re-cancels)
        raise TimeoutError(f"{label}: cancelled")
    return task.result()


async def _close(scope: Scope) -> None:
    pending = scope.close()
    if not pending:
        return
    await asyncio.wait(pending, timeout=CANCEL_GRACE_S)
    still = [t for t in pending if not t.done()]
    if still:
        log.warning("%s: %d pyasic task(s) ignored cancellation for %.1fs", scope.label,
                    len(still), CANCEL_GRACE_S)
