"""Signals that arrive before the daemon's event loop can handle them.

SIGHUP's default action terminates a process. ``curtaild run`` spends a second or two
importing pyasic and building its drivers before the event loop installs its own SIGHUP
handler, and a reload sent in that window (``systemctl reload`` racing a restart, a config
management tool) would kill the daemon instead of reloading it -- the soak test found this.
So the CLI installs a tiny handler first thing, and the daemon reloads once it is up.
"""

from __future__ import annotations

import signal

_early = {"reload": False}


def hold_reload_signal() -> None:
    """Remember a SIGHUP instead of dying of it, until the daemon takes over."""

    def on_hup(_signum: int, _frame: object) -> None:
        _early["reload"] = True

    signal.signal(signal.SIGHUP, on_hup)


def take_early_reload() -> bool:
    """True once if a SIGHUP arrived before the daemon's own handler was installed."""
    got, _early["reload"] = _early["reload"], False
    return got
