"""The MQTT bridge: site state out, demand-response events and overrides in (aiomqtt 2.x).

One asyncio task per daemon. It connects with a last will (``<prefix>/status`` = ``offline``,
retained), publishes ``online`` retained on every connection and an explicit ``offline`` on a
clean stop, subscribes to ``<prefix>/cmd/+`` and ``<prefix>/cmd/curtail/cancel`` (not
``cmd/#``: that would bring every answer curtaild publishes back to it, doubling the inbound
traffic of a flood) and reconnects forever with jittered exponential backoff.
**The loop never waits on the broker**: the daemon hands each finished tick to
:meth:`MqttBridge.publish_tick`, which only builds payloads and puts them in an outbox --
retained topics keep only their latest payload (latest state wins), other messages go to a
bounded queue whose oldest entries are dropped (and counted) while the broker is away. A
writer task drains the outbox while connected.

Inbound commands are validated and applied by :class:`controller.directives.DirectiveStore`
(pure); the bridge answers on ``<topic>/response``, saves the store in the journal, and wakes
the loop so a command takes effect at once rather than at the next poll interval.
In a sharded site the bridge also takes the site's demand-response target on
``<prefix>/site/<site_id>/cmd/curtail`` (:class:`SiteCommands`, controller/site_demand.py):
validated by the same store code but saved in etcd, one command at a time, and publishes the
allocator's site record on ``<prefix>/site/<site_id>/state``.

**A flood is answered, never allowed to drop the session.** Commands are taken in batches:
every command waiting (up to ``BATCH_MAX``, or ``BATCH_S``) is applied, the rows they changed
are written to the journal in one transaction, and only then are their answers released (so
``accepted`` still means "saved") and the loop woken once. While more than ``busy_backlog``
commands wait, each is answered ``rejected`` / ``busy: ...`` without being applied (a JSON
parse, no journal write, no tick), so the backlog drains fast; up to ``inbound_queue`` can
wait, room for a sender catching up after a stall. Answers go out ``SEND_WINDOW`` at a time
without waiting for each broker ack, and are never dropped while connected: the reader waits
for the writer when they pile up. bench/mqtt_flood.py: 10,000 commands in 10 s, all answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiomqtt

from curtaild.controller.directives import KINDS, SITE_KINDS, DirectiveStore, Response
from curtaild.controller.loop import TickResult
from curtaild.controller.metrics import MqttCounters
from curtaild.controller.mqtt_config import MqttConfig, MqttTlsConfig
from curtaild.controller.mqtt_payloads import (
    decisions_payload,
    dumps,
    miner_payload,
    miner_topic_id,
    state_payload,
)

log = logging.getLogger("curtaild.mqtt")
client_log = logging.getLogger("curtaild.mqtt.client")

PUBLISH_TIMEOUT_S = 10.0
STOP_PUBLISH_TIMEOUT_S = 3.0
#: commands applied per journal transaction at most, and the longest a batch stays open
BATCH_MAX = 500
BATCH_S = 0.05
#: QoS 1 publishes in flight at once (each waits for its PUBACK)
SEND_WINDOW = 64


@dataclass(frozen=True)
class SiteCommands:
    """A sharded site's commands (controller/site_demand.py): taken on ``<root>/cmd/curtail``
    and ``<root>/cmd/curtail/cancel``, where ``root`` is ``<prefix>/site/<site_id>``; each is
    validated and saved in etcd by ``handle(kind, payload, retained)`` (an etcd round trip,
    awaited one command at a time: site events are rare) and answered on
    ``<topic>/response``. The site record is published retained on ``<root>/state``."""

    root: str
    handle: Callable[[str, bytes, bool], Awaitable[Response]]


class MqttBridge:
    def __init__(self, config: MqttConfig, store: DirectiveStore, *,
                 wake: Callable[[], None] = lambda: None,
                 persist: Callable[[], None] = lambda: None,
                 on_connection_change: Callable[[], None] = lambda: None,
                 known_miners: Callable[[], dict[str, str] | None] = lambda: None,
                 site: SiteCommands | None = None):
        self.config = config
        self.store = store
        self.site = site
        self.site_cmd_prefix = f"{site.root}/cmd/" if site is not None else None
        self.wake = wake
        self.persist = persist
        self.on_connection_change = on_connection_change
        self.known_miners = known_miners
        p = config.topic_prefix
        self.status_topic = f"{p}/status"
        self.cmd_prefix = f"{p}/cmd/"
        # outbox
        self._responses: deque[tuple[str, bytes]] = deque(maxlen=config.publish_queue)
        self._queue: deque[tuple[str, bytes]] = deque(maxlen=config.publish_queue)
        self._retained: dict[str, bytes] = {}  # pending, latest wins
        self._published_retained: dict[str, bytes] = {}  # what the broker should hold
        self._miner_last: dict[str, bytes] = {}
        self._pending = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._backoff = config.reconnect_min_s
        # stats
        self.connected = False
        self.connects = 0
        self.reconnects = 0
        self.dropped = 0
        self.published: dict[str, int] = {}
        self.commands: dict[tuple[str, str], int] = {}
        #: monotonic time of the last command that changed or confirmed something
        self.last_command_mono = 0.0
        # the current inbound batch: answers held until its journal write, and whether it
        # applied anything (then the loop is woken once, after the write)
        self._held: list[tuple[str, bytes]] = []
        self._batch_applied = False
        self._batch_known: dict[str, str] | None = None
        self._batch_known_read = False
        self._batch_size = 0
        #: set by the writer whenever it takes answers out: the reader waits on it when
        #: answers pile up (they are never dropped while connected)
        self._sent = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="mqtt-bridge")

    async def stop(self, grace_s: float = 5.0) -> None:
        """Publish ``offline`` (retained) and disconnect cleanly; never hangs the shutdown."""
        self._stopping.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace_s)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        except Exception:
            log.exception("mqtt: bridge failed while stopping")

    def counters(self) -> MqttCounters:
        return MqttCounters(
            connected=self.connected,
            reconnects=self.reconnects,
            published=tuple(sorted(self.published.items())),
            dropped=self.dropped,
            commands=tuple((t, r, n) for (t, r), n in sorted(self.commands.items())),
        )

    # -------------------------------------------------------------------- outbox
    def _fits(self, topic: str, payload: bytes) -> bool:
        """A message over ``max_publish_bytes`` is dropped (and counted) here: sent, the broker
        would close the connection, and the requeued message would do it again after every
        reconnect."""
        if len(payload) <= self.config.max_publish_bytes:
            return True
        self.dropped += 1
        log.warning("mqtt: %s not published: %d bytes > max_publish_bytes %d", topic,
                    len(payload), self.config.max_publish_bytes)
        return False

    def _put(self, topic: str, payload: bytes) -> None:
        if not self._fits(topic, payload):
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append((topic, payload))
        self._pending.set()

    def _put_retained(self, topic: str, payload: bytes) -> None:
        if not self._fits(topic, payload):
            return
        self._retained[topic] = payload
        self._pending.set()

    def publish_tick(self, result: TickResult, *, curtailed: int,
                     stale_after_s: float | None) -> None:
        """Queue state, decisions and changed miners of one tick (no I/O, never raises on
        the broker's account: it does not touch the connection)."""
        p = self.config.topic_prefix
        view = self.store.view(time.time())
        self._put_retained(f"{p}/state", dumps(state_payload(
            result, view, stale_after_s=stale_after_s, curtailed=curtailed)))
        self._put(f"{p}/decisions", dumps(decisions_payload(result)))
        if self.config.publish_miners:
            for m in result.fleet.miners:
                topic = f"{p}/miners/{miner_topic_id(m)}"
                body = dumps(miner_payload(m, result))
                if self._miner_last.get(topic) != body:
                    self._miner_last[topic] = body
                    self._put_retained(topic, body)

    def publish_site(self, record: dict) -> None:
        """Queue the site record (the allocator's, read from etcd) on ``<root>/state``."""
        if self.site is not None:
            self._put_retained(f"{self.site.root}/state", dumps(record))

    async def _writer(self, client: aiomqtt.Client) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            while self._responses or self._queue or self._retained:
                if self._responses:
                    await self._send_responses(client)
                elif self._queue:
                    topic, body = self._queue.popleft()
                    await self._send(client, topic, body, retain=False,
                                     requeue=partial(self._queue.appendleft, (topic, body)))
                else:
                    topic = next(iter(self._retained))
                    body = self._retained.pop(topic)
                    await self._send(client, topic, body, retain=True,
                                     requeue=partial(self._retained.setdefault, topic, body))
                    self._published_retained[topic] = body

    async def _send_responses(self, client: aiomqtt.Client) -> None:
        """Up to SEND_WINDOW answers at once: one PUBACK round trip per answer would cap a
        flood's answers at a few hundred a second. On a failure every unconfirmed answer of
        the window goes back to the front (sent again after the reconnect)."""
        window = [self._responses.popleft()
                  for _ in range(min(SEND_WINDOW, len(self._responses)))]
        self._sent.set()
        results = await asyncio.gather(
            *(client.publish(t, b, qos=1, retain=False, timeout=PUBLISH_TIMEOUT_S)
              for t, b in window), return_exceptions=True)
        failed = [m for m, r in zip(window, results, strict=True) if isinstance(r, BaseException)]
        ok = len(window) - len(failed)
        self.published["response"] = self.published.get("response", 0) + ok
        if failed:
            self._responses.extendleft(reversed(failed))
            raise next(r for r in results if isinstance(r, BaseException))

    async def _send(self, client: aiomqtt.Client, topic: str, body: bytes, *, retain: bool,
                    requeue: Callable[[], object]) -> None:
        try:
            await client.publish(topic, body, qos=1, retain=retain, timeout=PUBLISH_TIMEOUT_S)
        except BaseException:
            requeue()  # sent again after the reconnect
            raise
        kind = self._kind(topic)
        self.published[kind] = self.published.get(kind, 0) + 1

    def _kind(self, topic: str) -> str:
        rest = topic[len(self.config.topic_prefix) + 1:]
        if rest.startswith("miners/"):
            return "miners"
        if rest.startswith("site/"):
            return "response" if "/cmd/" in rest else "site"
        if rest.startswith("cmd/"):
            return "response"
        return rest

    # -------------------------------------------------------------------- inbound
    def handle_message(self, topic: str, payload: object, *, retained: bool,
                       backlog: int = 0) -> None:
        """Validate and apply one command into the current batch (its answer is held until
        ``commit``); with ``backlog`` (commands still waiting) at ``busy_backlog`` or more it
        is answered busy instead. Never raises (a bad message is answered)."""
        if not topic.startswith(self.cmd_prefix):
            return
        kind = topic[len(self.cmd_prefix):]
        if kind == "response" or kind.endswith("/response"):
            return  # an answer (ours, or a stale subscription's)
        if isinstance(payload, bytes | bytearray):
            body = bytes(payload)
        elif payload is None:
            body = b""
        else:
            body = str(payload).encode()
        busy = backlog >= self.config.busy_backlog
        self._batch_size += 1
        try:
            if busy:
                resp = self.store.shed(kind, body, time.time(), f"overloaded, {backlog} commands "
                                       f"waiting (busy_backlog {self.config.busy_backlog})",
                                       retained=retained)
            else:
                if not self._batch_known_read:  # once per batch: it walks the whole fleet
                    self._batch_known, self._batch_known_read = self.known_miners(), True
                resp = self.store.handle(kind, body, time.time(), retained=retained,
                                         known_miners=self._batch_known)
        except Exception:  # a bug in validation must not kill the bridge
            log.exception("mqtt: command on %s failed to process", topic)
            from curtaild.controller.directives import Response

            resp = Response(None, "rejected", "internal error while processing the command")
        result = self._count(kind if kind in KINDS else "unknown", resp, busy)
        if resp is not None:
            self._held.append((f"{topic}/response", dumps(resp.payload())))
        if result in ("accepted", "expired") and kind != "heartbeat":
            self._batch_applied = True

    def _count(self, label: str, resp: Response | None, busy: bool) -> str:
        """Count and log one answered command; its result label."""
        if resp is None:
            result = "accepted"
        elif resp.duplicate:
            result = "duplicate"
        elif busy and resp.reason.startswith("busy:"):
            result = "busy"
        else:
            result = resp.status
        self.commands[(label, result)] = self.commands.get((label, result), 0) + 1
        if resp is not None:
            if result == "busy":
                log.debug("mqtt %s %s: busy", label, resp.id or "-")
            else:
                log.log(logging.WARNING if resp.status == "rejected" else logging.INFO,
                        "mqtt %s %s: %s (%s)", label, resp.id or "-", resp.status, resp.reason)
        return result

    async def handle_site_message(self, topic: str, payload: object, *, retained: bool,
                                  backlog: int = 0) -> None:
        """One site command (SiteCommands): saved in etcd, then answered at once; with
        ``backlog`` at ``busy_backlog`` or more it is answered busy without an etcd request.
        Never raises (a bad message is answered)."""
        assert self.site is not None and self.site_cmd_prefix is not None
        kind = topic[len(self.site_cmd_prefix):]
        if kind == "response" or kind.endswith("/response"):
            return
        body = bytes(payload) if isinstance(payload, bytes | bytearray) else (
            b"" if payload is None else str(payload).encode())
        busy = backlog >= self.config.busy_backlog and kind in SITE_KINDS
        try:
            if busy:
                resp = self.store.shed(kind, body, time.time(), f"overloaded, {backlog} "
                                       f"commands waiting (busy_backlog "
                                       f"{self.config.busy_backlog})", retained=retained)
            else:
                resp = await self.site.handle(kind, body, retained)
        except Exception:  # a bug must not kill the bridge
            log.exception("mqtt: site command on %s failed to process", topic)
            resp = Response(None, "rejected", "internal error while processing the command")
        label = f"site/{kind}" if kind in SITE_KINDS else "unknown"
        result = self._count(label, resp, busy)
        if resp is not None:
            self._responses.append((f"{topic}/response", dumps(resp.payload())))
            self._pending.set()
        if result in ("accepted", "expired"):
            self.last_command_mono = time.monotonic()
            self.wake()

    def commit(self) -> None:
        """End the batch: save what it changed (one journal transaction), then release its
        answers and wake the loop once. Answers after the save: ``accepted`` means saved."""
        for event_id, why in self.store.take_released():
            log.info("mqtt event %s released: %s", event_id, why)
        if self.store.dirty:
            self.persist()
        if self._held:
            self._responses.extend(self._held)
            self._held = []
            self._pending.set()
        if self._batch_applied:
            self.last_command_mono = time.monotonic()
            self.wake()
        self._batch_applied = False
        self._batch_known, self._batch_known_read = None, False
        self._batch_size = 0

    async def _reader(self, client: aiomqtt.Client) -> None:
        messages = client.messages
        opened = 0.0
        # The answer queue (publish_queue long) drops its oldest when full: wait for the
        # writer past half of it, and keep batches within the other half.
        room = self._responses.maxlen or 1000
        high = max(1, room // 2)
        batch_max = max(1, min(BATCH_MAX, room - high))
        try:
            async for message in messages:
                backlog = len(messages)
                if self.site_cmd_prefix is not None \
                        and str(message.topic).startswith(self.site_cmd_prefix):
                    self.commit()  # the commands before it are saved and answered first
                    await self.handle_site_message(str(message.topic), message.payload,
                                                   retained=message.retain, backlog=backlog)
                    continue
                if self._batch_size == 0:
                    opened = time.monotonic()
                self.handle_message(str(message.topic), message.payload,
                                    retained=message.retain, backlog=backlog)
                if (backlog == 0 or self._batch_size >= batch_max
                        or time.monotonic() - opened >= BATCH_S):
                    self.commit()
                    await asyncio.sleep(0)  # let the writer and the loop run between batches
                    while len(self._responses) >= high:  # never dropped while connected
                        self._sent.clear()
                        await self._sent.wait()
        finally:
            self.commit()  # what was applied is saved and answered (sent after a reconnect)

    # --------------------------------------------------------------- connection
    def _client(self) -> aiomqtt.Client:
        cfg = self.config
        tls_params = None
        if cfg.tls is not None:
            _check_readable(cfg.tls)
            tls_params = aiomqtt.TLSParameters(
                ca_certs=cfg.tls.ca_file, certfile=cfg.tls.cert_file, keyfile=cfg.tls.key_file,
                cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client = _Client(
            cfg.host, cfg.port, identifier=cfg.effective_client_id, username=cfg.username,
            password=cfg.read_password(), keepalive=cfg.keepalive_s,
            timeout=cfg.connect_timeout_s,
            will=aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True),
            tls_params=tls_params, tls_insecure=cfg.tls.insecure if cfg.tls else None,
            max_queued_incoming_messages=cfg.inbound_queue, clean_session=True,
            max_inflight_messages=SEND_WINDOW,
            # paho's own reports (e.g. a TLS alert from a broker that wants a client
            # certificate) are the only place the real reason of some refusals shows up.
            logger=client_log,
        )
        # aiomqtt warns on every publish while more than this many await their ack: with a
        # window of SEND_WINDOW answers in flight that would be one warning per answer.
        client.pending_calls_threshold = 2 * SEND_WINDOW
        return client

    def _set_connected(self, value: bool) -> None:
        if self.connected != value:
            self.connected = value
            with contextlib.suppress(Exception):
                self.on_connection_change()

    async def _session(self, client: aiomqtt.Client) -> bool:
        """One connection; True when it ended because of a stop."""
        async with client:
            self.connects += 1
            self._backoff = self.config.reconnect_min_s  # it is up: the next outage starts over
            self._set_connected(True)
            log.info("mqtt connected to %s:%d as %s", self.config.host, self.config.port,
                     self.config.effective_client_id)
            await client.publish(self.status_topic, b"online", qos=1, retain=True,
                                 timeout=PUBLISH_TIMEOUT_S)
            self.published["status"] = self.published.get("status", 0) + 1
            # every command topic (cmd/<kind>, and cmd/curtail/cancel), none of the answers
            topics = [(f"{self.cmd_prefix}+", 1), (f"{self.cmd_prefix}curtail/cancel", 1)]
            if self.site_cmd_prefix is not None:  # a sharded site's commands
                topics += [(f"{self.site_cmd_prefix}+", 1),
                           (f"{self.site_cmd_prefix}curtail/cancel", 1)]
            await client.subscribe(topics)
            # A broker that restarted without persistence lost our retained topics.
            for topic, body in self._published_retained.items():
                self._retained.setdefault(topic, body)
            self._pending.set()
            tasks = {asyncio.create_task(self._reader(client)),
                     asyncio.create_task(self._writer(client))}
            stopper = asyncio.create_task(self._stopping.wait())
            try:
                done, _ = await asyncio.wait({*tasks, stopper},
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (*tasks, stopper):
                    t.cancel()
                for t in (*tasks, stopper):
                    with contextlib.suppress(BaseException):
                        await t
            if stopper in done:
                try:
                    await client.publish(self.status_topic, b"offline", qos=1, retain=True,
                                         timeout=STOP_PUBLISH_TIMEOUT_S)
                    self.published["status"] = self.published.get("status", 0) + 1
                except Exception as exc:
                    log.warning("mqtt: could not publish offline on stop: %s", exc)
                return True
            for t in done:
                if t is not stopper and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            raise aiomqtt.MqttError("message stream ended")

    async def run(self) -> None:
        """Connect, serve, reconnect forever (until stop)."""
        cfg = self.config
        self._backoff = cfg.reconnect_min_s
        first = True
        while not self._stopping.is_set():
            if not first:
                self.reconnects += 1
            first = False
            client: aiomqtt.Client | None = None
            try:
                client = self._client()
                if await self._session(client):
                    break
            except aiomqtt.MqttError as exc:
                log.warning("mqtt %s:%d: %s", cfg.host, cfg.port, exc)
            except (OSError, ValueError) as exc:  # password file, TLS files (never the secret)
                log.error("mqtt: cannot connect: %s", exc)
            except Exception:
                log.exception("mqtt: unexpected error; reconnecting")
            finally:
                self._set_connected(False)
                _reap(client)
            if self._stopping.is_set():
                break
            delay = self._backoff * random.uniform(0.5, 1.0)
            self._backoff = min(cfg.reconnect_max_s, self._backoff * 2)
            log.info("mqtt: reconnecting in %.1f s", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
        log.info("mqtt bridge stopped")


def _check_readable(tls: MqttTlsConfig) -> None:
    """Fail with the key and the path: ssl's own error for a missing CA or certificate file is
    a bare "[Errno 2] No such file or directory" that names neither."""
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, key)
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"mqtt.tls.{key}: cannot read {path}: {exc.strerror or exc}") \
                from None


class _Client(aiomqtt.Client):
    """aiomqtt's client, with every disconnect error marked as seen when it is set.

    A connection that drops just after its CONNACK (a broker restarting as curtaild connects)
    sets the error on ``_disconnected``, which ``__aenter__`` then replaces with a fresh future
    before anything reads it: asyncio logged "Future exception was never retrieved" at garbage
    collection although the bridge handled the disconnect and reconnected (soak seed 321).
    Reading the exception here only marks it retrieved; whoever awaits the future still gets
    it."""

    def _on_disconnect(self, *args: Any, **kwargs: Any) -> None:
        super()._on_disconnect(*args, **kwargs)
        _reap(self)


def _reap(client: aiomqtt.Client | None) -> None:
    """Mark the client's disconnect error as seen. aiomqtt 2.x sets it on an internal future
    that only a running message iterator or publish reads; when the connection dies between
    those, asyncio would log "Future exception was never retrieved" at garbage collection
    (found by the soak test with broker restarts). The error itself was already handled."""
    fut = getattr(client, "_disconnected", None)
    if isinstance(fut, asyncio.Future) and fut.done() and not fut.cancelled():
        fut.exception()
