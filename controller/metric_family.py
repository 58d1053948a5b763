"""One metric family as plain data, shared by the exporter (controller/metrics.py) and the
families other modules contribute (controller/site_metrics.py: PDUs, meter), so that neither
imports the other's module to build one."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Family:
    """One metric family as plain data: rendered by :func:`render_text` (the served, fast
    path) or converted to prometheus_client metrics by :class:`CurtaildCollector`."""

    name: str  # counters without _total, info without _info (prometheus_client convention)
    kind: str  # gauge | counter | info | histogram
    help: str
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)
    hist_sum: float = 0.0  # histogram only; samples are (le,) -> cumulative count
    hist_count: int = 0

    def add(self, values: tuple[str, ...] | list[str], value: float) -> None:
        self.samples.append((tuple(values), value))
