"""The etcd adapter: the few coordination primitives curtaild's cluster needs, on etcd3aio.

etcd3aio (PyPI ``etcd3aio``; grpc.aio under it) is the only module that speaks to etcd; this
adapter turns its protobuf replies into plain Python values and its failures into one
exception, :class:`EtcdUnavailable`, so that controller/cluster.py (who leads, what to fence,
what to mirror) never sees gRPC. No decision is taken here. Why this client and not another
is written down in docs/cluster.md.

Every call has a deadline (``timeout_s``): a member that accepts a connection and never
answers must cost the loop a bounded wait, as a hung miner does (drivers/bounded.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc
from etcd3aio import Etcd3Client
from etcd3aio.errors import EtcdError
from etcd3aio.kv import KVService, prefix_range_end

log = logging.getLogger("curtaild.etcd")

#: etcd refuses a transaction of more than 128 operations by default (``--max-txn-ops``).
TXN_OPS = 100
#: ... and a request of more than 1.5 MiB (``--max-request-bytes``): the keys and values of
#: one transaction stay under this.
TXN_BYTES = 1024 * 1024
#: Keys per page of a prefix read: gRPC refuses a reply of more than 4 MiB by default, and a
#: fleet's state is more (``get_prefix`` ``page_keys``: fewer for large values).
PAGE_KEYS = 1000


#: Failures after which the channel is dropped and the next call dials afresh.
#: (Not a timeout: a loop slowed by a big sweep is not a broken channel, and redialling then
#: would only add work.)
_REDIAL = frozenset({grpc.StatusCode.UNAVAILABLE})


#: Channel options beside etcd3aio's own. gRPC shares connections, and their reconnect
#: backoff (up to 120 s), between channels to one address through a process-wide pool: a fresh
#: channel after an outage would inherit the backoff of one that failed through it, so the
#: redial above would wait too. A channel of its own dials at once; the capped backoff bounds
#: how long even a kept channel stays blind once etcd is back.
_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


def _status(exc: BaseException) -> grpc.StatusCode | None:
    """A gRPC error's status code (None for anything else, or an error without one)."""
    code = getattr(exc, "code", None)
    try:
        got = code() if callable(code) else None
    except Exception:  # a status we cannot read is no status
        return None
    return got if isinstance(got, grpc.StatusCode) else None

class EtcdUnavailable(Exception):
    """etcd did not answer in time, refused, or no member could be reached."""


class EtcdReplyTooLarge(EtcdUnavailable):
    """A reply over gRPC's per-message limit (RESOURCE_EXHAUSTED): ask for less at a time."""


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a key: its value, the revision that created it (a leader's term) and the
    lease it lives on."""

    value: bytes
    create_revision: int
    lease_id: int


@dataclass(frozen=True, slots=True)
class EtcdTls:
    """PEM bytes (read by the caller from files or systemd credentials)."""

    ca_cert: bytes
    cert_chain: bytes | None = None
    cert_key: bytes | None = None
    server_name: str | None = None


def grpc_target(endpoint: str) -> str:
    """``http://127.0.0.1:2379`` -> ``127.0.0.1:2379`` (etcd3aio takes host:port)."""
    for scheme in ("http://", "https://"):
        if endpoint.startswith(scheme):
            endpoint = endpoint[len(scheme):]
    return endpoint.rstrip("/")


class EtcdStore:
    """One etcd client: leases, a create-if-absent, fenced transactions, prefix reads."""

    def __init__(self, endpoints: Iterable[str], *, timeout_s: float = 2.0,
                 tls: EtcdTls | None = None, username: str | None = None,
                 password: str | None = None) -> None:
        self.targets = [grpc_target(e) for e in endpoints]
        self.timeout_s = timeout_s
        self.tls = tls
        self.username = username
        self._password = password
        self._client: Etcd3Client | None = None

    async def _connected(self) -> Etcd3Client:
        if self._client is not None:
            return self._client
        tls = self.tls  # None: plain gRPC (etcd3aio's default for each TLS argument)
        client = Etcd3Client(self.targets, rpc_max_attempts=1,
                             tls_server_name=tls.server_name if tls else None,
                             ca_cert=tls.ca_cert if tls else None,
                             cert_chain=tls.cert_chain if tls else None,
                             cert_key=tls.cert_key if tls else None)
        # etcd3aio takes no channel options; its connection manager holds the list it passes
        # to grpc.aio (checked by tests/drivers/test_etcd.py).
        client._manager.grpc_options.extend(_CHANNEL_OPTIONS)
        await client.connect()
        if self.username is not None:
            assert client.auth is not None
            try:
                resp = await self._call(client.auth.authenticate(
                    self.username, self._password or "", timeout=self.timeout_s))
            except BaseException:
                await client.close()
                raise
            client.set_token(resp.token)
        self._client = client
        return client

    async def _call(self, aw):  # type: ignore[no-untyped-def]
        """Await one etcd call within the deadline; every failure is EtcdUnavailable."""
        try:
            return await asyncio.wait_for(aw, timeout=self.timeout_s + 0.5)
        except TimeoutError:
            raise EtcdUnavailable(f"no answer within {self.timeout_s:.1f}s") from None
        except (EtcdError, grpc.RpcError) as exc:
            if _status(exc) in _REDIAL:
                # gRPC backs off its reconnects exponentially (up to 120 s): a channel that
                # failed through an outage would keep failing after etcd is back. A fresh one
                # dials at once, so an instance is back within a step of etcd.
                await self.close()
            text = " ".join(str(exc).split())[:200]
            if _status(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise EtcdReplyTooLarge(f"{type(exc).__name__}: {text}") from None
            raise EtcdUnavailable(f"{type(exc).__name__}: {text}") from None

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def reset(self) -> None:
        """Drop the channel (a token that expired, a channel stuck in a backoff)."""
        await self.close()

    # ------------------------------------------------------------------ leases
    async def grant(self, ttl_s: int) -> int:
        c = await self._connected()
        assert c.lease is not None
        resp = await self._call(c.lease.grant(ttl=ttl_s, timeout=self.timeout_s))
        return int(resp.ID)

    async def keepalive(self, lease_id: int) -> int:
        """Refresh the lease once; its TTL now (0: it had already expired)."""
        c = await self._connected()
        assert c.lease is not None
        call = c.lease.keep_alive(lease_id)

        async def first() -> int:
            async for reply in call:
                return int(reply.TTL)
            return 0

        try:
            return int(await self._call(first()))
        finally:
            call.cancel()

    async def revoke(self, lease_id: int) -> None:
        c = await self._connected()
        assert c.lease is not None
        await self._call(c.lease.revoke(lease_id, timeout=self.timeout_s))

    # ---------------------------------------------------------------------- kv
    async def get(self, key: str) -> Holder | None:
        c = await self._connected()
        assert c.kv is not None
        resp = await self._call(c.kv.get(key, timeout=self.timeout_s))
        if not resp.kvs:
            return None
        kv = resp.kvs[0]
        return Holder(bytes(kv.value), int(kv.create_revision), int(kv.lease))

    async def create(self, key: str, value: bytes, lease_id: int) -> tuple[bool, Holder | None]:
        """Put ``key`` on ``lease_id`` if nobody holds it: (created, the holder now)."""
        c = await self._connected()
        assert c.kv is not None
        resp = await self._call(c.kv.txn(
            compare=[KVService.txn_compare_create_revision(key, 0)],
            success=[KVService.txn_op_put(key, value, lease=lease_id)],
            failure=[KVService.txn_op_get(key)],
            timeout=self.timeout_s))
        if resp.succeeded:
            return True, Holder(value, int(resp.header.revision), lease_id)
        kvs = resp.responses[0].response_range.kvs if resp.responses else []
        if not kvs:
            return False, None
        return False, Holder(bytes(kvs[0].value), int(kvs[0].create_revision),
                             int(kvs[0].lease))

    async def fenced(self, fence_key: str, fence_revision: int,
                     puts: Mapping[str, bytes] | None = None,
                     deletes: Iterable[str] = ()) -> bool:
        """Apply ``puts`` and ``deletes`` only while ``fence_key`` is the one created at
        ``fence_revision`` (the caller's term): False, nothing written, once it is not.

        More than :data:`TXN_OPS` changes, or more than :data:`TXN_BYTES` of them, go in
        several transactions, each fenced (each applied whole or not at all; a False or an
        EtcdUnavailable may come after some were applied); with none, one transaction still
        checks the fence (a linearizable "am I still the leader?")."""
        c = await self._connected()
        assert c.kv is not None
        ops = [(KVService.txn_op_put(k, v), len(k) + len(v)) for k, v in (puts or {}).items()]
        ops += [(KVService.txn_op_delete(k), len(k)) for k in deletes]
        compare = [KVService.txn_compare_create_revision(fence_key, fence_revision)]
        for batch in _batches(ops) if ops else [[]]:
            resp = await self._call(c.kv.txn(compare=compare, success=batch,
                                             timeout=self.timeout_s))
            if not resp.succeeded:
                return False
        return True

    async def get_prefix(self, prefix: str, *, page_keys: int = PAGE_KEYS) -> dict[str, bytes]:
        """Every key under ``prefix``, read in pages of ``page_keys`` at the revision of the
        first page: one consistent view of the prefix however many pages it takes (a write
        between two pages is not seen). One reply may not exceed gRPC's 4 MiB (a leader's
        state at 10,000 miners after a demand-response shed is ~5 MB): a page still too large
        (large values) is asked again with half as many keys."""
        c = await self._connected()
        assert c.kv is not None
        end = prefix_range_end(prefix)
        start: str | bytes = prefix
        revision, limit = 0, page_keys
        out: dict[str, bytes] = {}
        while True:
            try:
                resp = await self._call(c.kv.get(start, range_end=end, revision=revision,
                                                 limit=limit, timeout=self.timeout_s))
            except EtcdReplyTooLarge:
                if limit == 1:
                    raise
                limit = max(1, limit // 2)
                continue
            revision = revision or int(resp.header.revision)
            for kv in resp.kvs:
                out[bytes(kv.key).decode()] = bytes(kv.value)
            if not resp.more or not resp.kvs:
                return out
            start = bytes(resp.kvs[-1].key) + b"\0"  # keys come in ascending order

    async def put(self, key: str, value: bytes, lease_id: int = 0) -> None:
        c = await self._connected()
        assert c.kv is not None
        await self._call(c.kv.put(key, value, lease=lease_id, timeout=self.timeout_s))

    async def delete(self, key: str) -> None:
        c = await self._connected()
        assert c.kv is not None
        await self._call(c.kv.delete(key, timeout=self.timeout_s))


def _batches(ops: list[tuple[object, int]]) -> list[list[object]]:
    """Transaction operations in groups of at most TXN_OPS and TXN_BYTES (an operation
    larger than TXN_BYTES alone: etcd says whether it fits its own limit)."""
    out: list[list[object]] = []
    batch: list[object] = []
    size = 0
    for op, n in ops:
        if batch and (len(batch) >= TXN_OPS or size + n > TXN_BYTES):
            out.append(batch)
            batch, size = [], 0
        batch.append(op)
        size += n
    if batch:
        out.append(batch)
    return out
