"""An API key never appears -- whole or in part -- in any error, log line or plan output, even
when the server echoes it back in a field or a body, and wherever a message cuts that echo.

Two leaks made these tests: a non-numeric field's value went into the error unscrubbed, and
bodies were cut (to 80 characters) before being scrubbed, so a key straddling the cut left its
first characters behind, which no longer matched the key. Every error path now scrubs first,
then cuts (drivers/httpfeed.py ``redact_cut``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curtaild.controller.config import parse_config
from curtaild.drivers.hashprice import build_hashprice_source
from curtaild.drivers.hashprice_config import HashrateIndexSource
from curtaild.drivers.httpfeed import FeedError, StaleSource, redact_cut
from curtaild.drivers.tariff import build_tariff_source
from tests.drivers.fakeapi import FakeApi, js, text
from tests.support.plan_config import write_plan_config

REPO = Path(__file__).resolve().parents[2]
#: Letters and digits only, none of them in FILLER: a piece of it is easy to spot.
KEY = "HI7q2V9zX4lM8nP3rT6wS1yB5kC0jD"
FILLER = "-_ #~<>/=!"
PATH = "/v1/hashrateindex/hashprice/current"


def pieces_of_key(text: str, shortest: int = 6) -> list[str]:
    """Every piece of KEY at least ``shortest`` long that appears in ``text``."""
    return sorted({KEY[i:j] for i in range(len(KEY)) for j in range(i + shortest, len(KEY) + 1)
                   if KEY[i:j] in text})


def everything_said(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.getMessage()} {r.args} {r.exc_text}" for r in caplog.records)


async def fails_without_showing_the_key(src, caplog: pytest.LogCaptureFixture,
                                        error: str) -> None:
    """The Hashrate Index fetch fails with ``error`` (key masked as ``***``), and no piece of
    the key is in the error, the source's detail (status, plan) or anything logged."""
    with pytest.raises(StaleSource) as info:
        await src.fetch()
    shown = [str(info.value), json.dumps(src.detail()), everything_said(caplog)]
    assert error in shown[0] and "***" in shown[0], shown[0]
    for s in shown:
        assert pieces_of_key(s) == [], s


def source(api: FakeApi):
    cfg = HashrateIndexSource(base_url=f"{api.url}/v1/hashrateindex", api_key=KEY,
                              attempts=1, backoff_s=0.05, backoff_max_s=0.1)
    return build_hashprice_source(cfg)


# ------------------------------------------------------------------ redact_cut, the rule
@pytest.mark.parametrize("seed", range(200))
def test_redact_cut_leaves_no_piece_of_a_secret_anywhere(seed: int) -> None:
    rnd = random.Random(seed)
    parts = []
    for _ in range(rnd.randrange(1, 6)):
        parts.append("".join(rnd.choice(FILLER) for _ in range(rnd.randrange(0, 60))))
        parts.append(KEY)
    parts.append("".join(rnd.choice(FILLER) for _ in range(rnd.randrange(0, 60))))
    body = "".join(parts)
    limit = rnd.randrange(1, len(body) + 10)
    out = redact_cut(body, limit, (KEY,))
    assert not set(out) & set(KEY), (limit, body, out)  # not one character of the key
    assert len(out) <= limit + 3
    # What comes before the first key and within the limit is kept as it was.
    first = body.index(KEY)
    assert out.startswith(body[:min(first, limit)])
    if first < limit:
        assert "***" in out


def test_redact_cut_examples() -> None:
    assert redact_cut("x" * 30 + KEY + "tail", 40, (KEY,)) == "x" * 30 + "***"
    assert redact_cut(KEY + "-" * 50 + KEY, 40, (KEY,)) == "***" + "-" * 10
    assert redact_cut("abc", 80, (KEY,)) == "abc"
    assert redact_cut("no secrets here", 5) == "no se"


# ------------------------------------------------ Hashrate Index: the key echoed in a field
@pytest.mark.parametrize("value", [f"bad key {KEY}", "x" * 30 + KEY],
                         ids=["whole-key-in-40-chars", "key-across-the-40-char-cut"])
async def test_a_non_numeric_field_echoing_the_key_never_shows_it(
        fake_api: FakeApi, caplog: pytest.LogCaptureFixture, value: str) -> None:
    caplog.set_level(logging.DEBUG)
    fake_api.routes[PATH] = js({"data": {"priceUSD": value, "timestamp": time.time()}})
    await fails_without_showing_the_key(source(fake_api), caplog, "is not a number")


# ------------------------------------------------------- a body cut at 80 characters
async def test_an_html_body_with_the_key_across_the_cut_never_shows_it(
        fake_api: FakeApi, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = "<html>" + "a" * 64 + KEY + "</html>"  # the key starts at 70: the cut is at 80
    assert body.index(KEY) == 70
    fake_api.routes[PATH] = text(body, content_type="text/html")
    await fails_without_showing_the_key(source(fake_api), caplog, "malformed JSON")


# ------------------------------------- a realtime tariff's header secret echoed by the feed
def realtime(api: FakeApi, **table):
    cfg = parse_config({
        "fleet": {"hosts": ["127.155.0.1"]},
        "hashprice": {"source": "fixed", "usd_per_th_day": 0.05},
        "tariff": {"kind": "realtime", "url": f"{api.url}/rtm", "attempts": 1,
                   "headers": {"X-Api-Key": KEY}, **table},
        "policy": {"name": "margin"},
    }).tariff
    return build_tariff_source(cfg)


@pytest.mark.parametrize("case", ["json-price", "csv-columns"])
async def test_a_tariff_feed_echoing_its_header_secret_never_shows_it(
        fake_api: FakeApi, caplog: pytest.LogCaptureFixture, case: str) -> None:
    caplog.set_level(logging.DEBUG)
    if case == "json-price":
        fake_api.routes["/rtm"] = js({"lmp": "x" * 33 + KEY})  # across the 40-char cut
        src = realtime(fake_api, field="lmp")
    else:  # a CSV whose header is an error page echoing the key, cut at 120
        fake_api.routes["/rtm"] = text("error " + "y" * 108 + KEY + "\n1\n")
        src = realtime(fake_api, format="csv", field="SettlementPointPrice")
    with pytest.raises(FeedError) as info:
        await src.fetch(time.time())
    shown = [str(info.value), everything_said(caplog)]
    assert "***" in shown[0], shown[0]
    for s in shown:
        assert pieces_of_key(s) == [], s


# ------------------------------------------------------------- end to end: plan --json
def test_plan_output_never_shows_the_key(fake_api: FakeApi, tmp_path: Path) -> None:
    """`curtaild plan --json` in its own process, key from the environment, the API echoing it
    in a non-numeric field: the plan shows the failure and falls back, never the key."""
    fake_api.routes[PATH] = js({"data": {"priceUSD": "y" * 30 + KEY}})
    config = write_plan_config(tmp_path, f"""[hashprice]
source = "hashrateindex"
base_url = "{fake_api.url}/v1/hashrateindex"
attempts = 1
fallbacks = [{{ source = "fixed", usd_per_th_day = 0.045 }}]""", """[tariff]
kind = "flat"
usd_per_kwh = 0.07""", host="127.155.0.1")
    res = subprocess.run(
        [sys.executable, "-m", "curtaild.controller.cli", "--config", str(config), "--log-level",
         "DEBUG", "plan", "--json"], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "HASHRATEINDEX_API_KEY": KEY})
    assert res.returncode == 0, res.stderr[-3000:]
    market = json.loads(res.stdout)["market"]
    primary = market["hashprice_sources"][0]
    assert primary["fresh"] is False and "is not a number" in primary["error"], primary
    assert market["hashprice_source"] == "fixed"
    assert pieces_of_key(res.stdout) == [] and pieces_of_key(res.stderr) == []
    assert fake_api.seen and fake_api.seen[0].headers["x-hi-api-key"] == KEY  # it was sent

