"""The [hashprice] table: backward compatible, strict, errors named `hashprice.<key>: reason`."""

from __future__ import annotations

import pytest

from curtaild.controller.config import ConfigError, parse_config
from curtaild.drivers.hashprice_config import FixedHashprice, MempoolHashprice

BASE = {"fleet": {"hosts": ["127.66.0.1"]}, "tariff": {"kind": "flat", "usd_per_kwh": 0.06},
        "policy": {"name": "margin"}}


def parse(table: dict):
    return parse_config({**BASE, "hashprice": table}).hashprice


def test_fixed_as_before() -> None:
    hp = parse({"source": "fixed", "usd_per_th_day": 0.045})
    assert isinstance(hp, FixedHashprice)
    assert hp.usd_per_th_day == 0.045 and hp.fallbacks == [] and hp.combine == "first"


def test_mempool_with_fallbacks() -> None:
    hp = parse({"source": "mempool", "combine": "median", "max_disagreement": 0.05,
                "fallbacks": [{"source": "mempool", "base_url": "http://10.0.0.2:8999/api/"},
                              {"source": "fixed", "usd_per_th_day": 0.045}]})
    assert isinstance(hp, MempoolHashprice)
    assert hp.base_url == "https://mempool.space/api"
    assert hp.refresh_s == 300 and hp.max_age_s == 1200 and hp.fee_blocks == 144
    assert hp.fallbacks[0].base_url == "http://10.0.0.2:8999/api"  # trailing slash dropped
    assert hp.fallbacks[1].usd_per_th_day == 0.045


@pytest.mark.parametrize(("table", "expected"), [
    ({"source": "fixed"}, "hashprice.usd_per_th_day: Field required"),
    ({"source": "mempool", "base_ur": "http://x"}, "hashprice.base_ur: Extra inputs"),
    ({"source": "mempool", "base_url": "mempool.space/api"}, "hashprice.base_url: "),
    ({"source": "mempool", "base_url": "https://x/api?key=1"}, "hashprice.base_url: "),
    ({"source": "mempool", "refresh_s": 1}, "hashprice.refresh_s: "),
    ({"source": "mempool", "refresh_s": 600, "max_age_s": 300},
     "hashprice.max_age_s: must be at least refresh_s (600)"),
    ({"source": "mempool", "combine": "mean"}, "hashprice.combine: "),
    ({"source": "mempool", "max_disagreement": -0.1}, "hashprice.max_disagreement: "),
    ({"source": "mempool", "fallbacks": [{"source": "coingecko"}]}, "hashprice.fallbacks[0]: "),
    ({"source": "mempool", "fallbacks": [{"source": "mempool", "timeout": 3}]},
     "hashprice.fallbacks[0].timeout: Extra inputs"),
    ({"source": "mempool", "fallbacks": [{"source": "fixed", "usd_per_th_day": 0.04},
                                         {"source": "mempool"}]},
     "hashprice.fallbacks[0]: a fixed hash price never fails"),
    ({"source": "fixed", "usd_per_th_day": 0.04, "fallbacks": [{"source": "mempool"}]},
     "hashprice.fallbacks: a fixed hash price never fails"),
    ({"source": "mempool", "fallbacks": [{"source": "mempool", "fallbacks": []}]},
     "hashprice.fallbacks[0].fallbacks: Extra inputs"),  # no nesting
    ({"source": "hashrateindex", "api_key": "k", "endpoint": "latest"},
     "hashprice.endpoint: "),
    ({"source": "hashrateindex", "api_key": "k", "refresh_s": 5}, "hashprice.refresh_s: "),
])
def test_errors_name_the_key(table: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(table)
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems
