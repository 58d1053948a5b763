"""Stock Antminer sleep and wake by a config write that cannot hurt the machine.

Why not pyasic's ``stop_mining``/``resume_mining``: on real stock firmware they are unsafe
(shared/firmware-behaviour.md). They read ``get_miner_conf.cgi`` and, when that read fails
(timeout, 401, garbage), post a config with three *empty* pools, which the firmware stores: the
machine then wakes to hash nothing. They post with pyasic's ``api_function_timeout`` (5 s) to
a CGI that answers in about 21 s (asic-rs#245), they only ever write ``miner-mode``, which newer
firmware ignores (asic-rs#120), and they return True whatever happened.

Here a write is:

1. **read** the whole config (``get_miner_conf.cgi``) and refuse (``WriteRefused``, nothing
   posted) when the read failed or the config holds no pool;
2. **modify** only the work-mode key the firmware generation obeys (``miner-mode`` on 2022
   firmware, ``bitmain-work-mode`` on 2024+ FR firmware; unknown firmware: ``miner-mode`` then,
   if it did not apply, ``bitmain-work-mode``, as asic-rs#249 does), keeping every other key as
   read;
3. **post** it with a timeout that fits the CGI (``WRITE_TIMEOUT_S``), refusing any config
   without a pool at the last moment too;
4. **read back**: the mode must be the one asked for and the pools those read in step 1;
   otherwise ``WriteNotApplied`` (a firmware that acknowledges and ignores, such as the S21+
   Feb-2025 firmware of asic-rs#310, is reported, not believed).

Every write restarts bmminer (RPC silent, then the boards boot): ``GRACE_S`` is how long the
driver treats silence after its own write as "transitioning" rather than as a fault.

``guard_miner`` also wraps the pyasic object itself, so that no code path through pyasic --
``stop_mining``, ``resume_mining``, ``send_config``, ``web.set_miner_conf`` -- can store a
config without a pool.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pyasic.settings

#: ``set_miner_conf.cgi`` answers after about 21 s (S19j Pro, Dec-2022 firmware: asic-rs#245);
#: asic-rs raised its floor to 30-35 s (#249, #251). Ours leaves room for a loaded machine.
WRITE_TIMEOUT_S = 45.0
#: A config read (``get_miner_conf.cgi`` reads a file: it answers in well under a second).
READ_TIMEOUT_S = 10.0
#: Silence after our own write is the miner process restarting, not a fault, for this long:
#: bmminer restarts (tens of seconds), then the hash boards boot (up to a few minutes).
GRACE_S = 420.0
#: The key every generation reports the work mode in (pyasic's ``is_mining`` reads it too).
READ_KEY = "bitmain-work-mode"
WRITE_KEYS = ("miner-mode", "bitmain-work-mode")
SLEEP = 1
NORMAL = 0
#: Work modes a wake may restore (0 normal, 2 HEM, 3 low power); anything else wakes to 0.
AWAKE_MODES = (0, 2, 3)

_YEAR = re.compile(r"\b(20\d\d)\b")


class WriteRefused(Exception):
    """Nothing was posted: the config could not be read whole, or it has no pool."""

    retryable = True  # a later read may succeed

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"config write refused ({reason}): {detail}")
        self.reason = reason


class WriteNotApplied(Exception):
    """Posted and acknowledged, but the config reads back otherwise (or the post failed)."""

    retryable = False  # posting again restarts the miner again, and would be ignored again

    def __init__(self, detail: str) -> None:
        super().__init__(detail)


@dataclass
class WriteResult:
    """What one sleep/wake did: the key that worked (None: nothing posted), the mode before."""

    key: str | None
    before: int
    after: int

    def summary(self) -> str:
        if self.key is None:
            return f"already work mode {self.after}, nothing posted"
        return f"{self.key} {self.before}->{self.after}, read back"


def write_keys(compile_time: str | None) -> tuple[str, ...]:
    """The key(s) to try, in order, for firmware built at ``compile_time`` (pyasic's fw_ver).

    2022 (and older) stock firmware applies only ``miner-mode`` (asic-rs#245, an S19j Pro of
    Dec 2022); FR firmware from 2024 on applies ``bitmain-work-mode`` (asic-rs#120). Between
    or unknown: both, ``miner-mode`` first.
    """
    years = [int(y) for y in _YEAR.findall(compile_time or "")]
    if not years:
        return WRITE_KEYS
    if years[-1] <= 2022:
        return ("miner-mode",)
    if years[-1] >= 2024:
        return ("bitmain-work-mode",)
    return WRITE_KEYS


def pool_urls(conf: Any) -> list[str]:
    """The configured pool URLs of a stock config (empty entries left out)."""
    pools = conf.get("pools") if isinstance(conf, dict) else None
    if not isinstance(pools, list):
        return []
    return [str(p.get("url")) for p in pools if isinstance(p, dict) and p.get("url")]


def check_read(conf: Any) -> dict:
    """A config read that can be written back whole, or WriteRefused saying why not."""
    if not isinstance(conf, dict) or not conf:
        raise WriteRefused("read_failed", f"get_miner_conf.cgi answered {str(conf)[:80]!r}")
    if conf.get("success") is False:
        # pyasic's web client turns every failure (HTTP error, 401, bad JSON) into this
        raise WriteRefused("read_failed", f"get_miner_conf.cgi failed: "
                                          f"{str(conf.get('message', ''))[:120]}")
    if not isinstance(conf.get("pools"), list) or READ_KEY not in conf:
        missing = [k for k in ("pools", READ_KEY) if k not in conf]
        raise WriteRefused("read_failed", "get_miner_conf.cgi reply is not a whole config "
                                          f"(missing {', '.join(missing) or 'a pool list'})")
    if not pool_urls(conf):
        raise WriteRefused("no_pool", "the machine's config has no pool; writing it back "
                                      "would leave it hashing nothing (fix its pools first)")
    return conf


def mode_of(conf: dict) -> int | None:
    try:
        return int(conf[READ_KEY])
    except (KeyError, TypeError, ValueError):
        return None


def guard_post(conf: Any) -> None:
    """The last check before any config reaches the firmware: it must carry a pool."""
    if not pool_urls(conf):
        raise WriteRefused("no_pool", "refusing to post a config with no pool (the firmware "
                                      "would store it and hash nothing)")


async def read_conf(web: Any, timeout_s: float = READ_TIMEOUT_S) -> dict:
    try:
        conf = await asyncio.wait_for(web.get_miner_conf(), timeout_s)
    except TimeoutError:
        raise WriteRefused("read_failed",
                           f"get_miner_conf.cgi gave no answer within {timeout_s:g}s") from None
    return check_read(conf)


async def post_conf(web: Any, conf: dict, timeout_s: float = WRITE_TIMEOUT_S) -> dict:
    """POST ``set_miner_conf.cgi`` with digest auth and a timeout that fits the CGI (pyasic's
    own post gives up after 3 s, long before the firmware answers)."""
    guard_post(conf)
    url = f"http://{web.ip}:{getattr(web, 'port', 80)}/cgi-bin/set_miner_conf.cgi"
    try:
        async with httpx.AsyncClient(transport=pyasic.settings.transport(),
                                     timeout=timeout_s) as client:
            reply = await client.post(url, json=conf,
                                      auth=httpx.DigestAuth(web.username, web.pwd))
    except httpx.TimeoutException:
        raise WriteNotApplied(f"set_miner_conf.cgi gave no answer within {timeout_s:g}s (the "
                              "write may still land: the next read tells)") from None
    except httpx.HTTPError as exc:
        raise WriteNotApplied(f"set_miner_conf.cgi failed: {type(exc).__name__}") from None
    if reply.status_code != 200:
        raise WriteNotApplied(f"set_miner_conf.cgi answered HTTP {reply.status_code}")
    try:
        body = reply.json()
    except ValueError:
        raise WriteNotApplied("set_miner_conf.cgi answered no JSON") from None
    if not isinstance(body, dict) or (body.get("stats") != "success"
                                      and body.get("code") != "M000"):
        raise WriteNotApplied(f"set_miner_conf.cgi refused the write: {str(body)[:120]}")
    return body


async def set_work_mode(web: Any, target: int, keys: tuple[str, ...], *,
                        write_timeout_s: float = WRITE_TIMEOUT_S,
                        read_timeout_s: float = READ_TIMEOUT_S,
                        on_post: Callable[[str], None] | None = None) -> WriteResult:
    """Read, modify the work-mode key, post, read back (see the module docstring).

    ``on_post(key)`` is called just before each post: from then on the miner may restart.
    """
    conf = await read_conf(web, read_timeout_s)
    before = mode_of(conf)
    pools = pool_urls(conf)
    if before == target:
        return WriteResult(key=None, before=before, after=target)
    seen = before
    for key in keys:
        new = dict(conf)
        new[key] = target if key == "miner-mode" else str(target)
        if on_post is not None:
            on_post(key)
        await post_conf(web, new, write_timeout_s)
        try:
            back = await read_conf(web, read_timeout_s)
        except WriteRefused as exc:
            raise WriteNotApplied(f"posted {key}={target}, then the read-back failed: "
                                  f"{exc}") from None
        if pool_urls(back) != pools:
            raise WriteNotApplied(f"posted {key}={target}; the pools read back differ from "
                                  f"those read before ({len(pool_urls(back))} vs {len(pools)})")
        seen = mode_of(back)
        if seen == target:
            return WriteResult(key=key, before=before if before is not None else -1,
                               after=target)
        conf = back
    raise WriteNotApplied(f"firmware acknowledged {' then '.join(keys)} = {target} and reads "
                          f"back work mode {seen}: the write was not applied")


# ----------------------------------------------------------------------- pyasic guard
def guard_miner(miner: Any, sleep: Callable[[], Any], wake: Callable[[], Any]) -> None:
    """Make the pyasic object itself safe: its ``stop_mining``/``resume_mining`` become the
    safe ``sleep``/``wake`` here, and its web client refuses to post a config with no pool
    (pyasic's ``send_config`` and anything else that writes goes through it)."""
    web = getattr(miner, "web", None)
    if web is None or getattr(web, "_curtaild_guarded", False):
        return
    original = web.set_miner_conf

    async def set_miner_conf(conf: dict) -> dict:
        guard_post(conf)
        return await original(conf)

    web.set_miner_conf = set_miner_conf
    web._curtaild_guarded = True
    miner.stop_mining = sleep
    miner.resume_mining = wake
