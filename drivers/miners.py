"""Miners through pyasic: discovery, polling and commands, each under a deadline.

pyasic's calls have no overall deadline (a miner that accepts and never answers stalls a
``get_data()`` for minutes) and unbounded concurrency makes discovery fail silently, so every
call here runs under ``asyncio.wait_for`` behind a semaphore. Miner objects are kept between
polls (they cache tokens and sessions) and dropped for re-discovery after repeated failures;
re-discovery runs in the background so that a dead or hung address never stretches a sweep.
No decisions are made here: this module only turns the fleet into readings and commands into
pyasic calls.

Polling cost (bench/sweep.py, docs/benchmarks.md): a sweep asks pyasic only for what the loop
reads, asks for ``is_mining`` only when it can change the answer (a machine that hashes is
mining whatever it claims), and reads stock Antminers over their RPC port alone (``summary+stats``
in one connection, parsed by pyasic's own BMMiner parsers) instead of ``get_data``'s two
digest-authenticated web calls, which cost about ten times more client CPU.

Hostile devices (issue 15): every pyasic call -- discovery, poll, credential check, command --
runs in a miner scope of ``drivers.bounded``, which caps each reply at
``bounded.MAX_REPLY_BYTES`` and, at the deadline, ends every task and socket the call started
(pyasic's discovery probes included). A reply that is too large, nested past the JSON parser's
recursion limit or undecodable is a "garbage" reading; error texts are cut to
``MAX_ERROR_CHARS`` (pyasic puts whole replies in its exception messages). ``stop()`` abandons
the sweep in progress and refuses new commands, so SIGTERM ends a tick in bounded time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pyasic
from pyasic.errors import APIError
from pyasic.miners.backends.antminer import AntminerModern
from pyasic.miners.backends.bmminer import BMMiner
from pyasic.miners.backends.btminer import BTMinerV3
from pyasic.miners.data import DataOptions
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from curtaild.core.nameplate import lookup
from curtaild.core.snapshot import Command, FleetSnapshot, MinerReading, PowerSource
from curtaild.drivers import antminer_writes as amw
from curtaild.drivers import bounded, luxos
from curtaild.drivers import credentials as creds
from curtaild.drivers.identity_cache import IdentityCache
from curtaild.drivers.miners_config import FleetConfig
from curtaild.drivers.secret import redact

log = logging.getLogger("curtaild.miners")

#: What the loop needs from get_data (asking for less is cheaper: design.md). is_mining is
#: asked for separately, and only when the machine is not hashing (see _poll).
POLL_FIELDS = [
    DataOptions.HASHRATE,
    DataOptions.HASHBOARDS,
    DataOptions.WATTAGE,
    DataOptions.WATTAGE_LIMIT,
    DataOptions.FANS,
]
IS_MINING_FIELDS = [DataOptions.IS_MINING]
IDENTITY_FIELDS = [DataOptions.MAC, DataOptions.SERIAL_NUMBER]

#: Firmware families whose pyasic backends implement power targets.
POWER_LIMIT_FAMILIES = {"whatsminer", "luxos", "braiins", "vnish", "epic"}
#: Families whose pyasic backend has no source for is_mining (always True).
NO_IS_MINING_FAMILIES = {"luxos"}
#: firmware whose power target is a choice among presets (profiles) rather than any wattage
PRESET_FAMILIES = {"luxos"}
#: Whatsminer firmware power below this share of nameplate while its one-minute hashrate
#: average still shows hashing: a machine that has just stopped (``_lagging_tail``).
LAGGING_TAIL_POWER_FRACTION = 0.15
#: Families pyasic cannot stop (hobby miners with no sleep command).
NO_SLEEP_FAMILIES = {"bitaxe"}
#: Families whose pyasic backend never reports a MAC or serial (pyasic 0.79's LuxOS
#: ``_get_mac`` returns None whatever the firmware says): not asked on every poll; their key is
#: their address.
NO_IDENTITY_FAMILIES = {"luxos"}
#: A warm start's deferred reads (MAC/serial again, credentials, LuxOS profiles and ATM: what
#: discovery would have read) are spread over this many sweeps after the first, a share of the
#: fleet in each. Together they cost about three steady sweeps of client CPU at 10,000 miners
#: (bench/warm_start.py); an eighth at a time keeps each sweep well inside its interval.
SETTLE_SWEEPS = 8


def _bound(table_w: float | None, firmware_w: float | None, pick) -> float | None:
    """Combine the model table's limit with the firmware's own (max for a floor, min for a
    ceiling); either may be unknown."""
    known = [v for v in (table_w, firmware_w) if v is not None]
    return pick(known) if known else None


class CommandFailed(Exception):
    """The firmware refused or did not confirm a command. ``retryable`` False: trying again
    would do harm (a stock Antminer that acknowledged a write and did not apply it would be
    restarted again for nothing)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


#: Families whose commands restart the miner process: silence for this long after one of our
#: commands is "transitioning", not a fault (no re-discovery), and the command's attempt gets
#: this long (stock Antminer: a ~21 s CGI, twice when the key must be found by trying).
TRANSITION_GRACE_S = {"antminer": amw.GRACE_S}
ATTEMPT_TIMEOUT_S = {"antminer": 2 * amw.WRITE_TIMEOUT_S + 3 * amw.READ_TIMEOUT_S}


class ObservationAborted(Exception):
    """``stop()`` abandoned the sweep in progress: nothing may be decided on a partial one."""


#: Longest error text kept in a reading (pyasic's decode errors carry the whole reply).
MAX_ERROR_CHARS = 240
#: Exceptions that mean the device answered something unusable: too large, nested past the
#: parser's recursion limit (RecursionError), undecodable.
GARBAGE_ERRORS = (bounded.ReplyTooLarge, RecursionError, UnicodeDecodeError)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


@dataclass
class PollData:
    """The subset of pyasic's MinerData the loop reads, whichever way it was fetched."""

    hashrate: Any = None
    hashboards: list[Any] = field(default_factory=list)
    wattage: Any = None
    wattage_limit: Any = None
    fans: list[Any] = field(default_factory=list)
    is_mining: bool | None = None
    mac: str | None = None
    serial_number: str | None = None

    @classmethod
    def of(cls, data: Any) -> PollData:
        return cls(hashrate=data.hashrate, hashboards=list(data.hashboards or ()),
                   wattage=data.wattage, wattage_limit=data.wattage_limit,
                   fans=list(data.fans or ()), is_mining=data.is_mining, mac=data.mac,
                   serial_number=data.serial_number)


def is_stock_antminer(miner: Any) -> bool:
    """Stock Bitmain firmware with the bmminer RPC (not LuxOS, BOS+, VNish, ... on Antminers)."""
    return isinstance(miner, AntminerModern) and family_of(miner) == "antminer"


async def poll_stock_antminer(miner: Any) -> PollData:
    """Hashrate, per-board temperatures and fans of a stock Antminer from one RPC connection.

    ``get_data`` fetches the boards from the web UI (``stats.cgi``) and ``is_mining`` from
    ``get_miner_conf.cgi``: two HTTP digest exchanges, a new httpx client each, about 9 ms of
    client CPU per poll against under 1 ms for ``summary+stats`` over RPC. The RPC ``stats``
    carries the same chains with the firmware's hottest sensor per board, parsed here by
    pyasic's own BMMiner parsers (the parent class of AntminerModern).
    """
    summary = stats = None
    if not getattr(miner, "_curtaild_split_rpc", False):
        try:
            raw = await miner.rpc.send_command("summary+stats", allow_warning=False)
            summary, stats = raw["summary"][0], raw["stats"][0]
        except (APIError, LookupError, TypeError) as exc:
            # Dec-2022 stock firmware answers a joined command "Invalid command" (pyasic's
            # rpc/base.py: "doesn't work for S19"): remember, and ask one by one from now on
            # instead of spending a refused round trip on every poll.
            if "Invalid command" in str(exc):
                miner._curtaild_split_rpc = True
            else:  # anything else: pyasic's own fallback (joined again, then split)
                raw = await miner.rpc.multicommand("summary", "stats", allow_warning=False)
                summary = (raw.get("summary") or [None])[0]
                stats = (raw.get("stats") or [None])[0]
    if getattr(miner, "_curtaild_split_rpc", False):
        replies = await asyncio.gather(miner.rpc.send_command("summary", allow_warning=False),
                                       miner.rpc.send_command("stats", allow_warning=False),
                                       return_exceptions=True)
        summary, stats = (r if isinstance(r, dict) else None for r in replies)
        if isinstance(replies[0], BaseException):
            raise replies[0]
    if summary is None:
        raise APIError("no summary in the RPC reply")
    return PollData(hashrate=await miner._get_hashrate(rpc_summary=summary),
                    hashboards=await BMMiner._get_hashboards(miner, rpc_stats=stats),
                    fans=await miner._get_fans(rpc_stats=stats))


#: What Whatsminer API v3 firmware answers (``msg``) while btminer is stopped (pyasic PR#416).
V3_DOWN = "btminer process is down"


def v3_btminer_down(reply: Any) -> bool:
    """A v3 reply saying btminer is not running: the machine was powered off (service stop)."""
    return isinstance(reply, dict) and V3_DOWN in str(reply.get("msg", ""))


def v2_btminer_stopped(status: Any) -> bool:
    """Legacy (pre-2023) Whatsminer firmware's ``status``: btminer is not running. Its API
    daemon then answers every read it forwards to btminer (summary, devs, pools) with "Socket
    connect failed: Connection refused", so ``get_data`` has no hashrate at all."""
    msg = status.get("Msg") if isinstance(status, dict) else None
    return isinstance(msg, dict) and str(msg.get("btmineroff", "")).lower() == "true"


async def poll_whatsminer_v3(miner: BTMinerV3, *, identity: bool) -> PollData:
    """A Whatsminer on API v3, parsed by pyasic's own BTMinerV3 parsers.

    ``get_data`` cannot read a powered-off v3 machine: its status reads answer the string
    "btminer process is down err" and every parser then raises, so the whole call fails with
    APIError and the machine would look unreachable (then re-discovered: a new pyasic object,
    a new salt, a token spent). Read here, that reply is what it means: asleep, not hashing.
    The device info (identity, board serials) still answers while btminer is down.
    """
    rpc = miner.rpc
    summary, edevs, info = await asyncio.gather(
        rpc.get_miner_status_summary(), rpc.get_miner_status_edevs(), rpc.get_device_info())
    if v3_btminer_down(summary):
        return PollData(hashrate=0.0, is_mining=False,
                        mac=await miner._get_mac(rpc_get_device_info=info) if identity else None,
                        serial_number=(await miner._get_serial_number(rpc_get_device_info=info)
                                       if identity else None))
    for reply in (summary, edevs):
        if not isinstance(reply, dict) or not isinstance(reply.get("msg"), dict):
            raise APIError(f"get.miner.status answered {str(reply)[:120]!r}")
    data = PollData(
        hashrate=await miner._get_hashrate(rpc_get_miner_status_summary=summary),
        hashboards=await miner._get_hashboards(rpc_get_device_info=info,
                                               rpc_get_miner_status_edevs=edevs),
        wattage=await miner._get_wattage(rpc_get_miner_status_summary=summary),
        wattage_limit=await miner._get_wattage_limit(rpc_get_miner_status_summary=summary),
        fans=await miner._get_fans(rpc_get_miner_status_summary=summary),
        is_mining=True,  # btminer runs; whether it hashes is the hashrate's to say
    )
    if identity:
        data.mac = await miner._get_mac(rpc_get_device_info=info)
        data.serial_number = await miner._get_serial_number(rpc_get_device_info=info)
    return data


def family_of(miner: Any) -> str:
    """A short firmware family name from pyasic's make/firmware attributes."""
    firmware = str(getattr(miner, "firmware", "") or "")
    make = str(getattr(miner, "make", "") or "")
    if firmware == "LuxOS":
        return "luxos"
    if firmware == "BOS+":
        return "braiins"
    if firmware in ("VNish", "ePIC", "Hive", "MaraFW"):
        return firmware.lower()
    if make.lower() == "whatsminer":
        return "whatsminer"
    if make.lower() == "bitaxe":
        return "bitaxe"
    if make.lower() == "antminer":
        return "antminer"
    return make.lower() or "unknown"


@dataclass
class _Tracked:
    """What is remembered about one address between polls."""

    ip: str
    miner: Any | None = None
    family: str = ""
    plate: Any = None
    rpc_only: bool = False
    mac: str | None = None
    serial: str | None = None
    failures: int = 0
    next_discovery_at: float = 0.0
    discovery_attempts: int = 0
    last: MinerReading | None = None
    errors: dict[str, int] = field(default_factory=dict)
    #: the lowest and highest power target the firmware really takes, where that is a ladder
    #: of presets (LuxOS profiles) rather than any watt figure; read once per discovery
    preset_floor_w: float | None = None
    preset_ceiling_w: float | None = None
    #: Whatsminer API v3: the salt the firmware handed out (a token: 32 per client IP per 30
    #: minutes), carried over to the object of the next discovery instead of asking again
    v3_salt: str | None = None
    #: Whatsminer API v2: the token pyasic holds (get_token: 32 per client IP per 30 min), with
    #: a digest of the password it was made from, carried over to a re-discovered object
    v2_token: tuple[str, Any] | None = field(default=None, repr=False)
    auth_recheck: bool = False  # credentials changed: check before the next poll
    #: why the firmware refused our credentials (drivers/credentials.py), None when it took
    #: them or could not tell; such a miner reads as error kind "auth" and is not commanded
    auth_refused: str | None = None
    #: the config key of the password applied (never the password), for reports
    credential_source: str | None = None
    #: built from the identity cache; discovery's reads (credentials, profiles, ATM) are
    #: owed: done in a later sweep (SETTLE_SWEEPS) or before the first command, whichever first
    settle_due: bool = False
    #: the next poll reads the MAC and serial again (after a warm start or a re-discovery:
    #: the address may now hold another machine), until both are read as they were or a
    #: conflicting one replaces them
    identity_check: bool = False
    #: MAC and serial are the identity cache's, not yet read from the machine since start
    cached_identity: bool = False
    #: was a miner here once (discovered or cached): if it stops answering it is reported
    #: unreachable, never dropped from the snapshot
    known: bool = False
    #: our last command may be restarting the miner until this time (monotonic): a failed
    #: poll before then is "transitioning" (TRANSITION_GRACE_S), neither a fault nor a reason
    #: to re-discover; cleared once telemetry shows the commanded state
    transition_until: float = 0.0
    transition_action: str | None = None
    transition_since: float = 0.0
    transition_noted: bool = False  # its first silence was logged
    #: stock Antminer: firmware build (pyasic fw_ver), the work-mode key that worked, and the
    #: work mode to wake into (what it ran in before we slept it: normal, HEM or low power)
    fw_ver: str | None = None
    write_key: str | None = None
    wake_mode: int = amw.NORMAL
    #: LuxOS (drivers/luxos.py): every profile's watts, the limit curtaild last set and the
    #: profile that stands for it (readings report the target while that profile is active),
    #: and the ATM switch as last read
    preset_steps_w: tuple[float, ...] = ()
    luxos_target: tuple[float, float] | None = None
    atm_enabled: bool | None = None


def _pwd_digest(rpc: Any) -> str:
    """Which password a v2 token was made from, without keeping the password itself."""
    return hashlib.sha256(str(getattr(rpc, "pwd", "")).encode()).hexdigest()


def _v2_token_keep(t: _Tracked, miner: Any) -> None:
    """Remember the v2 token pyasic holds (see ``_Tracked.v2_token``)."""
    rpc = getattr(miner, "rpc", None)
    token = getattr(rpc, "token", None) if t.family == "whatsminer" else None
    if token is not None and not isinstance(miner, BTMinerV3):
        t.v2_token = (_pwd_digest(rpc), token)


def _v2_token_reuse(t: _Tracked, miner: Any) -> None:
    """Give a re-discovered Whatsminer v2 object the token of the last one, if it was made
    from the same password: a new pyasic object would otherwise fetch one (the firmware
    allows 32 per client IP per 30 minutes; pyasic keeps one for 30 minutes)."""
    rpc = getattr(miner, "rpc", None)
    if (t.v2_token is None or isinstance(miner, BTMinerV3) or rpc is None
            or not hasattr(rpc, "token") or rpc.token is not None):
        return
    digest, token = t.v2_token
    if digest == _pwd_digest(rpc):
        rpc.token = token


class MinerDriver:
    """Owns the pyasic miner objects of one fleet."""

    def __init__(self, cfg: FleetConfig, *, poll_interval_s: float = 30.0,
                 identities: IdentityCache | None = None, defer_reads: bool = False):
        self.reconfigure(cfg)
        #: warm start (drivers/identity_cache.py): miner objects built from the state
        #: directory's cache instead of discovered; None: every miner is discovered
        self.identities = identities
        #: a miner built from the cache owes discovery's other reads to a later sweep (the
        #: daemon); False: they are made at once (a one-shot tick has no later sweep)
        self.defer_reads = defer_reads
        #: the journal's machines (attach_journal), and their keys when the sweep that builds
        #: miners from the cache began
        self._owned_keys: Callable[[], set[str]] | None = None
        self._owned_now: set[str] = set()
        self.poll_interval_s = poll_interval_s
        self._tracked: dict[str, _Tracked] = {}
        #: poll errors by kind since start (timeout, refused, garbage, discovery)
        self.error_counts: dict[str, int] = {}
        #: the operator's ATM setting of LuxOS machines curtaild limited (journal-backed once
        #: ``attach_journal`` is called)
        self.luxos_atm = luxos.AtmMemory()
        #: stock Antminer config writes by outcome: applied, already, not_applied,
        #: refused_read_failed, refused_no_pool (refused: nothing was posted)
        self.config_writes: dict[str, int] = {}
        #: background re-discoveries by address (a sweep never waits on one)
        self._rediscovering: dict[str, asyncio.Task[bool]] = {}
        #: set by stop(): no new sweep, discovery or command starts
        self.stopping = False
        self._sweep: asyncio.Future[list[MinerReading | None]] | None = None
        #: (family, action) -> s of silence after our own command that is "transitioning";
        #: the loop sets it from [guards] confirm_grace_s (set_transition_grace)
        self._transition_grace: Callable[[str, str], float] | None = None

    def set_transition_grace(self, grace_s: Callable[[str, str], float]) -> None:
        """How long silence after our own command is expected, by family and action (every
        family: a command may restart the miner process, a reboot the control board)."""
        self._transition_grace = grace_s

    def _begin_transition(self, t: _Tracked, action: str) -> None:
        """From now the miner may restart: a failed poll is "transitioning" (no fault, no
        re-discovery) until its grace ends or telemetry shows the commanded state."""
        now = time.monotonic()
        grace = (self._transition_grace(t.family or "", action) if self._transition_grace
                 else TRANSITION_GRACE_S.get(t.family or "", 0.0))
        t.transition_since, t.transition_action = now, action
        t.transition_noted = False
        t.transition_until = now + grace

    def prepare_credentials(self, cfg: FleetConfig) -> None:
        """Read the secrets of a config about to be swapped in (a reload), so that an
        unreadable one rejects the reload (ConfigError naming the key) before anything
        changes; ``reconfigure`` then uses what was read here."""
        self._pending_credentials: tuple[FleetConfig, creds.CredentialStore] | None = (
            cfg, creds.CredentialStore.load(cfg.credentials))

    def reconfigure(self, cfg: FleetConfig) -> None:
        """Take a (re)loaded fleet config: its pools are sized from it, its passwords read
        (ConfigError naming the key if one cannot be) and applied to every known miner."""
        pending = getattr(self, "_pending_credentials", None)
        self._pending_credentials = None
        store = (pending[1] if pending is not None and pending[0] is cfg
                 else creds.CredentialStore.load(cfg.credentials))
        self.credentials = store
        for t in getattr(self, "_tracked", {}).values():
            self._apply_credentials(t)
        self.cfg = cfg
        self._discover_sem = asyncio.Semaphore(cfg.discovery_concurrency)
        self._poll_sem = asyncio.Semaphore(cfg.poll_concurrency)
        self._suspect_sem = asyncio.Semaphore(cfg.poll_concurrency)

    def stop(self) -> None:
        """The daemon is stopping: abandon the sweep in progress and background discoveries
        now (``observe`` raises ObservationAborted), and refuse commands not yet started;
        commands already sent run to their own deadline (``execute``)."""
        self.stopping = True
        if self._sweep is not None:
            self._sweep.cancel()
        for task in list(self._rediscovering.values()):
            task.cancel()

    # ------------------------------------------------------------------ observe
    async def observe(self) -> FleetSnapshot:
        """Poll every configured address once; a hung miner costs one deadline, not a sweep."""
        if self.stopping:
            raise ObservationAborted("stopping: no new sweep")
        addresses = self.cfg.addresses()
        wanted = set(addresses)
        for ip in list(self._tracked):
            if ip not in wanted:
                del self._tracked[ip]
                task = self._rediscovering.pop(ip, None)
                if task is not None:
                    task.cancel()
        # Addresses that failed last time go first, in their own pool of slots (see
        # _observe_one): a miner that hangs again spends its deadline while the healthy ones
        # are polled, instead of starting it at the end of the sweep, and suspects never hold
        # the slots healthy miners need. The snapshot keeps config order.
        tracked = self._tracked
        order = sorted(range(len(addresses)),
                       key=lambda i: not (t := tracked.get(addresses[i])) or t.failures == 0)
        settle = self._settle_share(addresses)
        if self.identities is not None and self._owned_keys is not None \
                and any(ip not in tracked for ip in addresses):
            self._owned_now = set(self._owned_keys())  # see _from_cache
        tasks = {i: asyncio.ensure_future(self._observe_one(addresses[i],
                                                            settle=addresses[i] in settle))
                 for i in order}
        sweep = self._sweep = asyncio.gather(*(tasks[i] for i in range(len(addresses))))
        try:
            # wait(), not await: stop() cancels the sweep, not the tick that awaits it
            await asyncio.wait({sweep})
        except asyncio.CancelledError:
            sweep.cancel()
            raise
        finally:
            self._sweep = None
        if self.stopping:  # stop() cancelled it (a cancelled gather may end as an exception)
            if not sweep.cancelled():
                sweep.exception()  # retrieved: it is what stop() asked for
            raise ObservationAborted("stopping: the sweep in progress was abandoned")
        readings = self._without_stale_duplicates(sweep.result())
        if self.identities is not None:
            for ip, t in tracked.items():
                if t.miner is not None:
                    self.identities.note(ip, t.mac, t.serial, t.preset_steps_w)
            self.identities.save()
        return FleetSnapshot(tuple(r for r in readings if r is not None), time.time())

    def _without_stale_duplicates(self, readings: list[MinerReading | None]
                                  ) -> list[MinerReading | None]:
        """A machine read at one address under its own MAC (or serial) while another address
        still carries it from the identity cache: the machine moved. The other address's
        cached identity is dropped (its key is its address until its MAC is read, next poll),
        so no two readings share a key and the file forgets the stale entry."""
        tracked = self._tracked
        read_at: dict[str, str] = {}
        for r in readings:
            t = tracked.get(r.ip) if r is not None else None
            if r is not None and t is not None and not t.cached_identity and r.key != r.ip:
                read_at[r.key] = r.ip
        out = list(readings)
        for i, r in enumerate(readings):
            t = tracked.get(r.ip) if r is not None else None
            if r is None or t is None or not t.cached_identity \
                    or read_at.get(r.key, r.ip) == r.ip:
                continue
            log.warning("%s: %s, its cached identity, answers at %s: read again", r.ip, r.key,
                        read_at[r.key])
            t.mac = t.serial = None
            t.identity_check = True
            out[i] = dataclasses.replace(r, key=r.ip, mac=None, serial=None)
        return out

    def _settle_share(self, addresses: list[str]) -> set[str]:
        """The addresses whose warm-start reads are done in this sweep: a SETTLE_SWEEPS-th of
        the fleet (those built in this very sweep wait for the next; a miner that failed its
        last poll waits until it answers, or is re-discovered, which reads them)."""
        share = max(1, math.ceil(len(addresses) / SETTLE_SWEEPS))
        out: set[str] = set()
        for ip in addresses:
            t = self._tracked.get(ip)
            if t is not None and t.settle_due and t.miner is not None and not t.failures:
                out.add(ip)
                if len(out) >= share:
                    break
        return out

    async def _settle(self, t: _Tracked) -> None:
        """Discovery's reads, owed by a miner built from the identity cache; its next poll
        reads the MAC and serial again."""
        miner = t.miner
        if not t.settle_due or miner is None:
            return
        t.settle_due = False  # (at once: a command's settle and a sweep's never both run)
        try:
            async with self._discover_sem:  # spaced out like discovery's
                await self._adoption_reads(t, miner)
        except BaseException:
            t.settle_due = True  # cancelled (a stop, a command's deadline): still owed
            raise
        t.identity_check = t.identity_check or bool(t.mac or t.serial)

    def _rediscover_later(self, t: _Tracked) -> None:
        """Re-discover a known address in the background: get_miner on a dead or hung address
        takes the whole discovery deadline, which must not be added to a sweep."""
        if (self.stopping or t.ip in self._rediscovering
                or time.monotonic() < t.next_discovery_at):
            return
        task = asyncio.get_running_loop().create_task(self._discover(t))
        self._rediscovering[t.ip] = task
        ip = t.ip
        task.add_done_callback(lambda done: self._rediscovered(ip, done))

    def _rediscovered(self, ip: str, task: asyncio.Task[bool]) -> None:
        self._rediscovering.pop(ip, None)
        if not task.cancelled() and task.exception() is not None:
            self._count("discovery")
            log.warning("%s: re-discovery failed: %s", ip, _cut(repr(task.exception())))

    def _count(self, kind: str) -> None:
        self.error_counts[kind] = self.error_counts.get(kind, 0) + 1

    # ------------------------------------------------------------------ credentials
    def _apply_credentials(self, t: _Tracked) -> None:
        """Give t's pyasic object the password ``[fleet.credentials]`` resolves for it (after
        every discovery, on reload, and once its MAC/serial is known); a changed password is
        checked again before the next poll or command."""
        if t.miner is None:
            return
        cred = self.credentials.resolve(family=t.family, ip=t.ip, mac=t.mac, serial=t.serial)
        t.credential_source = cred.source if cred is not None else None
        if creds.apply(t.miner, t.family, cred):
            t.auth_refused = None
            t.auth_recheck = True

    async def _check_credentials(self, t: _Tracked) -> str | None:
        """Ask the firmware whether it takes our credentials (drivers/credentials.probe);
        returns why it refused them, None if it took them or could not tell."""
        t.auth_recheck = False
        miner = t.miner
        if miner is None or not creds.has_probe(miner, t.family):
            return None
        try:  # a reply it cannot parse (nested past the recursion limit...) tells nothing
            verdict, detail = await bounded.run(
                lambda: creds.probe(miner, t.family, self.cfg.poll_timeout_s,
                                    trusted=t.auth_refused is None),
                timeout_s=self.cfg.poll_timeout_s + 1.0, label=f"{t.ip} credentials")
        except Exception as exc:
            verdict, detail = "unknown", f"probe failed: {type(exc).__name__}"
        if verdict == "refused":
            if t.auth_refused is None:
                log.warning("%s: %s firmware refused the credentials (%s): %s", t.ip, t.family,
                            t.credential_source or "pyasic's factory default", detail)
            t.auth_refused = detail
        elif verdict == "accepted" and t.auth_refused is not None:
            log.info("%s: %s firmware accepts the credentials again", t.ip, t.family)
            t.auth_refused = None
        _v2_token_keep(t, miner)  # the probe may have fetched one
        return t.auth_refused

    async def _discover(self, t: _Tracked) -> bool:
        now = time.monotonic()
        if now < t.next_discovery_at:
            return False
        async with self._discover_sem:
            try:
                miner = await bounded.run(lambda: pyasic.get_miner(t.ip),
                                          timeout_s=self.cfg.discovery_timeout_s,
                                          label=f"{t.ip} discovery")
            except Exception as exc:  # whatever the address answered, it is not a miner
                log.debug("%s: discovery failed: %s", t.ip, _cut(repr(exc)))
                miner = None
        if miner is None:
            t.discovery_attempts += 1
            backoff = min(600.0, self.poll_interval_s * 2 ** min(t.discovery_attempts - 1, 6))
            t.next_discovery_at = now + backoff
            self._count("discovery")
            return False
        if self.identities is not None:
            self.identities.record(t.ip, miner)
        t.identity_check = t.known  # a re-discovery: perhaps another machine now
        await self._adopt(t, miner)
        return True

    async def _from_cache(self, t: _Tracked) -> bool:
        """First sight of an address with a cached identity: its object, with no request."""
        if self.identities is None:
            return False
        miner = self.identities.build(t.ip)
        if miner is None:
            return False
        # MAC, serial and profiles are taken from the file for the first sweep, which is then
        # a known machine's poll; they are read again with the rest of discovery's reads in a
        # later sweep (_settle): the address may now hold another machine of the same model.
        t.mac, t.serial = self.identities.cached_ids(t.ip)
        t.cached_identity = bool(t.mac or t.serial)
        await self._adopt(t, miner, reads=False)
        if t.family in PRESET_FAMILIES:
            self._take_presets(t, self.identities.cached_presets(t.ip))
        # A machine the journal holds rows for (curtaild slept or limited it, a command is
        # being verified) is judged by this sweep: its identity is read at once, so a machine
        # swapped in while curtaild was down is not taken for it (and released, or
        # re-commanded) under its key. A few machines; the rest wait for their owed reads.
        if t.cached_identity and (self.key_of(t) in self._owned_now or t.ip in self._owned_now):
            t.identity_check = True
        if not self.defer_reads:
            await self._settle(t)
        return True

    async def _adopt(self, t: _Tracked, miner: Any, *, reads: bool = True) -> None:
        """Take a miner object (discovered, or built from the identity cache); ``reads``:
        read at once what else the firmware must tell (or owe it: ``settle_due``)."""
        t.miner = miner
        t.known = True
        t.family = family_of(miner)
        t.plate = lookup(str(getattr(miner, "raw_model", None) or miner.model or ""))
        t.rpc_only = is_stock_antminer(miner)
        if t.rpc_only:  # no pyasic path on this object can post a config without a pool
            amw.guard_miner(miner, sleep=lambda: self._antminer_mode(t, miner, "sleep"),
                            wake=lambda: self._antminer_mode(t, miner, "run"))
        t.discovery_attempts = 0
        t.failures = 0
        if isinstance(miner, BTMinerV3):
            self._setup_v3(t, miner)  # before credentials: it sets the default they restore
        elif t.family == "whatsminer" and t.plate is not None:
            t.preset_ceiling_w = t.plate.power_w  # API v2 refuses a limit above nameplate too
        self._apply_credentials(t)
        _v2_token_reuse(t, miner)
        if not reads:
            t.auth_recheck = False  # the owed reads probe them, as does every command
            t.settle_due = True
            return
        t.settle_due = False
        await self._adoption_reads(t, miner)

    async def _adoption_reads(self, t: _Tracked, miner: Any) -> None:
        """Whether the firmware takes our credentials, its profiles (LuxOS) and ATM."""
        await self._check_credentials(t)
        if t.family in PRESET_FAMILIES:
            await self._read_presets(t, miner)
        if t.family == "luxos":
            await self._read_atm(t, miner)

    def attach_journal(self, journal: luxos.MetaStore) -> None:
        """Keep the operator's LuxOS ATM settings in the journal (survives a restart); the
        journal's ``owned_keys`` (machines it holds rows for) are confirmed first on a warm
        start (``_from_cache``)."""
        self.luxos_atm.attach(journal)
        owned = getattr(journal, "owned_keys", None)
        self._owned_keys = owned if callable(owned) else None

    async def _read_atm(self, t: _Tracked, miner: Any) -> None:
        """LuxOS: re-read the ATM switch at every discovery. On while curtaild holds a limit it
        turned ATM off for (journaled): someone turned it back on, and the profile may drift
        (the loop's verification re-sets it once per grace)."""
        try:
            t.atm_enabled = await bounded.run(lambda: luxos.atm_enabled(miner.rpc),
                                              timeout_s=self.cfg.poll_timeout_s,
                                              label=f"{t.ip} atm")
        except Exception as exc:
            log.debug("%s: ATM unread: %s", t.ip, _cut(repr(exc)))
            return
        if t.atm_enabled and self.luxos_atm.get(self.key_of(t)) is not None:
            log.warning("%s: ATM is on again while curtaild holds its power limit (ATM off "
                        "since curtaild limited it): the profile may drift", t.ip)

    @staticmethod
    def _setup_v3(t: _Tracked, miner: BTMinerV3) -> None:
        """A Whatsminer on API v3. pyasic's v3 client sends the password ``super`` whatever
        its settings say; the v2 client sends ``default_whatsminer_rpc_password`` (``admin``):
        one setting for both generations (credentials set later replace it). The salt of an
        earlier object for this address is reused (a salt is a token the firmware counts).
        The firmware refuses a limit above the machine's nameplate: that is its ceiling."""
        if miner.rpc.pwd == "super":  # pyasic's hard-coded v3 default, never a site's
            miner.rpc.pwd = pyasic.settings.get("default_whatsminer_rpc_password", "admin")
        if t.v3_salt and miner.rpc.salt is None:
            miner.rpc.salt = t.v3_salt
        if t.plate is not None:
            t.preset_ceiling_w = t.plate.power_w

    async def _antminer_write(self, t: _Tracked, miner: Any, action: str) -> str:
        """Sleep or wake a stock Antminer by a read-modify-write of its config that is read
        back (drivers/antminer_writes.py); CommandFailed with the reason otherwise, counted in
        ``config_writes``. Never posts a config it has not just read whole, or one without a
        pool."""
        if t.fw_ver is None:
            try:  # which generation: the key it obeys (RPC version, pyasic's fw_ver)
                t.fw_ver = await asyncio.wait_for(miner.get_fw_ver(), self.cfg.poll_timeout_s)
            except Exception as exc:  # restarting: the keys are then found by trying
                log.debug("%s: firmware version unread: %r", t.ip, exc)
        keys = (t.write_key,) if t.write_key else amw.write_keys(t.fw_ver)
        target = amw.SLEEP if action == "sleep" else t.wake_mode

        def posted(key: str) -> None:
            self._begin_transition(t, action)  # from here the miner may restart

        try:
            result = await amw.set_work_mode(miner.web, target, keys, on_post=posted,
                                             read_timeout_s=self.cfg.poll_timeout_s)
        except amw.WriteRefused as exc:
            self._count_write(f"refused_{exc.reason}")
            log.warning("%s: %s not sent: %s", t.ip, action, exc)
            raise CommandFailed(str(exc)) from None
        except amw.WriteNotApplied as exc:
            self._count_write("not_applied")
            log.warning("%s: %s not applied: %s", t.ip, action, exc)
            raise CommandFailed(f"not applied: {exc}", retryable=False) from None
        self._count_write("already" if result.key is None else "applied")
        if result.key is not None:
            t.write_key = result.key
        if action == "sleep" and result.before in amw.AWAKE_MODES:
            t.wake_mode = result.before  # wake into the mode it ran in (HEM, low power)
        return result.summary()

    async def _antminer_mode(self, t: _Tracked, miner: Any, action: str) -> bool:
        """The safe write in pyasic's shape: what ``stop_mining``/``resume_mining`` become on a
        stock Antminer's object (drivers/antminer_writes.guard_miner)."""
        await self._antminer_write(t, miner, action)
        return True

    def _count_write(self, outcome: str) -> None:
        self.config_writes[outcome] = self.config_writes.get(outcome, 0) + 1

    @staticmethod
    async def _v3_power_limit(t: _Tracked, miner: BTMinerV3, watts: int) -> bool:
        """``set.miner.power_limit``, judged by the firmware's answer: pyasic's
        ``set_power_limit`` returns True whatever the firmware said (a refused limit, a wrong
        password), so the reply is read here."""
        reply = await miner.rpc.set_miner_power_limit(watts)
        if isinstance(reply, dict) and reply.get("code") == 0:
            return True
        code = reply.get("code") if isinstance(reply, dict) else None
        msg = reply.get("msg") if isinstance(reply, dict) else reply
        raise CommandFailed(f"set.miner.power_limit {watts} W refused: code {code}: "
                            f"{str(msg)[:120]}")

    async def _read_presets(self, t: _Tracked, miner: Any) -> None:
        """LuxOS takes a power target as "the highest profile at or below it": a target under
        its lowest profile is refused (pyasic's set_power_limit returns False). Its real range
        comes from the profile ladder, not from the model's nameplate table."""
        try:
            config = await bounded.run(miner.get_config, timeout_s=self.cfg.poll_timeout_s,
                                       label=f"{t.ip} presets")
            watts = [float(p.power) for p in
                     getattr(config.mining_mode, "available_presets", None) or ()
                     if isinstance(getattr(p, "power", None), int | float) and p.power > 0]
        except Exception as exc:  # a firmware without profiles keeps the nameplate range
            log.debug("%s: reading power presets failed: %s", t.ip, _cut(repr(exc)))
            return
        self._take_presets(t, watts)

    @staticmethod
    def _take_presets(t: _Tracked, watts: list[float] | tuple[float, ...]) -> None:
        if watts:
            t.preset_floor_w, t.preset_ceiling_w = min(watts), max(watts)
            t.preset_steps_w = tuple(sorted(set(watts)))

    async def _observe_one(self, ip: str, *, settle: bool = False) -> MinerReading | None:
        t = self._tracked.get(ip)
        if t is None:  # first sight of this address: discover inline, once
            t = self._tracked[ip] = _Tracked(ip)
            if not (await self._from_cache(t) or await self._discover(t)):
                return None
        elif t.miner is None:
            self._rediscover_later(t)
            # a machine that was here (cached, or answered once) is unreachable, not gone
            return self._unreachable(t, "not discovered") if t.last or t.known else None
        if settle:
            await self._settle(t)
        miner = t.miner
        if miner is None:
            return self._unreachable(t, "not discovered")
        # A miner that failed its last poll is likely to hang for the whole deadline again:
        # it costs a socket, not CPU, so it waits in a pool of its own. Sharing one pool, 500
        # hung miners of 10,000 took all 400 slots for a deadline before any healthy miner
        # was polled (bench/hung.py: +5 s on every sweep after the first).
        sem = self._suspect_sem if t.failures else self._poll_sem
        try:
            async with sem:
                data = await bounded.run(lambda: self._poll(t, miner),
                                         timeout_s=self.cfg.poll_timeout_s, label=f"{ip} poll")
        except TimeoutError:
            return self._failed(t, "timeout", f"no answer within {self.cfg.poll_timeout_s:g}s")
        except ConnectionRefusedError as exc:
            return self._failed(t, "refused", str(exc))
        except GARBAGE_ERRORS as exc:
            return self._failed(t, "garbage", f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            return self._failed(t, "error", redact(f"{type(exc).__name__}: {exc}"))
        try:
            reading = self._reading(t, miner, data)
        except Exception as exc:
            return self._failed(t, "garbage", f"{type(exc).__name__}: {exc}")
        if reading.error:
            return self._failed(t, "garbage", reading.error)
        t.failures = 0
        if t.transition_until and self._transition_done(t, reading):
            log.info("%s: %s confirmed by telemetry %.0fs after the command", t.ip,
                     t.transition_action, time.monotonic() - t.transition_since)
            t.transition_until = 0.0
        if t.auth_refused is not None:
            # Answers, but refuses our credentials: its own kind, neither unreachable nor a
            # healthy machine (the guards do not command it; see controller/guards.py).
            self._count("auth")
            reading = dataclasses.replace(reading, error=f"auth: {t.auth_refused}")
        t.last = reading
        return reading

    async def _poll(self, t: _Tracked, miner: Any) -> PollData:
        """What _reading needs, at the least client CPU (see the module docstring)."""
        if t.auth_refused is not None or t.auth_recheck:
            await self._check_credentials(t)  # refused: a fixed password recovers by itself
        identity = t.identity_check or not (t.mac or t.serial
                                            or t.family in NO_IDENTITY_FAMILIES)
        if isinstance(miner, BTMinerV3):
            return await poll_whatsminer_v3(miner, identity=identity)
        if t.rpc_only and not identity:
            data = await poll_stock_antminer(miner)
        else:
            fields = POLL_FIELDS + IDENTITY_FIELDS if identity else POLL_FIELDS
            data = PollData.of(await miner.get_data(include=fields))
        if data.hashrate is None and t.family == "whatsminer":
            # Legacy Whatsminer firmware stops btminer on power_off: its reads fail and only
            # the API daemon's status answers. Asleep (and still ours), not unreachable.
            if v2_btminer_stopped(await miner.rpc.status()):
                data.hashrate, data.is_mining = 0.0, False
                return data
        if t.family == "luxos":
            # pyasic's LuxOS is_mining is a default True: the firmware's stored curtailment
            # says whether a machine that does not hash is asleep or booting/ramping
            data.is_mining = None
            if not self._hashing(t, data.hashrate):
                mode = await luxos.curtailed(miner.rpc)
                data.is_mining = None if mode is None else not mode
        elif t.family not in NO_IS_MINING_FAMILIES and (
                not self._hashing(t, data.hashrate) or self._lagging_tail(t, data)):
            # only a machine that does not hash can be asleep: ask the firmware
            if t.family == "antminer" and t.auth_refused is None:
                # is_mining() itself, not get_data, whose default (True) hides the None that
                # pyasic returns when the web UI refuses the password: ask whether it does
                data.is_mining = await miner.is_mining()
                if data.is_mining is None:
                    await self._check_credentials(t)
            elif t.family == "whatsminer":
                # is_mining() reads ``status`` itself: get_data(include=[IS_MINING]) sends it
                # beside an empty joined command, which btminer refuses, and pyasic 0.79
                # (BTMinerRPCAPI.multicommand) then parses nothing as "not mining" -- a
                # Whatsminer starting its ramp read as asleep
                data.is_mining = await miner.is_mining()
            else:
                data.is_mining = (await miner.get_data(include=IS_MINING_FIELDS)).is_mining
        return data

    @staticmethod
    def _lagging_tail(t: _Tracked, data: PollData) -> bool:
        """A Whatsminer's hashrate is its ``MHS 1m``: for up to a minute after a sleep it
        still reports most of it while the machine draws idle power. Firmware power under
        ``LAGGING_TAIL_POWER_FRACTION`` of nameplate cannot hash; whether the firmware says
        mining is off decides (a machine that says off and draws full power is mining)."""
        watts = data.wattage
        return (t.family == "whatsminer" and t.plate is not None
                and isinstance(watts, int | float) and not isinstance(watts, bool)
                and 0 <= watts < LAGGING_TAIL_POWER_FRACTION * t.plate.power_w)

    @staticmethod
    def _hashing(t: _Tracked, hashrate: Any) -> bool:
        """Hashing above 5 % of nameplate (any hashrate when the model is unknown)."""
        try:
            ths = float(hashrate) if hashrate is not None else 0.0
        except (TypeError, ValueError):
            return False
        nameplate_ths = t.plate.hashrate_ths if t.plate else 0.0
        return math.isfinite(ths) and ths > max(0.05 * nameplate_ths, 0.0)

    def _transition_done(self, t: _Tracked, reading: MinerReading) -> bool:
        """Telemetry shows what our last command asked for: asleep, or hashing again."""
        if t.transition_action == "sleep":
            return reading.state == "sleeping"
        return reading.state == "mining" and self._hashing(t, reading.hashrate_ths)

    def _failed(self, t: _Tracked, kind: str, detail: str) -> MinerReading:
        now = time.monotonic()
        if now < t.transition_until:
            # Silent right after our own command: the miner process is restarting. Expected
            # for its family's restart time; the object (and what it learned) is kept.
            self._count("transitioning")
            if not t.transition_noted:
                t.transition_noted = True
                log.info("%s: silent %.0fs after our %s: transitioning (its miner process "
                         "restarts), not a fault", t.ip, now - t.transition_since,
                         t.transition_action)
            return self._unreachable(t, _cut(
                f"transitioning: {t.transition_action} sent {now - t.transition_since:.0f}s "
                f"ago, restarting; {kind}: {detail}"))
        self._count(kind)
        t.failures += 1
        if t.failures >= self.cfg.rediscover_after_failures:
            t.miner = None  # re-discover: the address may now hold another machine or firmware
            t.next_discovery_at = 0.0
        return self._unreachable(t, _cut(f"{kind}: {detail}"))

    def _unreachable(self, t: _Tracked, error: str) -> MinerReading:
        last = t.last
        # Never answered since start with an identity from the cache: the machine may have
        # moved to another address, where it answers under that MAC; keyed by its address
        # here, as before the cache kept MACs, a dead entry never shadows the live machine.
        ghost = t.cached_identity and last is None
        return MinerReading(
            key=t.ip if ghost else self.key_of(t),
            ip=t.ip,
            make=last.make if last else "",
            model=last.model if last else "",
            firmware=last.firmware if last else "",
            state="unreachable",
            hashrate_ths=0.0,
            power_w=0.0,
            power_source="none",
            power_limit_w=None,
            temp_c=None,
            nameplate_hashrate_ths=last.nameplate_hashrate_ths if last else None,
            nameplate_power_w=last.nameplate_power_w if last else None,
            supports_sleep=last.supports_sleep if last else False,
            supports_power_limit=last.supports_power_limit if last else False,
            observed_at=time.time(),
            error=error,
            mac=None if ghost else t.mac,
            serial=None if ghost else t.serial,
        )

    @staticmethod
    def key_of(t: _Tracked) -> str:
        return (t.mac or t.serial or t.ip).upper() if (t.mac or t.serial) else t.ip

    def _reading(self, t: _Tracked, miner: Any, data: Any) -> MinerReading:
        learned = self._take_identity(t, data)
        if learned == "replaced" or (learned and self.credentials.overrides):
            self._apply_credentials(t)  # a MAC/serial override may apply now
        hashrate = data.hashrate
        if hashrate is None:
            # pyasic's get_data swallows every failed call and leaves the field unset; an
            # asleep machine still answers with 0. Without a hashrate nothing is known: an
            # unanswered poll read as "not hashing" would call a machine that answers garbage
            # asleep (found by tests/drivers/test_miners.py with the emulator's garbage fault).
            return self._unreachable(t, "garbage: no hashrate in the reply")
        hashrate_ths = float(hashrate)
        if not math.isfinite(hashrate_ths) or hashrate_ths < 0:
            return self._unreachable(t, f"garbage: hashrate {hashrate_ths!r}")
        model = str(getattr(miner, "raw_model", None) or miner.model or "")
        family = t.family
        plate = t.plate
        nameplate_ths = plate.hashrate_ths if plate else None
        # is_mining defaults to True when firmware does not say (pyasic's LuxOS backend never
        # does), so it is not trusted alone: a machine that claims to be asleep while hashing
        # is mining (it burns power), and where is_mining has no source, no hashing = asleep.
        # (_poll asks for is_mining only when not hashing, the only case where it matters.)
        hashing = self._hashing(t, hashrate_ths)
        if hashing and data.is_mining is False and self._lagging_tail(t, data):
            hashing, hashrate_ths = False, 0.0  # the minute's average of a stopped machine
        # A firmware that refuses our credentials cannot say (pyasic's is_mining() is None and
        # get_data's default is True): not hashing is then reported as asleep, with the
        # "auth" error, never as a mining machine.
        says_asleep = (data.is_mining is False or t.auth_refused is not None
                       or (family in NO_IS_MINING_FAMILIES and data.is_mining is None))
        if (not hashing and data.is_mining is None and t.auth_refused is None
                and family not in NO_IS_MINING_FAMILIES and family not in NO_SLEEP_FAMILIES):
            # Not hashing, and the firmware's own word (a stock Antminer's config read, a
            # Whatsminer's status) failed: asleep and booting look alike. Read as "mining" at
            # 0 TH/s, a machine curtaild slept was "woken" with nothing to send, verified and
            # released to the operator for good (soak seeds 11 and 88). Unknown is not mining:
            # nothing is decided or sent for it until the firmware answers again.
            return self._unreachable(t, "garbage: not hashing, and the firmware did not say "
                                        "whether it is asleep (its mode read failed)")
        state = "sleeping" if (says_asleep and not hashing) else "mining"
        power_w, source = self._power(t, model, data.wattage, state, plate)
        temps = [
            v
            for hb in data.hashboards
            for v in (hb.chip_temp, hb.temp)
            if isinstance(v, (int, float)) and v > -50
        ]
        fans = tuple(int(f.speed) for f in data.fans if f.speed is not None)
        limit = data.wattage_limit
        if t.luxos_target is not None and isinstance(limit, int | float):
            # the profile pyasic picked for curtaild's target stands for that target (a
            # ladder cannot hit it exactly); any other profile (ATM drift) is what it is
            target_w, profile_w = t.luxos_target
            if abs(float(limit) - profile_w) < 0.5 and profile_w <= target_w + 0.5:
                limit = target_w  # (a target under the lowest profile is not reached)
        supports_limit = family in POWER_LIMIT_FAMILIES
        return MinerReading(
            key=self.key_of(t),
            ip=t.ip,
            make=str(getattr(miner, "make", "") or ""),
            model=model,
            firmware=family,
            state=state,  # type: ignore[arg-type]
            hashrate_ths=round(hashrate_ths, 4),
            power_w=power_w,
            power_source=source,
            power_limit_w=float(limit) if limit else None,
            temp_c=float(max(temps)) if temps else None,
            fan_rpm=fans,
            nameplate_hashrate_ths=nameplate_ths,
            nameplate_power_w=self._nameplate_power(t, model, plate),
            supports_sleep=family not in NO_SLEEP_FAMILIES,
            supports_power_limit=supports_limit,
            min_power_limit_w=_bound(plate.min_limit_w if plate and supports_limit else None,
                                     t.preset_floor_w if supports_limit else None, max),
            max_power_limit_w=_bound(plate.max_limit_w if plate and supports_limit else None,
                                     t.preset_ceiling_w if supports_limit else None, min),
            observed_at=time.time(),
            mac=t.mac,
            serial=t.serial,
        )

    @staticmethod
    def _take_identity(t: _Tracked, data: Any) -> str:
        """Take the MAC and serial a poll read: "learned" (new to ``t``), "replaced" (another
        machine: under ``identity_check``, one conflicts with what was known) or "".

        Under ``identity_check`` (a warm start's cached identity, a re-discovery) nothing is
        merged from half an answer: a MAC read without the serial known before (a web UI
        still booting) is asked again next poll, never combined with the old serial."""
        mac = str(data.mac).upper() if data.mac else None
        serial = str(data.serial_number) if data.serial_number else None
        if t.identity_check:
            if (mac and t.mac and mac != t.mac) or (serial and t.serial and serial != t.serial):
                log.warning("%s: another machine answers at this address (MAC %s, serial %s; "
                            "was %s, %s)", t.ip, mac, serial, t.mac, t.serial)
                t.mac, t.serial = mac, serial
                t.identity_check = t.cached_identity = False
                return "replaced"
            whole = (mac or not t.mac) and (serial or not t.serial)
            if not (whole or t.family in NO_IDENTITY_FAMILIES):
                return ""
            t.identity_check = False
            t.cached_identity = t.cached_identity and not (mac or serial)
        learned = bool((mac and not t.mac) or (serial and not t.serial))
        if mac and not t.mac:
            t.mac = mac
        if serial and not t.serial:
            t.serial = serial
        return "learned" if learned else ""

    async def _confirm_identity(self, t: _Tracked, miner: Any) -> None:
        """Before a command to a machine known only by its cached (or pre-re-discovery) MAC
        and serial: read them; CommandFailed if another machine answers (nothing sent: the
        next tick decides for it under its own key) or if they cannot be read."""
        if not (t.mac or t.serial) or t.family in NO_IDENTITY_FAMILIES:
            t.identity_check = False  # keyed by its address: nothing to mistake
            return
        t.identity_check = True  # compared, not merged (_take_identity)
        try:
            data = await bounded.run(lambda: miner.get_data(include=IDENTITY_FIELDS),
                                     timeout_s=self.cfg.poll_timeout_s,
                                     label=f"{t.ip} identity")
        except Exception as exc:
            raise CommandFailed(f"not sent: MAC and serial unread ({_cut(repr(exc))})") from None
        key = self.key_of(t)
        if self._take_identity(t, data) == "replaced":
            self._apply_credentials(t)
            raise CommandFailed(f"not sent: another machine answers at {t.ip} (not {key})",
                                retryable=False)
        if t.identity_check:
            raise CommandFailed("not sent: MAC and serial not confirmed (half an answer)")

    def _nameplate_power(self, t: _Tracked, model: str, plate: Any) -> float | None:
        power = self.cfg.power
        for k in (t.mac, t.serial, t.ip):
            if k and k in power.overrides_w:
                return power.overrides_w[k]
        if model in power.models_w:
            return power.models_w[model]
        return plate.power_w if plate else None

    def _power(self, t: _Tracked, model: str, wattage: Any, state: str,
               plate: Any) -> tuple[float, PowerSource]:
        """Firmware -> per-miner override -> per-model table -> nameplate; idle when asleep."""
        if isinstance(wattage, (int, float)) and wattage > 0:
            return float(wattage), "firmware"
        if state == "sleeping":
            return self.cfg.power.idle_w, "idle_estimate"
        power = self.cfg.power
        for k in (t.mac, t.serial, t.ip):
            if k and k in power.overrides_w:
                return power.overrides_w[k], "override"
        if model in power.models_w:
            return power.models_w[model], "model_table"
        if plate:
            return plate.power_w, "nameplate"
        return 0.0, "none"

    # ------------------------------------------------------------------- act
    @staticmethod
    def _limit_watts(t: _Tracked, target_w: float) -> int:
        """The watts sent for a target: under a preset ladder's floor the firmware refuses,
        so its lowest profile is the closest it can get (the next tick sees the result and,
        under a power cap, sheds more); never above what the firmware takes."""
        watts = round(max(target_w, t.preset_floor_w or 0.0))
        if t.preset_ceiling_w is not None:
            watts = min(watts, math.floor(t.preset_ceiling_w))
        return watts

    def _luxos_steps(self, t: _Tracked, miner: Any, cmd: Command,
                     steps: list[tuple[str, Callable[[], Awaitable[bool | str]]]]
                     ) -> list[tuple[str, Callable[[], Awaitable[bool | str]]]]:
        """A LuxOS command's steps with ATM kept out of curtaild's limits (drivers/luxos.py):
        ATM off (the operator's setting journaled first) before a limit's profile is set, the
        operator's setting back once the limit is released (any "run"). The profile set
        stands for the target in later readings."""
        key = self.key_of(t)
        out: list[tuple[str, Callable[[], Awaitable[bool | str]]]] = []
        for name, call in steps:
            if name == "set_power_limit" and cmd.power_limit_w is not None:
                if cmd.action == "limit":
                    out.append(("atm", lambda: luxos.hold_atm(miner.rpc, key, self.luxos_atm)))
                target_w = float(cmd.power_limit_w)

                async def set_and_record(call=call, target_w=target_w) -> bool | str:
                    ok = await call()
                    profile_w = luxos.profile_for(self._limit_watts(t, target_w),
                                                  t.preset_steps_w)
                    if ok is not False and profile_w is not None:
                        t.luxos_target = (target_w, profile_w)
                    return ok

                out.append((name, set_and_record))
            else:
                out.append((name, call))
        if cmd.action == "run":
            if cmd.power_limit_w is None:
                t.luxos_target = None

            def unknown() -> None:
                if t.atm_enabled is False:
                    log.info("%s: limit released; ATM stays off (curtaild did not turn it off, "
                             "or the journal that knew is lost)", t.ip)

            out.append(("atm", lambda: luxos.release_atm(miner.rpc, key, self.luxos_atm,
                                                         on_unknown=unknown)))
        return out

    async def execute(self, cmd: Command, *, observed_state: str, timeout_s: float,
                      attempts: int) -> str:
        """Send one command with jittered retries under an overall deadline.

        Returns a short outcome text; raises CommandFailed when every attempt failed.
        """
        if self.stopping:  # not sent: the journal records it as failed, the next start decides
            raise CommandFailed("not sent: curtaild is stopping")
        t = self._tracked.get(cmd.ip)
        if t is None or t.miner is None:
            raise CommandFailed("miner not discovered")
        miner = t.miner
        # pyasic believes a stock Antminer's sleep sent with a wrong password (True after a
        # 401): ask the firmware whether it takes our credentials before sending anything
        # (among the reads a miner built from the identity cache still owes, if it does).
        refused = await self._check_credentials(t)
        if refused is None and (t.identity_check or t.cached_identity):
            # built from the identity cache and not read since: is it still that machine?
            # (Its profile and ATM reads stay with the sweeps: no wait behind discovery here.)
            await self._confirm_identity(t, miner)
            if self.stopping:
                raise CommandFailed("not sent: curtaild is stopping")
        if refused is not None:
            raise CommandFailed(f"auth: {refused}")
        per_try = max(1.0, timeout_s / attempts)
        if t.family in ATTEMPT_TIMEOUT_S and (cmd.action == "sleep" or observed_state != "mining"):
            # The firmware's write takes its time (a stock Antminer's CGI about 21 s): the
            # attempt and the overall deadline fit it, whatever command_timeout_s says.
            per_try = max(per_try, ATTEMPT_TIMEOUT_S[t.family])
            timeout_s = max(timeout_s, per_try)
        fresh_session = family_of(miner) == "luxos" and getattr(miner, "rpc", None) is not None
        started = time.monotonic()

        async def once() -> str:
            created: bool | None = None
            if fresh_session:
                # LuxOS: one session per machine, dead a minute after its last use or when
                # luxminer restarts, yet pyasic keeps its id forever: each attempt takes the
                # live session or logs on; "Another session is active" fails the attempt and
                # is retried (drivers/luxos.py)
                created = await bounded.run(lambda: luxos.open_session(miner.rpc),
                                            timeout_s=per_try, label=f"{cmd.ip} session")
            steps: list[tuple[str, Callable[[], Awaitable[bool | str]]]] = []
            if cmd.via == "reboot":
                # the next tier for a machine that stored a sleep and kept hashing: its control
                # board boots into the state its firmware stored (guards.next_tier)
                steps.append(("reboot", miner.reboot))
            elif cmd.action == "sleep" and t.rpc_only:
                steps.append(("sleep", lambda: self._antminer_write(t, miner, "sleep")))
            elif cmd.action == "sleep":
                steps.append(("stop_mining", miner.stop_mining))
            else:
                if observed_state != "mining" and t.rpc_only:
                    steps.append(("wake", lambda: self._antminer_write(t, miner, "run")))
                elif observed_state != "mining":
                    steps.append(("resume_mining", miner.resume_mining))
                if cmd.power_limit_w is not None:
                    # Under a preset ladder's floor the firmware refuses: its lowest profile
                    # is the closest it can get (the next tick sees the result and, under a
                    # power cap, sheds more).
                    watts = self._limit_watts(t, cmd.power_limit_w)
                    set_limit = (
                        (lambda: self._v3_power_limit(t, miner, watts))
                        if isinstance(miner, BTMinerV3) else
                        (lambda: miner.set_power_limit(watts)))
                    steps.append(("set_power_limit", set_limit))
            if fresh_session and cmd.via != "reboot":
                steps = self._luxos_steps(t, miner, cmd, steps)
            done = []
            try:
                for name, call in steps:
                    ok = await bounded.run(call, timeout_s=per_try, label=f"{cmd.ip} {name}")
                    if ok is False:
                        raise CommandFailed(f"{name} returned False")
                    done.append(f"{name}: {ok}" if isinstance(ok, str) else name)
            finally:
                if isinstance(miner, BTMinerV3) and miner.rpc.salt:
                    t.v3_salt = miner.rpc.salt
                _v2_token_keep(t, miner)
                if created is not None:
                    with contextlib.suppress(Exception):  # it expires by itself in a minute
                        await bounded.run(lambda: luxos.close_session(miner.rpc, created),
                                          timeout_s=min(per_try, 5.0),
                                          label=f"{cmd.ip} logoff")
            if done and t.transition_since < started:
                self._begin_transition(t, cmd.action)  # acknowledged: silence is expected
            return "+".join(done) or "nothing to send"

        overall = asyncio.timeout(timeout_s)  # the deadline holds across retries and waits
        try:
            async with overall:
                async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(attempts) | stop_after_delay(timeout_s),
                    wait=wait_random_exponential(multiplier=0.5, max=5.0),
                    retry=retry_if_exception(lambda e: getattr(e, "retryable", True)),
                    reraise=True,
                ):
                    with attempt:
                        return await once()
        except CommandFailed:
            raise
        except TimeoutError as exc:
            within = timeout_s if overall.expired() else per_try
            raise CommandFailed(f"no answer within {within:g}s") from exc
        except Exception as exc:
            raise CommandFailed(redact(f"{type(exc).__name__}: {exc}")) from exc
        raise CommandFailed("no attempt made")  # pragma: no cover
