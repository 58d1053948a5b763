"""The backtest's price series: a CSV of hash price and tariff over time.

Format (header required, columns in any order, ``#`` lines are comments)::

    timestamp,hashprice_usd_per_th_day,tariff_usd_per_kwh[,power_cap_w]
    2025-07-14T00:00:00-05:00,0.0531,0.0412
    1752469200,0.0531,0.0398

``timestamp`` is ISO 8601 (an offset or ``Z``; a naive time is taken as UTC) or unix seconds.
Each row's prices hold until the next row; the last row holds for the median row spacing, so
168 hourly rows are 168 hours. The optional ``power_cap_w`` column (empty = no cap) is a
demand-response site cap, passed to the policy stack as a directive. The optional
``forecast_tariff_usd_per_kwh`` column (empty = none) is what a forecast published ahead of
time said the row's tariff would be (e.g. the day-ahead price plus the same adders): the
policy sees it ahead of the row (``--forecast-ahead-s``), never the row's real price.

Every error names the file, the line and the column, and why: an operator's export with one
bad cell must say which cell, not "invalid CSV".
"""

from __future__ import annotations

import csv
import itertools
import math
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REQUIRED = ("timestamp", "hashprice_usd_per_th_day", "tariff_usd_per_kwh")
OPTIONAL = ("power_cap_w", "forecast_tariff_usd_per_kwh")


class PriceError(ValueError):
    """A prices file that cannot be replayed; the message says where and why."""


@dataclass(frozen=True, slots=True)
class PriceRow:
    """One row: prices in force from ``at`` (unix s) until the next row."""

    at: float
    hashprice_usd_per_th_day: float
    tariff_usd_per_kwh: float
    power_cap_w: float | None = None
    #: what a forecast published ahead of time said this row's tariff would be (e.g. the
    #: day-ahead market's price plus the same adders); None: no forecast for this row
    forecast_tariff_usd_per_kwh: float | None = None


@dataclass(frozen=True, slots=True)
class PriceSeries:
    rows: tuple[PriceRow, ...]
    end: float  # unix s: when the last row's prices stop
    source: str
    #: every row's start, in order (for bisecting); derived from ``rows``
    starts: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "starts", tuple(r.at for r in self.rows))

    @property
    def start(self) -> float:
        return self.rows[0].at


    def row_end(self, i: int) -> float:
        return self.rows[i + 1].at if i + 1 < len(self.rows) else self.end


def _timestamp(text: str) -> float:
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"{text!r} is not a finite unix time")
        return value
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise ValueError(f"{text!r} is neither ISO 8601 (e.g. 2025-07-14T17:00:00-05:00) "
                         "nor unix seconds") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _number(text: str, *, low: float | None = None) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    if low is not None and value < low:
        raise ValueError(f"{value:g} is below {low:g}")
    return value


def parse_prices_text(text: str, source: str = "prices") -> PriceSeries:
    """Parse and validate a prices CSV; raises PriceError naming ``source:line: column``."""
    lines = text.splitlines()
    numbered = [(n, line) for n, line in enumerate(lines, start=1)
                if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        raise PriceError(f"{source}: empty: expected a header line "
                         f"{','.join(REQUIRED)} and at least two rows")
    header_no, header_line = numbered[0]
    header = [h.strip() for h in next(csv.reader([header_line]))]
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
    if missing or unknown:
        why = []
        if missing:
            why.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            why.append(f"unknown column(s) {', '.join(unknown)} (allowed: "
                       f"{', '.join(REQUIRED + OPTIONAL)})")
        raise PriceError(f"{source}:{header_no}: header: {'; '.join(why)}")
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise PriceError(f"{source}:{header_no}: header: duplicate column(s) {', '.join(dupes)}")
    col = {name: header.index(name) for name in header}
    rows: list[PriceRow] = []
    for n, line in numbered[1:]:
        cells = next(csv.reader([line]))
        if len(cells) != len(header):
            raise PriceError(f"{source}:{n}: expected {len(header)} columns "
                             f"({','.join(header)}), got {len(cells)}")

        def cell(name: str, parse, n=n, cells=cells):
            try:
                return parse(cells[col[name]])
            except ValueError as exc:
                raise PriceError(f"{source}:{n}: {name}: {exc}") from None

        cap = forecast = None
        if "power_cap_w" in col and cells[col["power_cap_w"]].strip():
            cap = cell("power_cap_w", lambda t: _number(t, low=0.0))
        if "forecast_tariff_usd_per_kwh" in col and \
                cells[col["forecast_tariff_usd_per_kwh"]].strip():
            forecast = cell("forecast_tariff_usd_per_kwh", _number)
        row = PriceRow(
            at=cell("timestamp", _timestamp),
            hashprice_usd_per_th_day=cell("hashprice_usd_per_th_day",
                                          lambda t: _number(t, low=0.0)),
            # Negative energy prices happen (ERCOT, wind at night): allowed.
            tariff_usd_per_kwh=cell("tariff_usd_per_kwh", _number),
            power_cap_w=cap,
            forecast_tariff_usd_per_kwh=forecast,
        )
        if rows and row.at <= rows[-1].at:
            raise PriceError(f"{source}:{n}: timestamp: {cells[col['timestamp']].strip()!r} is "
                             "not after the previous row's (rows must be in increasing time)")
        rows.append(row)
    if len(rows) < 2:
        raise PriceError(f"{source}: {len(rows)} data row(s): at least two are needed (the "
                         "spacing of the rows sets how long the last one lasts)")
    spacing = statistics.median(b.at - a.at for a, b in itertools.pairwise(rows))
    return PriceSeries(rows=tuple(rows), end=rows[-1].at + spacing, source=source)


def load_prices(path: str | Path) -> PriceSeries:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PriceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise PriceError(f"{path}: not UTF-8 text: {exc}") from None
    return parse_prices_text(text, source=str(path))
