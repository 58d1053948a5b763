"""Socket layer: every emulated miner listens on its own loopback address, at real ports.

Why raw asyncio Protocols (not aiohttp or streams): a fleet of 10,000 miners means ~16,000
listening sockets in one process. A Protocol costs one small object per connection and no task,
and a listener costs one ``asyncio.Server``; per request we parse a few header lines and call
the family. Sockets are created and bound by hand (no getaddrinfo per listener) so startup is
linear and fast.

Fault injection lives here, identical for every family, because faults are about the network
behaviour of a broken machine, not about its protocol:

* ``hang``     accept and read the request, never answer, keep the connection open;
* ``refuse``   stop listening (connects get ECONNREFUSED) until the fault is cleared;
* ``garbage``  the firmware dies mid-reply: the first few dozen bytes, then the socket closes
  (truncated JSON on the RPC port, a truncated status/header block on HTTP);
* ``slow``     every reply is sent ``fault.delay_s`` real seconds late;
* ``ignore_sleep`` is physics (the firmware accepts sleep and keeps hashing).

Hostile kinds: a device on a fleet address that attacks the client rather than just failing
(the probe of issue 15 grew a client to 3 GB in a minute with ``endless``). Every one applies
to every port, RPC and HTTP alike:

* ``endless``  from the moment a connection is accepted, stream a reply that never ends (an
  RPC JSON prefix then filler; on HTTP a 200 head without Content-Length then filler), as fast
  as the client reads it;
* ``huge``     a well-framed reply of ``fault.size_bytes`` (default 50 MB) instead of the real
  one (HTTP: with its Content-Length);
* ``nested``   a short reply that is valid JSON nested ``NESTED_DEPTH`` arrays deep: a
  recursive parser (``json.loads``) raises RecursionError on it;
* ``accept_close`` accept, then close at once without a byte;
* ``drip``     the real reply, one byte every ``fault.delay_s`` seconds.

Replies that are streamed (``endless``, ``huge``, ``drip``) are generated lazily and written
only as fast as the client drains them (``pause_writing``/``resume_writing``), so a hostile
miner costs the emulator a few kilobytes per connection, not the reply's size.

Off the network and rebooting (every family; firmware-behaviour.md "Every family"): a host
whose mains power is cut is *blackholed*: its addresses hold a listening socket with a zero
backlog that is never accepted, so the kernel drops every SYN past the first and a client's
connect times out, as on a real LAN where a dead host answers nothing (``refuse`` is the other
silence: the host is up and nothing listens). A control board that reboots (a reboot command,
the ``silent_reboot`` fault, power coming back) is silent for its boot time: blackholed for the
first half (the NIC is down), refused for the second (the host is up, the miner daemon not yet).
``EmulatedMiner.board_down_until`` says when: ``reboot_board()`` and ``restore_power()`` set it
(the stock Antminer family also drops connections during its own reboots).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import resource
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from curtaild.emulator.families.base import Family, HttpRequest, HttpResponse, takes_client_ip
from curtaild.emulator.physics import FAULT_KINDS, EmulatedMiner, Fault

log = logging.getLogger("emulator.server")

BACKLOG = 128
RPC_MAX_REQUEST = 64 * 1024
HTTP_MAX_HEAD = 32 * 1024
HTTP_MAX_BODY = 4 * 1024 * 1024
#: ``garbage`` sends at most this many bytes of the real reply before closing.
GARBAGE_BYTES = 40
#: ``nested``: arrays this deep (CPython's json gives up near 1,000 with RecursionError).
NESTED_DEPTH = 100_000
#: Streamed replies are written in chunks of this size, at most STREAM_BURST per loop pass so a
#: fast reader never starves the other miners of the emulator's single event loop.
STREAM_CHUNK = 64 * 1024
STREAM_BURST = 16
#: The start of every endless/huge RPC reply: plausible cgminer JSON, so a client cannot tell
#: from the first bytes that the rest is filler.
HOSTILE_PREFIX = b'{"STATUS":[{"STATUS":"S","When":0,"Code":11,"Msg":"'
HOSTILE_SUFFIX = b'","Description":"emulator"}],"id":1}'

#: Families that apply the ``silent_reboot`` fault themselves (the stock Antminer reboots its
#: board and drops connections while it is down: emulator/families/antminer.py), not here.
OWN_REBOOT_FAMILIES = frozenset({"antminer"})

REASONS = {
    200: "OK", 204: "No Content", 302: "Found", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
    411: "Length Required", 413: "Payload Too Large", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 503: "Service Unavailable",
}


class BindError(OSError):
    """A listener could not be bound; the message names the address and port and says why."""

    def __init__(self, err: int | None, message: str) -> None:
        super().__init__(message)
        self.errno = err

    def __str__(self) -> str:
        return str(self.args[0])


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit: each miner holds 1-2 listening sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # pragma: no cover - unusual platforms
            log.warning("could not raise RLIMIT_NOFILE from %s to %s: %s", soft, hard, exc)
    return soft, hard


def bind_listener(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A non-blocking listening TCP socket on host:port, with a specific error if it fails.

    SO_REUSEADDR lets a miner listen again right after ``refuse`` is cleared even though
    connections from before are still in TIME_WAIT; Linux still refuses a second *listener*
    on the same address, so a clash with another process is still reported.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setblocking(False)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(exc.errno, _bind_message(host, port, exc)) from exc
    return sock


def _bind_message(host: str, port: int, exc: OSError) -> str:
    where = f"cannot listen on {host}:{port}"
    if exc.errno == errno.EACCES:
        return (f"{where}: permission denied - ports below 1024 need root "
                "(or CAP_NET_BIND_SERVICE); the emulated firmware uses the real ports 80/4028")
    if exc.errno == errno.EADDRINUSE:
        return (f"{where}: address already in use - is another emulator (or a web server "
                "bound to 0.0.0.0) already running?")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{where}: address not available on this host (use 127.x.y.z addresses)"
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return (f"{where}: too many open files (RLIMIT_NOFILE soft={soft} hard={hard}); "
                "raise the hard limit (ulimit -Hn) or emulate fewer miners")
    return f"{where}: {exc.strerror or exc}"


# --------------------------------------------------------------------------- protocols
class Site(Protocol):
    """What a connection talks to: a miner's firmware, or the control API."""

    def fault(self) -> Fault | None: ...

    def handle_http(self, request: HttpRequest) -> HttpResponse: ...


def json_request_complete(buf: bytes | bytearray) -> bool:
    """True once ``buf`` holds one whole JSON object or array.

    cgminer-style requests carry no terminator (pyasic writes the JSON and waits for EOF), so
    the only way to know the request is complete is to balance brackets outside strings.
    Anything that does not start like JSON is taken as complete (plain-text API or junk).
    """
    depth = 0
    in_str = escaped = started = False
    for byte in buf:
        if in_str:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_str = False
            continue
        if byte in (0x20, 0x09, 0x0A, 0x0D) and not started:
            continue
        if not started:
            if byte not in (0x7B, 0x5B):  # { [
                return True
            started = True
        if byte == 0x22:
            in_str = True
        elif byte in (0x7B, 0x5B):
            depth += 1
        elif byte in (0x7D, 0x5D):
            depth -= 1
            if depth == 0:
                return True
    return False


class Streamer:
    """Writes an iterator of chunks to a transport as fast as the client drains it.

    The protocol forwards ``pause_writing``/``resume_writing`` here, so a client that stops
    reading costs the emulator one transport buffer (64 KiB high-water mark), not the reply.
    ``interval_s`` > 0 writes one chunk per interval instead (``drip``). ``done`` runs after
    the last chunk (close, or go on with the next keep-alive request).
    """

    __slots__ = ("chunks", "done", "handle", "interval_s", "loop", "paused", "transport")

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: asyncio.BaseTransport,
                 chunks: Iterator[bytes], done: Callable[[], None],
                 interval_s: float = 0.0) -> None:
        self.loop = loop
        self.transport = transport
        self.chunks = chunks
        self.done = done
        self.interval_s = interval_s
        self.paused = False
        self.handle: asyncio.Handle | None = None

    def start(self) -> None:
        self._schedule(0.0)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        if self.handle is None:
            self._schedule(0.0)

    def _schedule(self, delay_s: float) -> None:
        if delay_s > 0:
            self.handle = self.loop.call_later(delay_s, self._pump)
        else:
            self.handle = self.loop.call_soon(self._pump)

    def _pump(self) -> None:
        self.handle = None
        transport = self.transport
        burst = 1 if self.interval_s > 0 else STREAM_BURST
        for _ in range(burst):
            if self.paused or transport.is_closing():
                return  # resume_writing schedules the next pass; a closed client ends it
            chunk = next(self.chunks, None)
            if chunk is None:
                self.done()
                return
            transport.write(chunk)  # type: ignore[attr-defined]
        if not self.paused and not transport.is_closing():
            self._schedule(self.interval_s)


def _filler(total: int | None) -> Iterator[bytes]:
    """``total`` bytes of filler in STREAM_CHUNK pieces; endless if None."""
    block = b"x" * STREAM_CHUNK
    if total is None:
        while True:
            yield block
    while total > 0:
        piece = block if total >= STREAM_CHUNK else block[:total]
        total -= len(piece)
        yield piece


def _http_head(length: int | None) -> bytes:
    """A 200 head for a hostile body: Content-Length when the body ends, Connection: close."""
    lines = ["HTTP/1.1 200 OK", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def nested_body(depth: int = NESTED_DEPTH) -> bytes:
    """Valid JSON nested ``depth`` arrays deep inside a cgminer-like object (it ends with
    ``}``, so pyasic's RPC clean-ups hand it to ``json.loads`` unchanged)."""
    return b'{"STATUS":' + b"[" * depth + b"]" * depth + b',"id":1}'


def _hostile_chunks(kind: str, http: bool, size_bytes: int) -> Iterator[bytes]:
    """The bytes of an ``endless`` (size ignored) or ``huge`` reply, framed for the port."""
    if kind == "endless":
        yield (_http_head(None) if http else b"") + HOSTILE_PREFIX
        yield from _filler(None)
        return
    fixed = len(HOSTILE_PREFIX) + len(HOSTILE_SUFFIX)
    fill = max(0, size_bytes - fixed)
    yield (_http_head(fill + fixed) if http else b"") + HOSTILE_PREFIX
    yield from _filler(fill)
    yield HOSTILE_SUFFIX


def _filler_of(data: bytes) -> Iterator[bytes]:
    """``data`` in STREAM_CHUNK pieces."""
    for i in range(0, len(data), STREAM_CHUNK):
        yield data[i:i + STREAM_CHUNK]


def _bytewise(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i:i + 1]


class _Streaming(Protocol):
    streamer: Streamer | None


class StreamingProtocol(asyncio.Protocol):
    """What every miner port's protocol does alike: a reply streamed by a hostile fault
    (``Streamer``) follows the transport's flow control, and a lost connection drops its
    transport so that nothing is written to it later. The slots for ``transport`` and
    ``streamer`` are here; subclasses set them in ``__init__``."""

    __slots__ = ("streamer", "transport")
    transport: asyncio.Transport | None
    streamer: Streamer | None

    def pause_writing(self) -> None:
        if self.streamer is not None:
            self.streamer.pause()

    def resume_writing(self) -> None:
        if self.streamer is not None:
            self.streamer.resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def peer_ip(transport: asyncio.BaseTransport) -> str:
    """The client's address ("" if the socket no longer knows it): firmware counts some
    things per client IP (Whatsminer tokens), and families see who asks."""
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if peer else ""


def accept_hostile(fault: Fault | None, transport: asyncio.BaseTransport,
                   owner: _Streaming, http: bool) -> bool:
    """Faults that act when a connection is accepted, before any request: ``accept_close``
    and ``endless``. Returns True if the connection is taken over (no request is served)."""
    kind = fault.kind if fault is not None else "none"
    if kind == "accept_close":
        transport.close()
        return True
    if kind == "endless":
        owner.streamer = Streamer(asyncio.get_running_loop(), transport,
                                  _hostile_chunks("endless", http, 0), transport.close)
        owner.streamer.start()
        return True
    return False


def _deliver(loop: asyncio.AbstractEventLoop, fault: Fault | None,
             transport: asyncio.Transport, render: Callable[[], bytes],
             send: Callable[[bytes], None], owner: _Streaming | None = None,
             http: bool = False) -> bool:
    """Apply the fault to one reply. Returns False if the reply will never be sent.

    ``owner`` is the protocol (it forwards flow control to a streamed reply); ``http`` says
    how a hostile reply is framed (a status line and headers, or raw bytes on the RPC port).
    """
    kind = fault.kind if fault is not None else "none"
    if kind in ("huge", "nested", "drip") and owner is not None and fault is not None:
        if kind == "huge":
            chunks = _hostile_chunks("huge", http, fault.size_bytes)
            owner.streamer = Streamer(loop, transport, chunks, transport.close)
        elif kind == "nested":
            body = nested_body()
            data = (_http_head(len(body)) if http else b"") + body
            owner.streamer = Streamer(loop, transport, _filler_of(data), transport.close)
        else:  # drip: the real reply, a byte at a time, then on as a healthy reply would
            owner.streamer = Streamer(loop, transport, _bytewise(render()),
                                      lambda: send(b""), interval_s=max(0.0, fault.delay_s))
        owner.streamer.start()
        return True
    if kind == "hang":
        return False  # read, never answer; the client's timeout is the only way out
    if kind == "refuse":
        transport.abort()  # listeners are already closed; drop what is still connected
        return False
    if kind == "garbage":
        data = render()
        transport.write(data[: max(1, min(len(data) // 2, GARBAGE_BYTES))])
        transport.close()
        return False
    if kind == "slow" and fault is not None:
        def later() -> None:
            if not transport.is_closing():
                send(render())
        loop.call_later(max(0.0, fault.delay_s), later)
        return True
    send(render())
    return True


class RpcProtocol(StreamingProtocol):
    """cgminer-style API: one JSON request per connection; reply, then close (EOF ends it)."""

    __slots__ = ("buf", "done", "endpoint", "peer")

    def __init__(self, endpoint: MinerEndpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.done = False
        self.streamer: Streamer | None = None
        self.peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = peer_ip(transport)
        if accept_hostile(self.endpoint.fault(), transport, self, http=False):
            self.done = True  # requests on this connection are never answered

    def data_received(self, data: bytes) -> None:
        if self.done:
            return  # answered (or hanging): later bytes are ignored, as cgminer does
        self.buf += data
        if len(self.buf) >= RPC_MAX_REQUEST or json_request_complete(self.buf):
            self._answer()

    def eof_received(self) -> bool:
        if not self.done:
            if not self.buf:
                return False  # connected and left without asking: close, as cgminer does
            self._answer()
        return True  # keep our half open: the reply may still be on its way (slow, hang)

    def _answer(self) -> None:
        self.done = True
        transport = self.transport
        if transport is None:
            return
        request = bytes(self.buf)
        endpoint = self.endpoint
        endpoint.miner.commands_received += 1

        peer = self.peer

        def render() -> bytes:
            try:
                family = endpoint.family
                if takes_client_ip(family):
                    # a firmware that counts per client (Whatsminer tokens per IP)
                    return family.handle_rpc(endpoint.miner, request, peer)
                return family.handle_rpc(endpoint.miner, request)
            except Exception:
                log.exception("%s: RPC handler failed for %r", endpoint.ip, request[:200])
                return b""

        def send(reply: bytes) -> None:
            transport.write(reply)
            transport.close()

        _deliver(endpoint.loop, endpoint.fault(), transport, render, send, self, http=False)
        endpoint.after_request()


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_http_request(buf: bytearray) -> tuple[HttpRequest, bool, int] | None:
    """One request from the front of ``buf``: (request, keep_alive, bytes consumed) or None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > HTTP_MAX_HEAD:
            raise _BadRequest(431, "request head too large")
        return None
    head = bytes(buf[:end]).decode("latin-1")
    lines = head.split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError:
        raise _BadRequest(400, f"malformed request line {lines[0][:80]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise _BadRequest(411, "chunked request bodies are not supported; send Content-Length")
    try:
        length = int(headers.get("content-length", "0") or 0)
    except ValueError:
        raise _BadRequest(400, "bad Content-Length") from None
    if length < 0 or length > HTTP_MAX_BODY:
        raise _BadRequest(413, "request body too large")
    total = end + 4 + length
    if len(buf) < total:
        return None
    body = bytes(buf[end + 4: total])
    path, _, query = target.partition("?")
    conn = headers.get("connection", "").lower()
    keep_alive = "close" not in conn if version == "HTTP/1.1" else "keep-alive" in conn
    return HttpRequest(method.upper(), path, query, headers, body), keep_alive, total


def render_http_response(resp: HttpResponse, keep_alive: bool, head_only: bool = False) -> bytes:
    """Status line, headers (Content-Length and Connection added here) and body."""
    reason = REASONS.get(resp.status, "Unknown")
    lines = [f"HTTP/1.1 {resp.status} {reason}"]
    for name, value in resp.headers.items():
        if name.lower() not in ("content-length", "connection"):
            lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(resp.body)}")
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + resp.body


class HttpProtocol(StreamingProtocol):
    """Minimal HTTP/1.1: Content-Length bodies, keep-alive, one request in flight at a time."""

    __slots__ = ("buf", "busy", "site", "taken")

    def __init__(self, site: Site) -> None:
        self.site = site
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False
        self.streamer: Streamer | None = None
        self.taken = False  # a hostile fault owns the connection: requests are not served

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.taken = accept_hostile(self.site.fault(), transport, self, http=True)

    def data_received(self, data: bytes) -> None:
        if self.taken:
            return
        self.buf += data
        if not self.busy:
            self._next()
        elif len(self.buf) > HTTP_MAX_HEAD + HTTP_MAX_BODY and self.transport is not None:
            self.transport.abort()  # a client pipelining without end behind a hung reply

    def eof_received(self) -> bool:
        # half-closed client with a reply pending (slow) or a hostile stream: keep writing
        return self.busy or self.taken

    def _next(self) -> None:
        transport = self.transport
        if transport is None or self.busy:
            return
        try:
            parsed = parse_http_request(self.buf)
        except _BadRequest as exc:
            transport.write(render_http_response(
                HttpResponse.text(f"{exc.status} - {exc}\n", exc.status), keep_alive=False))
            transport.close()
            return
        if parsed is None:
            return
        request, keep_alive, used = parsed
        del self.buf[:used]
        self.busy = True
        site = self.site
        if isinstance(site, MinerEndpoint):
            site.miner.commands_received += 1

        timing: list[HttpResponse] = []  # the family's response: its delay_s and drop

        def render() -> bytes:
            try:
                resp = site.handle_http(request)
            except Exception:
                log.exception("HTTP handler failed for %s %s", request.method, request.path)
                resp = HttpResponse.text("500 - Internal Server Error\n", 500)
            timing.append(resp)
            return render_http_response(resp, keep_alive, head_only=request.method == "HEAD")

        def send_now(data: bytes) -> None:
            transport.write(data)
            self.busy = False
            if keep_alive:
                if self.buf:
                    self._next()
            else:
                transport.close()

        def send(data: bytes) -> None:
            """As the family asked: now, after its delay_s, never (inf), or a bare close."""
            resp = timing[-1] if timing else None
            if resp is not None and resp.drop:
                transport.close()
                return
            delay = resp.delay_s if resp is not None else 0.0
            if delay <= 0:
                send_now(data)
            elif math.isfinite(delay):
                loop.call_later(delay, lambda: None if transport.is_closing()
                                else send_now(data))
            # inf: never answered, like the hang fault

        loop = asyncio.get_running_loop()
        _deliver(loop, site.fault(), transport, render, send, self, http=True)
        if isinstance(site, MinerEndpoint):
            site.after_request()


# ------------------------------------------------------------------------ the fleet
class MinerEndpoint:
    """One machine on the network: physical model, firmware family and its listeners.

    Listening sockets are bound synchronously (so a bind error surfaces in the caller and a
    client connecting right after a control call is queued in the backlog), then handed to
    ``asyncio.Server`` objects. ``generation`` makes a stop that races a pending start win.
    """

    __slots__ = ("blackholes", "family", "generation", "loop", "miner", "pending", "resync",
                 "servers")

    def __init__(self, miner: EmulatedMiner, family: Family,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.miner = miner
        self.family = family
        self.loop = loop
        self.servers: list[asyncio.Server] = []
        self.pending: list[tuple[socket.socket, str]] = []  # bound, not yet served
        self.generation = 0
        #: listening sockets never accepted (zero backlog): connects time out
        self.blackholes: list[socket.socket] = []
        self.resync: asyncio.TimerHandle | None = None  # the next timed network change

    @property
    def ip(self) -> str:
        return self.miner.ip

    def fault(self) -> Fault:
        return self.miner.fault

    def handle_http(self, request: HttpRequest) -> HttpResponse:
        return self.family.handle_http(self.miner, request)

    def silent_reboot(self) -> None:
        """The ``silent_reboot`` fault: the control board reboots unasked (once per fault
        set), silent for its boot time. Families in OWN_REBOOT_FAMILIES apply it themselves."""
        if self.family.name in OWN_REBOOT_FAMILIES:
            return
        actor, self.miner.actor = self.miner.actor, "firmware"
        try:
            self.miner.reboot_board()
        finally:
            self.miner.actor = actor

    @property
    def ports(self) -> list[tuple[int, str]]:
        """(port, kind) to listen on; a family whose ports differ per machine (Whatsminer
        firmware with API v3 adds a length-framed port) says so with ``ports_for(miner)``."""
        ports_for = getattr(self.family, "ports_for", None)
        if ports_for is not None:
            return list(ports_for(self.miner))
        out = []
        if self.family.rpc_port is not None:
            out.append((self.family.rpc_port, "rpc"))
        if self.family.http_port is not None:
            out.append((self.family.http_port, "http"))
        return out

    @property
    def listening(self) -> bool:
        return bool(self.servers or self.pending)

    def network_state(self) -> tuple[str, float | None]:
        """("up" | "refused" | "blackhole", clock time it next changes by itself or None).

        Powered off: blackholed (off the network). A control board booting after a reboot or
        a power cut: blackholed for the first half of its boot, refused for the second. The
        ``refuse`` fault: refused."""
        miner = self.miner
        if miner.state == "off":
            return "blackhole", None
        now, up_at = miner.clock(), miner.board_down_until
        if now < up_at:
            half = up_at - miner.board_boot_s * miner.time_scale / 2.0
            return ("blackhole", half) if now < half else ("refused", up_at)
        if miner.fault.kind == "refuse":
            return "refused", None
        return "up", None

    def should_listen(self) -> bool:
        return self.network_state()[0] == "up"

    def bind(self) -> None:
        """Bind every port now (all or none); ``serve()`` starts accepting on them."""
        socks: list[tuple[socket.socket, str]] = []
        try:
            for port, kind in self.ports:
                socks.append((bind_listener(self.ip, port), kind))
        except BindError:
            for sock, _ in socks:
                sock.close()
            raise
        self.pending.extend(socks)

    async def serve(self) -> None:
        generation = self.generation
        while self.pending and generation == self.generation:
            sock, kind = self.pending.pop(0)
            if kind == "rpc":
                factory: Callable[[], asyncio.Protocol] = lambda: RpcProtocol(self)  # noqa: E731
            elif kind == "framed":
                from curtaild.emulator.framed import FramedProtocol  # it builds on this module

                factory = lambda: FramedProtocol(self)  # noqa: E731
            else:
                factory = lambda: HttpProtocol(self)  # noqa: E731
            server = await self.loop.create_server(factory, sock=sock, backlog=BACKLOG)
            if generation != self.generation:
                server.close()  # stopped while we were starting
            else:
                self.servers.append(server)

    def stop_listening(self) -> None:
        """Close every listening socket now: from here on, connects are refused."""
        self.generation += 1
        for server in self.servers:
            server.close()
        self.servers = []
        for sock, _ in self.pending:
            sock.close()
        self.pending = []

    def bind_blackholes(self) -> None:
        """Every port held by a socket that listens with a zero backlog and is never
        accepted: the first connect completes and hangs, every later one times out."""
        socks: list[socket.socket] = []
        try:
            for port, _ in self.ports:
                socks.append(bind_listener(self.ip, port, backlog=0))
        except BindError:
            for sock in socks:
                sock.close()
            raise
        self.blackholes.extend(socks)

    def close_blackholes(self) -> None:
        for sock in self.blackholes:
            sock.close()
        self.blackholes = []

    def sync_listening(self) -> None:
        """Listen, refuse or blackhole according to fault, power and boot state (after
        run-time changes, after each request, and when a boot phase ends)."""
        state, until = self.network_state()
        if state != "up" and self.listening:
            self.stop_listening()
        if state != "blackhole" and self.blackholes:
            self.close_blackholes()
        if state == "up" and not self.listening:
            self.bind()
            task = self.loop.create_task(self.serve())
            task.add_done_callback(_log_task_error)
        elif state == "blackhole" and not self.blackholes:
            self.bind_blackholes()
        if self.resync is not None:
            self.resync.cancel()
            self.resync = None
        if until is not None:
            delay = max(0.0, until - self.miner.clock()) + 0.001
            self.resync = self.loop.call_later(delay, self._resync)

    def _resync(self) -> None:
        self.resync = None
        try:
            self.sync_listening()
        except BindError as exc:
            log.error("%s: %s", self.ip, exc)

    def after_request(self) -> None:
        """A request may have rebooted the control board (a reboot command): go silent now
        (the reply already written still leaves on its open connection)."""
        if self.network_state()[0] != "up":
            self._resync()


def _log_task_error(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("listener task failed: %s", task.exception())


class FleetServer:
    """All miners' listeners, plus the run-time switches the control API needs."""

    def __init__(self, miners: Iterable[EmulatedMiner], family_of: Callable[[str], Family],
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.endpoints: dict[str, MinerEndpoint] = {}
        for miner in miners:
            if miner.ip in self.endpoints:
                raise ValueError(f"duplicate miner address {miner.ip}")
            self.endpoints[miner.ip] = MinerEndpoint(
                miner, family_of(miner.spec.firmware), self.loop)

    async def start(self) -> None:
        """Bind every listener; on the first failure close what was bound and raise BindError."""
        try:
            for endpoint in self.endpoints.values():
                if endpoint.miner.fault.kind == "silent_reboot":
                    endpoint.silent_reboot()
                if endpoint.should_listen():
                    endpoint.bind()
                    await endpoint.serve()
                else:
                    endpoint.sync_listening()  # blackholed or refused (and when it ends)
        except BindError:
            await self.close()
            raise

    @property
    def listener_count(self) -> int:
        return sum(len(e.servers) for e in self.endpoints.values())

    def set_fault(self, ip: str, kind: str, delay_s: float | None = None,
                  size_bytes: int | None = None) -> None:
        """Switch a miner's fault at run time; ``refuse`` closes its listeners at once."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(FAULT_KINDS)}")
        endpoint = self.endpoints[ip]
        fault = Fault(kind=kind)
        if delay_s is not None:
            fault.delay_s = float(delay_s)
        if size_bytes is not None:
            fault.size_bytes = int(size_bytes)
        endpoint.miner.fault = fault
        if kind == "silent_reboot":
            endpoint.silent_reboot()
        endpoint.sync_listening()

    def sync_listening(self, ip: str) -> None:
        self.endpoints[ip].sync_listening()

    async def close(self) -> None:
        """Stop every listener. Open connections (e.g. hung ones) die with the process."""
        for endpoint in self.endpoints.values():
            endpoint.stop_listening()
            endpoint.close_blackholes()
            if endpoint.resync is not None:
                endpoint.resync.cancel()
        await asyncio.sleep(0)
