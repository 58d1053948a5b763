"""The HTTP server behind ``/metrics``: one thread, one selector, a fixed number of sockets.

Why not wsgiref or http.server: their threading servers start a thread per connection and
read the request with no deadline, so ~1,200 clients that connect and say nothing (a
slowloris) held ~1,200 descriptors, used up the daemon's open-files limit, and every miner
poll then failed with EMFILE (issue 15). The exporter listens on a port Prometheus must
reach, often on the site LAN; whoever can reach it must not be able to starve the fleet.

So this server is bounded by construction:

* **At most ``max_connections`` client sockets**, ever. A connection past the cap takes the
  place of the oldest one that has not finished sending its request (a scraper sends its
  whole request at once, so only an idle or dribbling client is ever pushed out). When every
  slot is busy writing a response, the newcomer gets ``503`` and is closed at once. Either
  way the descriptor count never exceeds :func:`fd_budget`.
* **A deadline for the whole request** (``request_timeout_s`` from the accept), not per read:
  a client sending its headers one byte at a time is dropped on time like a silent one.
* **A deadline for the whole response** (:data:`RESPONSE_TIMEOUT_S`): a client that stops
  reading does not hold its slot for ever.
* Requests are small (:data:`MAX_REQUEST_BYTES`: 431 past it), one per connection
  (``Connection: close``), ``GET`` and ``HEAD`` only.
* Accept errors (the process out of descriptors for some other reason) pause accepting for a
  second rather than spinning.

No thread per connection: the responses are rendered in this thread (a cached snapshot plus a
small live part, milliseconds), never on the daemon's event loop.
"""

from __future__ import annotations

import errno
import logging
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("curtaild.metrics")

#: Descriptors the server holds besides its client sockets: the listening socket, the
#: selector (epoll), the wake-up socket pair, and one just-accepted connection being refused.
OWN_FDS = 5
#: A request line and headers larger than this get 431 (Prometheus sends ~300 bytes).
MAX_REQUEST_BYTES = 8192
#: Time a client has to take the whole response (Prometheus's default scrape_timeout is 10 s).
RESPONSE_TIMEOUT_S = 30.0
#: Connections accepted per wake-up before timeouts and reads get a turn.
ACCEPT_BATCH = 64
#: Pause after an accept error such as EMFILE (the listener stays readable: no busy loop).
ACCEPT_PAUSE_S = 1.0
LISTEN_BACKLOG = 128
#: Why the server closed a connection it had not answered with 200/404, as counted.
DROP_REASONS = ("request_timeout", "response_timeout", "evicted", "over_capacity",
                "bad_request")

#: (method, path, headers with lower-case names) -> (status, headers, body)
Handler = Callable[[str, str, dict[str, str]], tuple[int, list[tuple[str, str]], bytes]]

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}
_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")
_REQUEST_LINE = re.compile(r"^([A-Z]+) (\S+) HTTP/1\.[01]$")
_OVER_CAPACITY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                  b"Content-Length: 28\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
                  b"too many scrape connections\n")


def fd_budget(max_connections: int) -> int:
    """Descriptors the metrics server can hold at once: its cap plus its own."""
    return max_connections + OWN_FDS


@dataclass(eq=False, slots=True)
class _Conn:
    sock: socket.socket
    deadline: float  # monotonic: the request's, then the response's
    inbuf: bytearray = field(default_factory=bytearray)
    out: memoryview | None = None  # the response still to send; None while reading


def response_bytes(status: int, headers: list[tuple[str, str]], body: bytes,
                   head: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if not any(k.lower() == "content-length" for k, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body)


def _plain(status: int, text: str, extra: list[tuple[str, str]] | None = None) -> bytes:
    return response_bytes(status, [("Content-Type", "text/plain; charset=utf-8"),
                                   *(extra or [])], text.encode())


class BoundedHTTPServer:
    """Binds at construction (OSError if it cannot); serves in its own thread from start()."""

    def __init__(self, host: str, port: int, handler: Handler, *, max_connections: int,
                 request_timeout_s: float, response_timeout_s: float = RESPONSE_TIMEOUT_S):
        if max_connections < 1 or request_timeout_s <= 0 or response_timeout_s <= 0:
            raise ValueError("max_connections >= 1 and positive timeouts are required")
        self.handler = handler
        self.max_connections = max_connections
        self.request_timeout_s = request_timeout_s
        self.response_timeout_s = response_timeout_s
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(LISTEN_BACKLOG)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self.port: int = listener.getsockname()[1]
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self._conns: dict[socket.socket, _Conn] = {}  # insertion order: oldest first
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel: selectors.BaseSelector | None = None
        self._thread: threading.Thread | None = None
        self._accept_paused_until: float | None = None
        self._accept_errors_logged: set[int] = set()

    # -------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._serve, name="metrics-http", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving and close every socket (the listener too)."""
        self._stopping = True
        if self._thread is None:
            self._close_all()
            return
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(timeout_s)
        self._thread = None

    def open_connections(self) -> int:
        return len(self._conns)

    # ------------------------------------------------------------------------ loop
    def _serve(self) -> None:
        sel = self._sel
        assert sel is not None
        try:
            while not self._stopping:
                for key, mask in sel.select(self._next_timeout()):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._drain(self._wake_r)
                    # typeshed: fileobj is any FileDescriptorLike, dict.get takes the key
                    # type only; ours are the sockets we registered.
                    elif (conn := self._conns.get(key.fileobj)) is not None:  # type: ignore[call-overload]
                        if mask & selectors.EVENT_READ:
                            self._read(conn)
                        elif mask & selectors.EVENT_WRITE:
                            self._write(conn)
                self._expire()
        except Exception:  # a bug here must not leave the sockets open: log and close
            log.exception("metrics: the HTTP server stopped")
        finally:
            self._close_all()

    def _next_timeout(self) -> float | None:
        deadlines = [c.deadline for c in self._conns.values()]
        if self._accept_paused_until is not None:
            deadlines.append(self._accept_paused_until)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            self.dropped["request_timeout" if conn.out is None else "response_timeout"] += 1
            self._close(conn)
        if self._accept_paused_until is not None and now >= self._accept_paused_until:
            self._accept_paused_until = None
            assert self._sel is not None
            self._sel.register(self._listener, selectors.EVENT_READ, None)

    # ---------------------------------------------------------------------- accept
    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._pause_accepting(exc)
                return
            sock.setblocking(False)
            if len(self._conns) >= self.max_connections and not self._evict_one():
                self.dropped["over_capacity"] += 1
                self._refuse(sock)
                continue
            conn = _Conn(sock, time.monotonic() + self.request_timeout_s)
            self._conns[sock] = conn
            assert self._sel is not None
            self._sel.register(sock, selectors.EVENT_READ, None)
            self._read(conn)  # a scraper's request is usually here already

    def _evict_one(self) -> bool:
        """Close the oldest connection still sending its request; False if none is."""
        for conn in self._conns.values():
            if conn.out is None:
                self.dropped["evicted"] += 1
                self._close(conn)
                return True
        return False

    def _refuse(self, sock: socket.socket) -> None:
        try:
            self._drain(sock)  # an unread request would turn our close into a reset
            sock.send(_OVER_CAPACITY)
        except OSError:
            pass
        sock.close()

    def _pause_accepting(self, exc: OSError) -> None:
        code = exc.errno or 0
        if code not in self._accept_errors_logged:
            self._accept_errors_logged.add(code)
            log.warning("metrics: cannot accept a scrape connection (%s: %s); pausing %.0f s. "
                        "Logged once per kind.", errno.errorcode.get(code, code), exc.strerror,
                        ACCEPT_PAUSE_S)
        self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE_S
        assert self._sel is not None
        self._sel.unregister(self._listener)

    # ------------------------------------------------------------------ read/write
    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)  # the client went away
            return
        if conn.out is not None:
            return  # anything after the request is ignored; we close after the response
        conn.inbuf += data
        end = _END_OF_HEADERS.search(conn.inbuf)
        if end is None or end.start() > MAX_REQUEST_BYTES:
            if len(conn.inbuf) > MAX_REQUEST_BYTES:
                self._reject(conn, 431, "request headers too large\n")
            return
        head = bytes(conn.inbuf[:end.start()]).decode("latin-1")
        first, *lines = head.splitlines()
        m = _REQUEST_LINE.match(first)
        if m is None:
            self._reject(conn, 400, "bad request line\n")
            return
        method, target = m.groups()
        if method not in ("GET", "HEAD"):
            self._reject(conn, 405, "only GET and HEAD\n", [("Allow", "GET, HEAD")])
            return
        headers: dict[str, str] = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        path = target.split("?", 1)[0]
        try:
            status, out_headers, body = self.handler(method, path, headers)
            response = response_bytes(status, out_headers, body, head=method == "HEAD")
        except Exception:
            log.exception("metrics: rendering the scrape failed")
            response = _plain(500, "internal error\n")
        self._respond(conn, response)

    def _reject(self, conn: _Conn, status: int, text: str,
                extra: list[tuple[str, str]] | None = None) -> None:
        self.dropped["bad_request"] += 1
        self._respond(conn, _plain(status, text, extra))

    def _respond(self, conn: _Conn, response: bytes) -> None:
        conn.out = memoryview(response)
        conn.inbuf = bytearray()
        conn.deadline = time.monotonic() + self.response_timeout_s
        assert self._sel is not None
        self._sel.modify(conn.sock, selectors.EVENT_WRITE, None)
        self._write(conn)  # most responses fit the socket buffer: done at once

    def _write(self, conn: _Conn) -> None:
        assert conn.out is not None
        while conn.out:  # until the socket buffer is full: one wake-up per buffer, not chunk
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(conn)
                return
            conn.out = conn.out[sent:]
        self._close(conn, graceful=True)

    # ----------------------------------------------------------------------- close
    @staticmethod
    def _drain(sock: socket.socket) -> None:
        for _ in range(16):
            try:
                if not sock.recv(65536):
                    return
            except OSError:
                return

    def _close(self, conn: _Conn, graceful: bool = False) -> None:
        self._conns.pop(conn.sock, None)
        if self._sel is not None:
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        if graceful:
            try:
                self._drain(conn.sock)  # an unread byte would reset the response away
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        conn.sock.close()

    def _close_all(self) -> None:
        for conn in list(self._conns.values()):
            self._close(conn)
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
