"""HTTP plumbing shared by the market-input drivers: one GET with a timeout, tenacity retries
with jittered exponential backoff under an overall deadline, and HTTP 429 handling.

Policy, in one place:

- retried: connection errors, timeouts, HTTP 5xx, HTTP 429 (waiting ``Retry-After`` when it
  fits in the deadline); not retried: other 4xx (a wrong URL or key does not heal by asking
  again) and bodies that do not parse (the next refresh asks again).
- a 429 whose ``Retry-After`` does not fit in the deadline raises :class:`RateLimited` with the
  time the server asked us to wait; the caller (:class:`RefreshingSource`) sends nothing to
  that API before then.
- secrets (API keys) travel in headers only, never in URLs, and every error message is scrubbed
  of them before it is raised or logged.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

log = logging.getLogger("curtaild.feeds")

USER_AGENT = "curtaild (+https://github.com/curtaild/curtaild)"


#: Secret strings of every feed built in this process (API keys, tokens), scrubbed from the
#: ``httpx`` logger's records too (it logs every request URL at INFO).
_SECRETS: set[str] = set()


def _scrub(text: str) -> str:
    for s in sorted(_SECRETS, key=len, reverse=True):  # a secret inside another: longest first
        if s in text:
            text = text.replace(s, "***")
    return text


def scrub(text: str) -> str:
    """``text`` without any feed's secret, for messages built outside a feed."""
    return _scrub(text)


def redact_cut(text: str, limit: int, secrets: Iterable[str] = ()) -> str:
    """At most ``limit`` characters of ``text`` (plus "***" markers), with every secret removed
    *before* cutting: each occurrence that starts before the cut is replaced whole, so a key
    that straddles the cut never leaves its first characters behind (scrubbing after cutting
    did: the cut piece no longer matches). ``secrets`` are added to every feed's secrets.

    Positions are found in the original text, so replacing a secret (which shortens the
    text) never pulls the piece of a later one into view either.
    """
    found = {s for s in (*_SECRETS, *secrets) if s}
    if not found:
        return text[:limit]
    window = text[:limit + max(map(len, found))]
    spans: list[tuple[int, int]] = []
    for s in found:
        i = window.find(s)
        while 0 <= i < limit:
            spans.append((i, i + len(s)))
            i = window.find(s, i + 1)
    out: list[str] = []
    pos = 0
    for start, end in sorted(spans):
        if end <= pos:
            continue  # inside a secret already replaced
        if start >= pos:
            out.append(text[pos:start])
            out.append("***")
        pos = end
    if pos < limit:
        out.append(text[pos:limit])
    return "".join(out)


class _ScrubSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            msg = record.getMessage()
            clean = _scrub(msg)
            if clean != msg:
                record.msg, record.args = clean, ()
        return True


logging.getLogger("httpx").addFilter(_ScrubSecrets())


def url_secrets(url: str) -> tuple[str, ...]:
    """Query-string values long enough to be tokens (``?api_key=...``): treated as secrets."""
    from urllib.parse import parse_qsl, urlsplit

    return tuple(v for _, v in parse_qsl(urlsplit(url).query) if len(v) >= 12)


class FeedError(Exception):
    """A market feed could not give a usable value (message is safe to log)."""


class RetryableFeedError(FeedError):
    """Worth asking again: 5xx, transport error, timeout."""


class RateLimited(RetryableFeedError):
    """HTTP 429: ``retry_after_s`` is what the server asked for (None when it did not say)."""

    def __init__(self, message: str, retry_after_s: float | None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True)
class HttpPolicy:
    """Timeouts and retries for one source (from its config)."""

    timeout_s: float = 10.0
    attempts: int = 3
    backoff_s: float = 1.0  # first retry waits up to this (jittered), doubling each time
    backoff_max_s: float = 8.0
    deadline_s: float = 20.0  # a whole refresh, retries included


class HttpFeed:
    """GETs for one source. ``secrets`` are scrubbed from every message it produces."""

    def __init__(self, name: str, policy: HttpPolicy, *, secrets: Iterable[str] = (),
                 transport: httpx.AsyncBaseTransport | None = None):
        self.name = name
        self.policy = policy
        self._secrets = tuple(s for s in secrets if s)
        _SECRETS.update(self._secrets)
        self._transport = transport

    def __repr__(self) -> str:  # never the headers or secrets
        return f"HttpFeed({self.name!r})"

    def scrub(self, text: str) -> str:
        for s in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(s, "***")
        return _scrub(text)

    def snippet(self, text: str, limit: int) -> str:
        """The start of a body or value for an error message: scrubbed, then cut."""
        return redact_cut(text, limit, self._secrets)

    async def get_text(self, url: str, *, params: dict[str, str] | None = None,
                       headers: dict[str, str] | None = None) -> str:
        resp = await self._get(url, params=params, headers=headers)
        return resp.text

    async def get_json(self, url: str, *, params: dict[str, str] | None = None,
                       headers: dict[str, str] | None = None) -> Any:
        resp = await self._get(url, params=params, headers=headers)
        try:
            return json.loads(resp.content)
        except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError (no .msg)
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            snippet = self.snippet(resp.text, 80).replace("\n", " ")
            raise FeedError(f"{self.name}: malformed JSON from {_short(url)}: {why} "
                            f"(body starts {snippet!r})") from None

    async def _get(self, url: str, *, params: dict[str, str] | None,
                   headers: dict[str, str] | None) -> httpx.Response:
        p = self.policy
        started = time.monotonic()
        # tenacity annotates stop_base.__or__ as taking a stop_base only, while stop_any
        # calls any StopBaseT (a callable of RetryCallState, as this method is).
        retrying = AsyncRetrying(
            stop=(stop_after_attempt(p.attempts) | stop_after_delay(p.deadline_s)
                  | self._retry_after_too_long),  # type: ignore[operator]
            wait=self._wait,
            retry=retry_if_exception(lambda e: isinstance(e, RetryableFeedError)),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        timeout = httpx.Timeout(p.timeout_s)
        # A redirect to another host would carry custom key headers along (httpx strips only
        # Authorization): with secrets, redirects are reported instead of followed.
        async with httpx.AsyncClient(timeout=timeout, transport=self._transport,
                                     headers={"User-Agent": USER_AGENT},
                                     follow_redirects=not self._secrets) as client:
            async for attempt in retrying:
                with attempt:
                    remaining = p.deadline_s - (time.monotonic() - started)
                    return await self._once(client, url, params, headers,
                                            max(0.1, min(p.timeout_s, remaining)))
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True

    async def _once(self, client: httpx.AsyncClient, url: str, params: dict[str, str] | None,
                    headers: dict[str, str] | None, timeout_s: float) -> httpx.Response:
        short = _short(url)
        try:
            # httpx's timeouts are per phase (connect, each read); this bounds the whole request
            # (a server trickling bytes).
            resp = await asyncio.wait_for(
                client.get(url, params=params, headers=headers,
                           timeout=httpx.Timeout(timeout_s)), timeout_s)
        except (httpx.TimeoutException, TimeoutError):
            raise RetryableFeedError(
                f"{self.name}: no answer from {short} within {timeout_s:.1f} s") from None
        except httpx.HTTPError as exc:
            raise RetryableFeedError(self.scrub(
                f"{self.name}: {short}: {type(exc).__name__}: {exc}")) from None
        if resp.status_code == 429:
            wait = parse_retry_after(resp.headers.get("Retry-After"))
            raise RateLimited(f"{self.name}: {short}: HTTP 429 Too Many Requests"
                              + (f" (Retry-After {wait:.0f} s)" if wait is not None else ""),
                              wait)
        if resp.status_code >= 500:
            raise RetryableFeedError(f"{self.name}: {short}: HTTP {resp.status_code}")
        if resp.status_code in (401, 403):
            raise FeedError(f"{self.name}: {short}: HTTP {resp.status_code} "
                            "(check the API key and its plan)")
        if resp.status_code >= 400:
            raise FeedError(f"{self.name}: {short}: HTTP {resp.status_code}")
        if 300 <= resp.status_code < 400:
            where = _short(resp.headers.get("Location", "?"))
            raise FeedError(self.scrub(
                f"{self.name}: {short}: HTTP {resp.status_code} redirect to {where} not "
                "followed (the request carries a key): configure the final URL"))
        return resp

    def _retry_after_too_long(self, state: RetryCallState) -> bool:
        """A 429 asking for more time than this refresh has left: give up now (the caller
        holds off until Retry-After has passed)."""
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
            elapsed = state.seconds_since_start or 0.0
            return exc.retry_after_s + elapsed >= self.policy.deadline_s
        return False

    def _wait(self, state: RetryCallState) -> float:
        p = self.policy
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
            return exc.retry_after_s + random.uniform(0, 0.25)
        cap = min(p.backoff_max_s, p.backoff_s * 2 ** (state.attempt_number - 1))
        return random.uniform(cap / 2, cap)  # jittered ("equal jitter") exponential backoff

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.info("%s: attempt %d failed (%s); retrying", self.name, state.attempt_number,
                 self.scrub(str(exc)))


def _short(url: str) -> str:
    """The URL without its query string (queries can carry tokens on some feeds)."""
    return url.split("?", 1)[0]


Q = TypeVar("Q")


class RefreshingSource(Generic[Q]):
    """Cache between refreshes, back off after failures, respect 429, judge staleness.

    ``fetch()`` returns the newest value while it is younger than ``max_age_s`` -- a failed
    refresh does not throw away a value that is still fresh enough (the failure is recorded in
    ``last_error``) -- and raises :class:`StaleSource` once there is none. A new refresh is
    attempted ``refresh_s`` after the last success; after a failure the next attempt waits
    15 s, 30 s, 60 s, ... (capped at ``refresh_s``), or what a 429's Retry-After asked for.
    """

    def __init__(self, name: str, *, refresh_s: float, max_age_s: float,
                 clock: Callable[[], float] = time.time):
        self.name = name
        self.refresh_s = refresh_s
        self.max_age_s = max_age_s
        self.clock = clock
        self.value: Q | None = None
        self.value_at: float | None = None  # as-of time of the value (unix s)
        self.fetched_at: float | None = None  # when the last success happened
        self.last_error: str | None = None
        self.failures = 0
        self.next_attempt_at = 0.0
        self._lock = asyncio.Lock()

    def age_s(self, now: float | None = None) -> float | None:
        if self.value_at is None:
            return None
        return max(0.0, (self.clock() if now is None else now) - self.value_at)

    def is_fresh(self, now: float | None = None) -> bool:
        age = self.age_s(now)
        return age is not None and age <= self.max_age_s

    async def get(self, refresh: Callable[[], Awaitable[tuple[Q, float]]]) -> Q:
        """``refresh`` returns (value, as-of unix s)."""
        async with self._lock:
            now = self.clock()
            due = self.fetched_at is None or now - self.fetched_at >= self.refresh_s
            if due and now >= self.next_attempt_at:
                try:
                    value, as_of = await refresh()
                except Exception as exc:
                    self._failed(exc, now)
                else:
                    self.value, self.value_at = value, min(as_of, self.clock())
                    self.fetched_at = self.clock()
                    self.failures = 0
                    self.last_error = None
                    self.next_attempt_at = 0.0
            now = self.clock()
            if self.value is not None and self.is_fresh(now):
                return self.value
            age = self.age_s(now)
            why = self.last_error or ("the source's data is that old" if self.value is not None
                                      else "no value yet")
            if age is not None:
                raise StaleSource(f"{self.name}: last value {age:.0f} s old "
                                  f"(max_age_s {self.max_age_s:.0f}); {why}")
            raise StaleSource(f"{self.name}: {why}")

    def _failed(self, exc: Exception, now: float) -> None:
        self.failures += 1
        msg = str(exc) or type(exc).__name__
        if not isinstance(exc, FeedError):
            msg = f"{self.name}: {type(exc).__name__}: {msg}"
        # Every message from a refresh is logged, kept as last_error (status, plan, metrics)
        # and quoted by StaleSource: scrubbed here whatever raised it.
        msg = _scrub(msg)
        backoff = min(self.refresh_s, 15.0 * 2 ** (self.failures - 1))
        if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
            backoff = max(backoff, exc.retry_after_s)
        self.next_attempt_at = now + backoff
        self.last_error = msg
        log.warning("%s (next try in %.0f s)", msg, backoff)


class StaleSource(FeedError):
    """No value younger than the source's max_age_s."""
