"""The contract between the socket layer (emulator.server) and a firmware family.

The socket layer owns listening, connection handling and fault injection (hang, refuse,
garbage, slow). A family is pure protocol: it parses a request, reads or changes the
physical model (``EmulatedMiner``) and returns the reply bytes. Families never touch sockets,
so the same fault semantics hold for every firmware.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, TypeGuard

from curtaild.emulator.physics import EmulatedMiner


@dataclass(slots=True)
class HttpRequest:
    method: str  # "GET", "POST", ...
    path: str  # path without query string, e.g. "/cgi-bin/get_system_info.cgi"
    query: str  # raw query string ("" if none)
    headers: dict[str, str]  # header names lower-cased
    body: bytes


@dataclass(slots=True)
class HttpResponse:
    status: int = 200
    body: bytes = b""
    # Content-Type etc.; the server adds Content-Length
    headers: dict[str, str] = field(default_factory=dict)
    #: Real seconds before the reply is sent (a CGI that works before it answers, such as a
    #: stock Antminer's set_miner_conf.cgi); math.inf: never (the client's timeout ends it).
    delay_s: float = 0.0
    #: Close the connection without a byte (a control board that is rebooting).
    drop: bool = False

    @classmethod
    def json(cls, payload: object, status: int = 200) -> HttpResponse:
        import json as _json

        return cls(status, _json.dumps(payload).encode(), {"Content-Type": "application/json"})

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = "text/plain") -> HttpResponse:
        return cls(status, text.encode(), {"Content-Type": content_type})


class Family(Protocol):
    """One firmware family. Instances are shared by all miners of that family."""

    name: str  # one of emulator.models.FAMILIES
    rpc_port: int | None  # 4028 for cgminer-style RPC, None if the family has none
    http_port: int | None  # 80 for the web UI / REST API, None if none

    def handle_rpc(self, miner: EmulatedMiner, request: bytes) -> bytes:
        """One whole RPC request (one per connection); the reply, after which the server closes."""
        ...

    def handle_http(self, miner: EmulatedMiner, request: HttpRequest) -> HttpResponse:
        """One HTTP request on the family's web port."""
        ...


class ClientIpFamily(Family, Protocol):
    """A family whose RPC replies depend on who asks (Whatsminer counts tokens per client
    IP). It says so with ``rpc_client_ip = True``; the server then passes the address."""

    rpc_client_ip: bool

    def handle_rpc(self, miner: EmulatedMiner, request: bytes, client_ip: str = ...) -> bytes:
        ...


def takes_client_ip(family: Family) -> TypeGuard[ClientIpFamily]:
    """The family wants the client's address with each RPC request."""
    return bool(getattr(family, "rpc_client_ip", False))


class FramedFamily(Family, Protocol):
    """A family with a length-framed port (Whatsminer API v3; its ``ports_for`` lists it)."""

    def handle_framed(self, miner: EmulatedMiner, request: bytes,
                      client_ip: str) -> bytes | None:
        """One request (the frame's body); the reply body, or None for no answer."""
        ...
