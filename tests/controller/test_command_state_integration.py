"""Commands that lie or lag, and silence after our own command (issue 14), through `curtaild
run`, the real emulator and a real mosquitto, judged by the emulator's physical truth.

* A stock Antminer that stores a sleep and keeps hashing (the emulator's ``ignore_sleep``):
  its sleep is "pending", never counted as shed power, so a demand-response cap is met by
  shedding another machine; it is re-commanded at most once per grace, flagged ("lying"),
  sent its next tier once (a reboot, where ``[guards] escalate`` allows it) and then left
  alone -- in the journal, ``status --json``, the metrics and the per-miner MQTT topic.
* A Whatsminer (API v3) given a power limit restarts btminer and is silent: "transitioning",
  not an unreachable fault (no poll error, no re-discovery), still owned, then confirmed.

Addresses: 127.160.0.0/16 only.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support.daemon import REPO, DaemonProcess, journal_rows, wait_for, write_config
from tests.support.emulator import SITE_WHATSMINER_PASSWORD, EmulatorProcess
from tests.support.emulator import free_port as emu_port
from tests.support.mosquitto import PREFIX, Client, MosquittoProcess, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CURTAIL = f"{PREFIX}/cmd/curtail"
# Every machine earns at this price: only the demand-response event sheds.
HASHPRICE, TARIFF = 0.09, 0.03


def _config(tmp: Path, ranges: list[str], broker: MosquittoProcess, metrics: str, *,
            guards_toml: str, poll_interval_s: float = 1.0) -> Path:
    state = tmp / "state"
    path = write_config(tmp / "config.toml", ranges=ranges, hashprice=HASHPRICE, tariff=TARIFF,
                        state_dir=state, poll_interval_s=poll_interval_s,
                        guards={"ramp_w_per_min": 1e9},
                        extra=broker.mqtt_toml(state) + f'[metrics]\nlisten = "{metrics}"\n')
    text = path.read_text().replace("[guards]\n", "[guards]\n" + guards_toml, 1)
    path.write_text(text)
    return path


def status_json(cfg: Path) -> dict:
    """What `curtaild status --json` prints (the shipped command, not the file)."""
    out = subprocess.run([sys.executable, "-m", "curtaild.controller.cli", "--config", str(cfg),
                          "status",
                          "--json"], cwd=REPO, capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def miner_row(status: dict, ip: str) -> dict:
    return next((m for m in status.get("miners", []) if m["ip"] == ip), {})


def scrape(metrics: str) -> str:
    return urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5).read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series (labels given must all match), None if absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return None


def client_actions(emu: EmulatorProcess, ip: str, action: str) -> int:
    """How many times the client (curtaild) did ``action`` to the machine: the emulator's
    actor log of physical changes."""
    return sum(1 for _, what, actor in emu.miner(ip)["changes"]
               if what == action and actor == "client")


# ------------------------------------------------------------------------------ the liar
LIAR_FLEET = """
[[miner]]
model = "S19j Pro"
fault = "ignore_sleep"
[[miner]]
model = "S21"
count = 2
"""
LIAR = "127.160.1.1"
GRACE_S = 4.0


@pytest.mark.parametrize("escalate", [True, False], ids=["next-tier", "reported"])
def test_a_lying_antminer_is_flagged_not_re_commanded_and_the_cap_is_met_on_confirmed_power(
        tmp_path: Path, escalate: bool) -> None:
    host = "127.160.1.250"
    metrics = f"127.160.1.251:{free_port('127.160.1.251')}"
    guards = (f"confirm_grace_s = {{ antminer = {GRACE_S} }}\n"
              + ('escalate = ["sleep_to_reboot"]\n' if escalate else ""))
    with MosquittoProcess(host=host) as broker, \
            EmulatorProcess(fleet_toml=LIAR_FLEET, first_ip=LIAR, time_scale=0.01,
                            control=f"127.160.1.252:{emu_port('127.160.1.252')}") as emu, \
            Client(broker, subscribe=f"{PREFIX}/#") as ems:
        cfg = _config(tmp_path, ["127.160.1.1-127.160.1.3"], broker, metrics, guards_toml=guards)
        with DaemonProcess(cfg, tmp_path / "d.log") as d:
            wait_for(lambda: len([m for m in status_json(cfg).get("miners", [])
                                  if m["state"] == "mining"]) == 3, 60, what="fleet mining")
            truth = {m["ip"]: m for m in emu.miners()}
            full_w = sum(m["power_w"] for m in truth.values())
            # Sleeping the liar (the worst J/TH, shed first) would be enough on paper.
            target = round(full_w - 0.5 * truth[LIAR]["power_w"])
            ems.publish(CURTAIL, json.dumps({"id": "dr-liar", "target_power_w": target}))
            # Met on what is drawn: the liar keeps hashing, so another machine is shed.
            wait_for(lambda: sum(m["power_w"] for m in emu.miners()) < target, 30,
                     what=f"true fleet power under {target} W with the liar hashing")
            assert emu.miner(LIAR)["state"] == "mining"
            wait_for(lambda: [m["ip"] for m in emu.miners() if m["state"] == "sleeping"], 15,
                     what="another machine asleep")

            # Flagged ("lying") after flag_after_failures graces, everywhere it is reported.
            row = wait_for(lambda: miner_row(status_json(cfg), LIAR).get("command_state")
                           == "lying" and miner_row(status_json(cfg), LIAR), 60,
                           what="the liar reported lying by status --json")
            key = row["key"]
            assert status_json(cfg)["fleet"]["command_states"]["lying"] == 1
            human = subprocess.run([sys.executable, "-m", "curtaild.controller.cli", "--config",
                                    str(cfg),
                                    "status"], cwd=REPO, capture_output=True, text=True,
                                   timeout=60).stdout
            assert any(ln.split()[:2] == ["lying", LIAR] for ln in human.splitlines()), human
            text = scrape(metrics)
            assert sample(text, "curtaild_site_miners_command_state", state="lying") == 1
            assert sample(text, "curtaild_miner_command_state", miner=key, state="lying") == 1
            topic = f"{PREFIX}/miners/{key}"
            wait_for(lambda: any(json.loads(p).get("command_state") == "lying"
                                 for p in ems.on(topic)), 15, what="MQTT miner state lying")
            assert any(json.loads(p).get("command_state") == "pending" for p in ems.on(topic))

            # Not re-commanded every tick: the first sleep and flag_after_failures - 1
            # re-commands (a grace apart), the next tier once if allowed, then nothing.
            intents = journal_rows(tmp_path / "state", "SELECT ts, reason FROM events WHERE "
                                   "kind='intent' AND miner=? ORDER BY ts", (key,))
            assert len(intents) == 3 + escalate, intents
            gaps = [b[0] - a[0] for a, b in itertools.pairwise(intents)]
            assert all(g >= GRACE_S for g in gaps), gaps
            assert ("next tier" in intents[-1][1]) == escalate
            before = (len(intents), client_actions(emu, LIAR, "reboot"))
            ticks_before = d.log().count("INFO curtaild: tick ")
            wait_for(lambda: d.log().count("INFO curtaild: tick ") >= ticks_before + 3 * GRACE_S,
                     60, what="three more graces of ticks")
            after = journal_rows(tmp_path / "state", "SELECT count(*) FROM events WHERE "
                                 "kind='intent' AND miner=?", (key,))[0][0]
            assert (after, client_actions(emu, LIAR, "reboot")) == before
            # The emulator's actor log: one stored sleep (re-commands found it stored and
            # posted nothing), and the reboot only when the operator allows the next tier.
            assert client_actions(emu, LIAR, "sleep") == 1
            assert client_actions(emu, LIAR, "reboot") == (1 if escalate else 0)
            assert emu.miner(LIAR)["state"] == "mining"
            assert sum(m["power_w"] for m in emu.miners()) < target  # still met
            assert d.stop() == 0
        flagged = journal_rows(tmp_path / "state", "SELECT count(*) FROM events WHERE "
                               "kind='flagged' AND miner=?", (key,))[0][0]
        assert flagged == 1 + escalate


# ------------------------------------------------------------------------ transitioning
V3_FLEET = f"""
[[miner]]
model = "M50"
api = "v3"
password = "{SITE_WHATSMINER_PASSWORD}"
"""
V3 = "127.160.2.1"


def test_a_whatsminer_restarting_for_our_limit_is_transitioning_not_a_fault(
        tmp_path: Path) -> None:
    host = "127.160.2.250"
    metrics = f"127.160.2.251:{free_port('127.160.2.251')}"
    # btminer is silent for 30 s (emulated) after a new limit: 6 s here, six polls.
    with MosquittoProcess(host=host) as broker, \
            EmulatorProcess(fleet_toml=V3_FLEET, first_ip=V3, time_scale=0.2,
                            control=f"127.160.2.252:{emu_port('127.160.2.252')}") as emu, \
            Client(broker, subscribe=f"{PREFIX}/#") as ems:
        cfg = _config(tmp_path, [f"{V3}-{V3}"], broker, metrics,
                      guards_toml="confirm_grace_s = { whatsminer = 90 }\n")
        with DaemonProcess(cfg, tmp_path / "d.log") as d:
            row = wait_for(lambda: (r := miner_row(status_json(cfg), V3)).get("state")
                           == "mining" and r, 90, what="the Whatsminer mining")
            key = row["key"]
            power = emu.miner(V3)["power_w"]
            ems.publish(CURTAIL, json.dumps({"id": "dr-limit",
                                             "target_power_w": round(power * 0.7)}))
            seen: set[str] = set()
            kinds: list[float] = []

            def settled() -> bool:
                row = miner_row(status_json(cfg), V3)
                seen.add(str(row.get("command_state")))
                if row.get("command_state") == "transitioning":
                    text = scrape(metrics)
                    kinds.append(sample(text, "curtaild_site_miners",
                                        state="transitioning") or 0.0)
                    assert sample(text, "curtaild_site_miners", state="unreachable") == 0
                return row.get("command_state") == "confirmed"

            wait_for(settled, 120, interval=0.3, what="the limit confirmed")
            assert "transitioning" in seen, seen
            assert kinds and max(kinds) == 1.0
            assert emu.miner(V3)["power_limit_w"] < power
            text = scrape(metrics)
            assert (sample(text, "curtaild_poll_errors_total", kind="transitioning") or 0) >= 2
            for kind in ("timeout", "refused", "error", "garbage", "discovery"):
                assert (sample(text, "curtaild_poll_errors_total", kind=kind) or 0) == 0, kind
            # Still owned throughout: the journal never let go of its limit.
            owned = journal_rows(tmp_path / "state", "SELECT action FROM curtailed WHERE "
                                 "miner=?", (key,))
            assert owned == [("limit",)]
            assert "re-discovery" not in d.log()
            assert d.stop() == 0
