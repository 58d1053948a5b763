"""A minimal sd_notify(3) client: tell systemd when curtaild is ready, alive, reloading, stopping.

Why our own and not a library: the protocol is one AF_UNIX datagram of ``KEY=value`` lines
sent to the socket named by ``$NOTIFY_SOCKET``; a dependency for that would be more code to
audit than this file, and the daemon runs for months on a site controller.

Why it must never raise: a notification is advice to the service manager. If systemd is
being re-executed, the socket is gone, or the receive queue is full, the controller must
keep controlling the fleet; the worst outcome of a lost ``WATCHDOG=1`` is a restart by the
watchdog, which the journal makes safe. So every send failure is swallowed and logged once
at WARNING per run of failures (then at DEBUG until a send succeeds again), so a site that
loses its notify socket for weeks does not fill the journal with one line per tick.

Why it is cheap when unused: without ``$NOTIFY_SOCKET`` (``curtaild run`` started by hand,
in tests, in a container) every method returns at once without creating a socket.

The unit uses ``Type=notify`` and ``NotifyAccess=main``: only this process may notify.
``$NOTIFY_SOCKET`` is left in the environment (systemd's ``unset_environment=0``), which is
harmless because the controller starts no children that speak the protocol, and keeps a
second ``Notifier`` (e.g. after an in-process restart of the loop) working.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("curtaild.sdnotify")

# systemd 252 reads notifications into a PIPE_BUF (4096 byte) buffer and drops a truncated
# datagram whole ("exceeded maximum size"); keep STATUS= well inside it.
_MAX_STATUS_BYTES = 1024
# A blocking send to a full receive queue would stall the event loop; a ping that cannot be
# delivered within this is dropped (the next tick sends another).
_SEND_TIMEOUT_S = 1.0


def _parse_address(value: str | None) -> bytes | None:
    """``$NOTIFY_SOCKET`` -> a sockaddr_un path; ``@name`` is Linux's abstract namespace."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return os.fsencode(value)
    # systemd >= 253 may hand out "vsock:CID:PORT"; a relative path is invalid (sd_notify
    # returns -EINVAL for both on 252). Neither can be reached here: behave as unset.
    log.warning("NOTIFY_SOCKET=%r is not an absolute or abstract AF_UNIX address; "
                "systemd notifications are disabled", value)
    return None


def _parse_watchdog_usec(env: Mapping[str, str]) -> int | None:
    """Mirror sd_watchdog_enabled(3): WATCHDOG_USEC, but only if WATCHDOG_PID is us (or unset)."""
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None  # the watchdog belongs to another process (e.g. our parent)
        except ValueError:
            return None
    return usec


def _one_line(text: str) -> str:
    """STATUS= is one assignment: a newline would start another (``READY=1``!), NUL is refused."""
    clean = " ".join(text.replace("\0", " ").splitlines())
    data = clean.encode("utf-8", "replace")[:_MAX_STATUS_BYTES]
    return data.decode("utf-8", "ignore")


class Notifier:
    """Sends systemd service notifications; every method is a no-op without ``$NOTIFY_SOCKET``.

    The environment is read once, at construction (systemd sets it before exec; it does not
    change while we run). Pass ``environ`` to test without touching ``os.environ``.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _parse_address(env.get("NOTIFY_SOCKET"))
        self._watchdog_usec = _parse_watchdog_usec(env) if self._address else None
        self._sock: socket.socket | None = None
        self._failing = False

    # -- state ------------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that listens (``$NOTIFY_SOCKET`` set)."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send ``WATCHDOG=1``: half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3)
        recommends, so one late ping is not yet fatal. None when no watchdog is armed for us."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    # -- notifications ----------------------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete: ``systemctl start``/``reload`` return now.

        Send it after the first completed sweep, not at process start: "active" then means
        the controller has actually observed the fleet.
        """
        lines = ["READY=1"]
        if status is not None:
            lines.append("STATUS=" + _one_line(status))
        return self._send("\n".join(lines))

    def reloading(self) -> bool:
        """A SIGHUP reload has begun; follow with :meth:`ready` when it is done (or rejected).

        systemd 252 has no ``Type=notify-reload``, but it does honour ``RELOADING=1`` for
        ``Type=notify``; ``MONOTONIC_USEC`` is what later systemd versions require with it to
        tell this reload from an earlier one, and older ones ignore it.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._send(f"RELOADING=1\nMONOTONIC_USEC={now_usec}")

    def stopping(self) -> bool:
        """Shutdown has begun (on SIGTERM): systemd shows "deactivating" instead of a hang."""
        return self._send("STOPPING=1")

    def watchdog(self) -> bool:
        """Keep-alive. Send it from the reconcile loop itself, so a wedged loop stops pinging.

        Sent whenever ``$NOTIFY_SOCKET`` is set, even without ``$WATCHDOG_USEC``: systemd
        ignores it then, and one datagram per tick costs nothing.
        """
        return self._send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """Free-form one-line status shown by ``systemctl status curtaild``."""
        return self._send("STATUS=" + _one_line(text))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more from now before the start/stop timeout fires.

        For a first sweep of a large fleet that is still making progress past
        ``TimeoutStartSec=`` (discovery of thousands of addresses with timeouts).
        """
        return self._send(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- transport --------------------------------------------------------------------------

    def _send(self, message: str) -> bool:
        """One datagram; True if the kernel accepted it. Never raises."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                # SOCK_CLOEXEC is Python's default (PEP 446): children never inherit it.
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.settimeout(_SEND_TIMEOUT_S)
                self._sock = sock
            # sendto, not connect: a socket that systemd re-creates on daemon-reexec keeps
            # its path, and each datagram finds the current one.
            self._sock.sendto(message.encode("utf-8"), self._address)
        except (OSError, ValueError) as exc:  # ValueError: embedded NUL in a path
            if not self._failing:
                log.warning("sd_notify to %r failed (%s); further failures are logged at "
                            "DEBUG until a notification gets through", self._display(), exc)
                self._failing = True
            else:
                log.debug("sd_notify failed again: %s", exc)
            self.close()
            return False
        if self._failing:
            log.info("sd_notify to %r works again", self._display())
            self._failing = False
        return True

    def _display(self) -> str:
        addr = self._address or b""
        return "@" + os.fsdecode(addr[1:]) if addr.startswith(b"\0") else os.fsdecode(addr)
