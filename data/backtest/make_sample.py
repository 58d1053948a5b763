"""Regenerate ercot_houston_week.csv: a synthetic-but-calibrated week (see README.md here).

Deterministic (fixed seed)::

    python data/backtest/make_sample.py > data/backtest/ercot_houston_week.csv
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone

SEED = 20250804
CDT = timezone(timedelta(hours=-5), "CDT")
START = datetime(2025, 8, 4, 0, 0, tzinfo=CDT)  # a Monday
HOURS = 7 * 24

#: Typical summer Houston-hub real-time energy price by local hour, USD/MWh: low and flat at
#: night, a solar-depressed midday, the net-load peak after sunset (18-21 h).
HOURLY_SHAPE_USD_PER_MWH = [
    24, 23, 22, 22, 23, 25, 28, 29, 27, 26, 27, 29,
    31, 33, 36, 40, 46, 55, 72, 95, 78, 52, 38, 30,
]
#: Weekend discount (lower commercial load).
WEEKEND_FACTOR = 0.85
#: Scarcity events: (day index, local hour) -> USD/MWh, the price-adder spikes of a tight
#: evening (reserves short as solar fades).
SPIKES_USD_PER_MWH = {(1, 19): 640.0, (1, 20): 1450.0, (1, 21): 210.0, (3, 19): 280.0,
                      (4, 20): 165.0}
#: A windy night: wind oversupply drives the hub negative for a few hours.
NEGATIVE_USD_PER_MWH = {(5, 2): -4.0, (5, 3): -7.5, (5, 4): -2.0}
#: Non-energy charges a flexible load pays per MWh (ancillary, admin, retail margin).
ADDERS_USD_PER_MWH = 8.0

#: Hash price: start, hourly volatility of the BTC price (~2.4 %/day), and one difficulty
#: adjustment (+3.5 %, so hash price -3.4 %) on day 4 at 09:00.
HASHPRICE_START_USD_PER_TH_DAY = 0.0535
HOURLY_VOL = 0.005
DIFFICULTY_STEP = (3 * 24 + 9, 1.035)


def main() -> None:
    rng = random.Random(SEED)
    print("timestamp,hashprice_usd_per_th_day,tariff_usd_per_kwh")
    hashprice = HASHPRICE_START_USD_PER_TH_DAY
    for h in range(HOURS):
        at = START + timedelta(hours=h)
        day, hour = divmod(h, 24)
        if h == DIFFICULTY_STEP[0]:
            hashprice /= DIFFICULTY_STEP[1]
        hashprice *= math.exp(rng.gauss(0.0, HOURLY_VOL))
        energy = HOURLY_SHAPE_USD_PER_MWH[hour] * rng.lognormvariate(0.0, 0.12)
        if at.weekday() >= 5:
            energy *= WEEKEND_FACTOR
        energy = SPIKES_USD_PER_MWH.get((day, hour), energy)
        energy = NEGATIVE_USD_PER_MWH.get((day, hour), energy)
        tariff = (energy + ADDERS_USD_PER_MWH) / 1000.0
        print(f"{at.isoformat()},{hashprice:.5f},{tariff:.5f}")


if __name__ == "__main__":
    main()
