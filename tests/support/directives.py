"""Building directive-store inputs in tests: a fixed clock, ISO times and JSON payloads.

The directive store is pure (``handle(kind, payload, now)``), so its tests speak to it in the
bytes MQTT would deliver and at times counted from one fixed instant ``T0``; one definition,
so that the store's ordinary and hostile-input tests build their inputs alike.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from curtaild.controller.directives import DirectiveStore, Limits

#: The tests' "now" (2025-10-09 08:53:20 UTC): every time in a test is counted from it.
T0 = 1_760_000_000.0


def iso(ts: float) -> str:
    """``ts`` as the ISO-8601 UTC text an operator's tool sends (``...Z``)."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def cmd(**kw) -> bytes:
    """A command payload as it arrives over MQTT."""
    return json.dumps(kw).encode()


def store(**limits) -> DirectiveStore:
    """A store with these limits (defaults otherwise), last heard at ``T0``."""
    return DirectiveStore(limits=Limits(**limits), last_heard=T0)
