"""Test support for the market-input drivers: a real HTTP server on loopback that plays the
market APIs (mempool.space, Hashrate Index, an ISO price feed) in their documented formats,
including their failures: errors, 429 with Retry-After, malformed bodies and a server that
never answers."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest


@dataclass
class Reply:
    status: int = 200
    body: bytes | str | Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # accept, read the request, never answer (until the test ends)
    content_type: str = "application/json"

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


def js(doc: Any, status: int = 200, **headers: str) -> Reply:
    return Reply(status, doc, dict(headers))


def text(body: str, status: int = 200, content_type: str = "text/plain") -> Reply:
    return Reply(status, body, content_type=content_type)


@dataclass
class Seen:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    at: float


class FakeApi:
    """Routes by path (no query). A route is a Reply, a list of Replies (served in order, the
    last one repeating) or a callable(Seen) -> Reply."""

    def __init__(self) -> None:
        self.routes: dict[str, Reply | list[Reply] | Callable[[Seen], Reply]] = {}
        self.hits: Counter[str] = Counter()
        self.seen: list[Seen] = []
        self.release = threading.Event()
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                seen = Seen(parts.path, parse_qs(parts.query),
                            {k.lower(): v for k, v in self.headers.items()}, time.time())
                with api.lock:
                    api.hits[parts.path] += 1
                    api.seen.append(seen)
                    route = api.routes.get(parts.path)
                    if isinstance(route, list):
                        reply = route.pop(0) if len(route) > 1 else route[0]
                    elif callable(route):
                        reply = route(seen)
                    else:
                        reply = route
                if reply is None:
                    reply = Reply(404, {"error": "not found"})
                if reply.hang:
                    api.release.wait(60)
                    self.close_connection = True
                    return
                data = reply.payload()
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(data)))
                for k, v in reply.headers.items():
                    self.send_header(k.replace("_", "-"), v)
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients that give up (timeouts, cancelled gathers) are expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeApi:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi().start()
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture
def make_api() -> Iterator[Callable[[], FakeApi]]:
    """Several independent servers (e.g. two mempool instances)."""
    made: list[FakeApi] = []

    def make() -> FakeApi:
        api = FakeApi().start()
        made.append(api)
        return api

    yield make
    for api in made:
        api.stop()


class Clock:
    """A controllable wall clock for refresh/staleness decisions (HTTP itself is real)."""

    def __init__(self, start: float | None = None):
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


# ---------------------------------------------------------------- mempool.space documents
#: The hand calculation used across the tests (see test_hashprice_mempool.py):
#: difficulty 1e14 -> 1e14 * 2**32 / 600 = 7.158278826666667e20 H/s; tip 880000, so the
#: next block (880001) is in the 5th subsidy epoch: 50 / 2**4 = 3.125 BTC; fees 3.6 BTC over
#: blocks 879857..880000 (144) = 0.025 BTC per block; price 100 000 USD.
#: 144 * 3.15 * 100000 * 1e12 / 7.158278826666667e20 = 0.0633672 USD/TH/day.
MEMPOOL_HASHPRICE = 0.06336718797683716


def mempool_routes(api: FakeApi, *, difficulty: float = 1e14, tip: int = 880_000,
                   fee_sats: int = 360_000_000, blocks: int = 144, price: float = 100_000,
                   price_time: float | None = None, current_hashrate: float = 7.0e20) -> None:
    """The four endpoints in mempool.space's shapes (reward-stats sums come as strings, as
    the MySQL SUM() behind them serialises)."""
    subsidy_sats = (50 * 100_000_000) >> ((tip + 1) // 210_000)
    api.routes["/api/blocks/tip/height"] = text(str(tip))
    api.routes["/api/v1/mining/hashrate/3d"] = js({
        "hashrates": [{"timestamp": 1_700_000_000, "avgHashrate": current_hashrate}],
        "difficulty": [{"time": 1_699_000_000, "height": tip - 1000, "difficulty": difficulty,
                        "adjustment": 1.02}],
        "currentHashrate": current_hashrate,
        "currentDifficulty": difficulty,
    })
    api.routes[f"/api/v1/mining/reward-stats/{blocks}"] = js({
        "startBlock": tip - blocks + 1,
        "endBlock": tip,
        "totalReward": str(subsidy_sats * blocks + fee_sats),
        "totalFee": str(fee_sats),
        "totalTx": str(3000 * blocks),
    })
    api.routes["/api/v1/prices"] = js({
        "time": int(price_time if price_time is not None else time.time()),
        "USD": price, "EUR": price * 0.92, "GBP": price * 0.79, "CAD": price * 1.37,
        "CHF": price * 0.88, "AUD": price * 1.52, "JPY": price * 150,
    })
