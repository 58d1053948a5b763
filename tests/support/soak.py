"""The soak harness: a running `curtaild run` against an emulated fleet while faults rain down.

Everything is real and on loopback: the emulator (its faults come from its socket layer and its
firmware families), the market APIs (tests/drivers/fakeapi.py: real HTTP, mempool.space shapes
and a real-time tariff feed that can fail, hang, serve garbage or go stale), the daemon process
(SIGHUP with broken configs, kill -9, restart, a journal lost between a kill and a restart), an
sd_notify datagram socket (the daemon's watchdog pings are timed) and, when the test gives one,
a mosquitto broker that is restarted under it.

The fleet is ``--count``'s mix (every family, every stock Antminer firmware generation, a
Whatsminer on API v3) with the site's own firmware passwords (``[fleet.credentials]``, from
password files, one stock Antminer by a per-miner override), and curtaild logs in to the broker
with a password: secrets that no output may ever show.

The harness records; invariants are judged against the emulator's truth at the end
(:meth:`Soak.violations`): no machine left asleep that should run (judged on what curtaild can
know: after a lost journal, a machine it reported as of unknown owner runs once the harness
has adopted it), none woken that an operator slept, none of unknown owner woken before it was
adopted, every command a miner received journaled before it arrived (the journals lost on the
way included), no miner with empty pools, no secret in any output (daemon logs, status.json,
``status``/``plan --json``, ``adopt``, metrics, MQTT, every journal), no unhandled exception in
any daemon's log, and the watchdog never starved.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import socket
import sqlite3
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from curtaild.emulator.control import SLEEP_STORED
from curtaild.emulator.fleet import plan_count
from curtaild.emulator.physics import FAULT_KINDS
from tests.drivers.fakeapi import FakeApi, Reply, js, mempool_routes
from tests.support.daemon import REPO, DaemonProcess, journal_rows, wait_for, write_config
from tests.support.emulator import EmulatorProcess, free_port
from tests.support.mosquitto import PREFIX, USERS, Client, MosquittoProcess

#: Real-time tariff feed prices, USD/MWh. With the mempool fake's 0.0634 USD/TH/day and a 2 %
#: pool fee, breakeven is 86 J/TH at 30 and 27 J/TH at 95: every machine earns when "cheap";
#: the S19, S19j Pro and M30S lose when "dear".
CHEAP_USD_PER_MWH = 30.0
DEAR_USD_PER_MWH = 95.0
#: Every fault the emulator has (emulator/physics.py FAULT_KINDS: a kind added there is drawn
#: here too, and MUST_HAPPEN injects it once per run).
FAULTS = tuple(k for k in FAULT_KINDS if k != "none")
#: Faults only some firmware families have (docs/emulator.md); drawn only on those machines.
#: Every other kind comes from the socket layer or the physics, identical for every family.
FAULT_FAMILIES: dict[str, frozenset[str]] = {
    # ``lie`` exists on every family (acknowledged, nothing changed): drawn on any machine
    "slow_write": frozenset({"antminer"}),
    "wipe_pools_on_failed_read": frozenset({"antminer"}),
    "token_exhaustion": frozenset({"whatsminer"}),
}
#: How long (s) before a client-side change its journaled intent may be: the command deadline
#: plus the retries' backoff, generously (a slow_write lands up to SLOW_WRITE_MAX_S later).
INTENT_WINDOW_S = 60.0
SLOW_WRITE_MAX_S = 25.0
#: Faults every run must inject whatever the seed, and by when (fraction of the chaos time):
#: if the random schedule has not drawn one by then, it is injected next. Each fault kind is
#: "fault:<kind>".
MUST_HAPPEN = tuple(sorted(
    ((0.25, "dr_event"), (0.35, "kill9"), (0.45, "sighup_broken"), (0.4, "journal_loss"),
     (0.55, "broker_restart"), (0.6, "power_cut"), (0.65, "market"), (0.75, "operator_sleep"),
     (0.8, "cli_probe"),
     *((round(0.02 + 0.04 * i, 2), f"fault:{kind}") for i, kind in enumerate(FAULTS)))))
BROKER_EVENTS = {"dr_event", "broker_restart"}
#: Where the soak's own listeners live (the fleet starts at 127.70.0.1; nothing else in the
#: repository uses 127.70.0.0/16).
METRICS_HOST = "127.70.250.1"
#: The MQTT password curtaild logs in with (tests/support/mosquitto.py): a secret too.
MQTT_SECRET = USERS["curtaild"]


def _secret(seed: int, name: str) -> str:
    """A password no output could show by chance: 24 letters and digits, fixed per seed."""
    rng = random.Random(hashlib.sha256(f"soak-{seed}-{name}".encode()).digest())
    return "Sk" + "".join(rng.choices(string.ascii_letters + string.digits, k=22))


def fleet_toml(count: int, first_ip: str, passwords: dict[str, str],
               override: tuple[str, str] | None) -> str:
    """``--count``'s fleet (same models, firmware generations and APIs) with the site's
    passwords: ``passwords`` per family, ``override`` (ip, password) for one machine."""
    from curtaild.core.models import MODELS

    out = []
    for m in plan_count(count, first_ip).miners:
        family = MODELS[m.model].firmware
        lines = ["[[miner]]", f'model = "{m.model}"', f'ip = "{m.ip}"']
        if m.api is not None:
            lines.append(f'api = "{m.api}"')
        if m.firmware_version is not None:
            lines.append(f'firmware_version = "{m.firmware_version}"')
        pw = override[1] if override is not None and override[0] == m.ip else \
            passwords.get(family)
        if pw is not None:
            lines.append(f'password = "{pw}"')
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


class NotifyListener:
    """A datagram socket playing systemd's notify socket: records every message with its time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode(errors="replace")))

    def mark(self, text: str) -> None:
        """A harness event (start/kill) in the same timeline."""
        self.messages.append((time.monotonic(), f"HARNESS={text}"))

    def max_watchdog_gap_s(self) -> float:
        """Longest time between pings while a daemon was up (READY to its stop or kill)."""
        worst = 0.0
        last: float | None = None
        for t, msg in self.messages:
            if msg.startswith("HARNESS=") or "STOPPING=1" in msg:
                last = None
            elif "READY=1" in msg or "WATCHDOG=1" in msg:
                if last is not None and "WATCHDOG=1" in msg:
                    worst = max(worst, t - last)
                last = t
        return worst

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self.thread.join(2)


class Market:
    """The fake market APIs and what the soak does to them."""

    def __init__(self) -> None:
        self.api = FakeApi().start()
        mempool_routes(self.api)
        self.tariff_usd_per_mwh = CHEAP_USD_PER_MWH
        self.broken: dict[str, tuple[str, float]] = {}  # "hashprice"|"tariff" -> (mode, until)
        self.api.routes["/tariff.json"] = self._tariff
        self.api.routes["/api/v1/prices"] = self._prices

    def _mode(self, which: str) -> str:
        mode, until = self.broken.get(which, ("ok", 0.0))
        return mode if time.monotonic() < until else "ok"

    @staticmethod
    def _broken_reply(mode: str) -> Reply:
        if mode == "error":
            return Reply(503, "upstream down")
        if mode == "hang":
            return Reply(hang=True)
        return Reply(200, "<html>maintenance", content_type="text/html")  # garbage

    def _tariff(self, _seen) -> Reply:
        mode = self._mode("tariff")
        if mode != "ok":
            return self._broken_reply(mode)
        return js({"price": self.tariff_usd_per_mwh})

    def _prices(self, seen) -> Reply:
        mode = self._mode("hashprice")
        if mode != "ok":
            return self._broken_reply(mode)
        # mempool.space stamps its price: a fixed document would go stale by itself.
        return js({"time": int(time.time()), "USD": 100_000, "EUR": 92_000})

    def break_for(self, which: str, mode: str, seconds: float) -> None:
        self.broken[which] = (mode, time.monotonic() + seconds)

    def heal(self) -> None:
        self.broken.clear()

    def close(self) -> None:
        self.api.stop()


@dataclass
class SoakPlan:
    miners: int = 20
    chaos_s: float = 75.0
    seed: int = 1
    first_ip: str = "127.70.0.1"
    watchdog_s: float = 60.0
    converge_s: float = 180.0
    poll_interval_s: float = 2.0


@dataclass
class JournalLoss:
    """One journal lost between a kill -9 and a restart."""

    at: float  # unix s, just before the restart
    mode: str  # "truncate" (0 bytes, -wal left as the kill left it) | "delete" (every file)
    daemon: int  # how many daemons had been started before the restart (its log is next)
    #: machines the lost journal had curtailed that were asleep (the truth) when it was lost:
    #: curtaild cannot know they are its own, so it must not wake them until adopted
    asleep_owned: set[str] = field(default_factory=set)


@dataclass
class Soak:
    plan: SoakPlan
    tmp: Path
    #: the MQTT broker, if the test runs one: restarted under the daemon, and the road for
    #: demand-response events
    broker: MosquittoProcess | None = None
    log: list[str] = field(default_factory=list)
    operator_slept: dict[str, float] = field(default_factory=dict)  # ip -> when
    #: operator-slept machines no longer the operator's: a power cut woke one whose firmware
    #: does not store sleep, or ``adopt --all`` handed it to curtaild (ip -> when)
    released: dict[str, float] = field(default_factory=dict)
    daemons: list[DaemonProcess] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    #: daemons that exited on their own for a reason other than a broken config at start
    deaths: list[str] = field(default_factory=list)
    losses: list[JournalLoss] = field(default_factory=list)
    #: intents the lost journals held (ip -> [(time, action)]): commands sent before a loss
    #: were journaled in a journal that is gone
    lost_intents: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    #: machines `status --json` listed as of unknown owner (ip -> first listed), and when the
    #: harness adopted each (``adopt --all``) or left it to the operator
    unknown_listed: dict[str, float] = field(default_factory=dict)
    adopted: dict[str, list[float]] = field(default_factory=dict)
    #: powered-off machines and when their power comes back (unix s)
    power_off: dict[str, float] = field(default_factory=dict)
    #: first time each machine was seen with empty pools (ip -> (when, what it held))
    pools_lost: dict[str, tuple[float, str]] = field(default_factory=dict)
    #: secrets found in an output: (secret name, where)
    leaks: list[tuple[str, str]] = field(default_factory=list)

    # ------------------------------------------------------------------ set-up
    def __post_init__(self) -> None:
        self.rng = random.Random(self.plan.seed)
        self.state = self.tmp / "state"
        self.cfg = self.tmp / "config.toml"
        self.market = Market()
        self.notify = NotifyListener(self.tmp / "notify.sock")
        first = plan_count(1, self.plan.first_ip).miners[0].ip
        override_ip = first  # a stock S19 (--count's first model): its own password
        self.secrets = {"antminer": _secret(self.plan.seed, "antminer"),
                        "whatsminer": _secret(self.plan.seed, "whatsminer"),
                        "override": _secret(self.plan.seed, "override"),
                        "mqtt": MQTT_SECRET}
        self.override_ip = override_ip
        self.emu = EmulatorProcess(
            fleet_toml=fleet_toml(self.plan.miners, self.plan.first_ip,
                                  {"antminer": self.secrets["antminer"],
                                   "whatsminer": self.secrets["whatsminer"]},
                                  (override_ip, self.secrets["override"])),
            first_ip=self.plan.first_ip, time_scale=0.01)
        self.ips: list[str] = []
        self.family: dict[str, str] = {}
        self.dr_end = 0.0  # when the last demand-response event ends (unix s)
        self.metrics_url = f"http://{METRICS_HOST}:{free_port(METRICS_HOST)}/metrics"
        self.mqtt_seen: Client | None = None  # every message curtaild publishes
        self.adopt_at: float | None = None  # when the harness next looks for unknown owners
        self.journal_unsafe = False  # lost, and the new daemon has not opened it yet
        #: asleep at the last look, and excused: see stranded_unseen
        self.excused: set[str] = set()

    def _write_secrets(self) -> str:
        """Password files (one line, 0600) and the ``[fleet.credentials]`` naming them."""
        d = self.tmp / "secrets"
        d.mkdir(mode=0o700, exist_ok=True)
        for name in ("antminer", "whatsminer", "override"):
            p = d / name
            p.write_text(self.secrets[name] + "\n")
            p.chmod(0o600)
        return (f'[fleet.credentials.antminer]\npassword_file = "{d / "antminer"}"\n'
                f'[fleet.credentials.whatsminer]\npassword_file = "{d / "whatsminer"}"\n'
                f'[[fleet.credentials.override]]\nmatch = ["{self.override_ip}"]\n'
                f'family = "antminer"\npassword_file = "{d / "override"}"\n')

    def _write_good(self) -> None:
        # The emulator runs at --time-scale 0.01: a stock Antminer's CGI, bmminer restart and
        # board boot take seconds, not minutes. verify_grace_s 8 s scales every family's grace
        # after a command to match (guards.CONFIRM_GRACE_FACTORS: stock Antminer 14 s), so
        # re-sends and lying machines are judged within the run; a flagged machine is tried
        # again after 20 s (flag_retry_s), so one that obeys again converges within the run.
        extra = f"""
[tariff]
kind = "realtime"
url = "{self.market.api.url}/tariff.json"
format = "json"
field = "price"
unit = "usd_per_mwh"
refresh_s = 5
max_age_s = 20
timeout_s = 2
deadline_s = 4

[metrics]
listen = "{self.metrics_url.split('/')[2]}"
""" + self._write_secrets() + (self.broker.mqtt_toml(self.state)
                               if self.broker is not None else "")
        write_config(self.cfg, ranges=[f"{self.ips[0]}-{self.ips[-1]}"], hashprice=0.0,
                     tariff=0.0, state_dir=self.state,
                     poll_interval_s=self.plan.poll_interval_s,
                     guards={"ramp_w_per_min": 200_000.0, "stale_market_after_s": 25.0,
                             "stale_hold_s": 10.0, "min_dwell_s": 4.0},
                     controller={"command_timeout_s": 8.0, "verify_grace_s": 8.0,
                                 "flag_retry_s": 20.0},
                     extra=extra)
        # write_config writes a fixed hash price and a flat tariff: swap both for the fakes.
        text = self.cfg.read_text()
        text = text.replace(
            '[hashprice]\nsource = "fixed"\nusd_per_th_day = 0.0\n',
            f'[hashprice]\nsource = "mempool"\nbase_url = "{self.market.api.url}/api"\n'
            'refresh_s = 10\nmax_age_s = 30\ntimeout_s = 2\ndeadline_s = 4\n')
        text = text.replace('[tariff]\nkind = "flat"\nusd_per_kwh = 0.0\n', "")
        self.cfg.write_text(text)

    def _write_broken(self) -> str:
        """One of the ways an operator breaks a config file; returns which."""
        good = self.cfg.read_text()
        kind = self.rng.choice(["toml", "key", "value", "policy", "empty"])
        if kind == "toml":
            text = good.replace("[guards]", "[guards", 1)
        elif kind == "key":
            text = good.replace("[guards]\n", "[guards]\nhysteresys_usd_per_day = 0.1\n", 1)
        elif kind == "value":
            text = good.replace("[controller]\n", "[controller]\npoll_interval_s = -5\n", 1)
            text = text.replace(f"poll_interval_s = {self.plan.poll_interval_s!r}\n", "", 1)
        elif kind == "policy":
            text = good.replace('name = "margin"', 'name = "margni"', 1)
        else:
            text = ""
        self.cfg.write_text(text)
        return kind

    def start(self) -> Soak:
        self.emu.start()
        miners = self.emu.miners()
        self.ips = [m["ip"] for m in miners]
        self.family = {m["ip"]: m["firmware"] for m in miners}
        self._write_good()
        if self.broker is not None:
            # The read-only test user sees every message curtaild publishes (paho reconnects
            # by itself after a broker restart).
            self.mqtt_seen = Client(self.broker, user="observer").start()
        self._start_daemon()
        return self

    def _start_daemon(self) -> None:
        n = len(self.daemons) + 1
        env = {"NOTIFY_SOCKET": str(self.notify.path),
               "WATCHDOG_USEC": str(int(self.plan.watchdog_s * 1e6))}
        self.notify.mark(f"start {n}")
        self.daemons.append(DaemonProcess(self.cfg, self.tmp / f"daemon{n}.log", env=env).start())

    @property
    def daemon(self) -> DaemonProcess:
        return self.daemons[-1]

    # ----------------------------------------------------------------- outputs
    def scan(self, where: str, text: str) -> None:
        """Record every secret (or a 12-character piece of one) that ``text`` shows."""
        for name, secret in self.secrets.items():
            pieces = {secret[i:i + 12] for i in range(len(secret) - 11)}
            if any(p in text for p in pieces):
                self.leaks.append((name, where))

    def cli(self, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess:
        """``curtaild --config ... ARGS`` as an operator types it; its output is scanned."""
        proc = subprocess.run([sys.executable, "-m", "curtaild.controller.cli", "--config",
                               str(self.cfg), *args], cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)
        self.scan(f"`curtaild {' '.join(args)}` output", proc.stdout + proc.stderr)
        return proc

    def status_file(self) -> dict | None:
        try:
            return json.loads((self.state / "status.json").read_text())
        except (OSError, ValueError):
            return None

    def scrape(self) -> str:
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=10) as resp:
                text = resp.read().decode(errors="replace")
        except OSError:
            return ""
        self.scan("/metrics", text)
        return text

    def _cli_probe(self) -> None:
        """What an operator or a monitoring system reads: status, plan, metrics."""
        self.cli("status", "--json")
        self.cli("plan", "--json", timeout=120)
        self.scrape()
        self.note("cli_probe")

    # ---------------------------------------------------------------- journal
    def _journal(self, sql: str, state: Path | None = None) -> list[tuple]:
        """A query on the journal that never creates it (sqlite3.connect would: a missing
        journal must stay missing until the daemon finds it so)."""
        path = (state or self.state) / "journal.sqlite"
        if not path.exists():
            raise FileNotFoundError(path)
        db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    def _owned_rows(self) -> list[tuple]:
        return self._journal("SELECT ip FROM curtailed")

    def _owned(self) -> set[str]:
        if self.journal_unsafe:
            return set(self.ips)
        try:
            return {r[0] for r in self._owned_rows()}
        except Exception:
            return set(self.ips)  # journal not there yet: treat everything as claimed

    def _keep_journal(self, why: str) -> set[str]:
        """Read a journal about to be lost from a copy (opening the original would check-
        point its write-ahead log, and the loss would not be the one a kill -9 leaves):
        remember its intents, scan every row of it for secrets; the machines it had
        curtailed."""
        with tempfile.TemporaryDirectory(dir=self.tmp) as d:
            copy = Path(d)
            for p in self.state.glob("journal.sqlite*"):
                if not p.name.endswith("-shm"):
                    shutil.copy(p, copy / p.name)
            if not (copy / "journal.sqlite").exists():
                return set()
            db = sqlite3.connect(copy / "journal.sqlite")
            try:
                for ip, ts, action in db.execute(
                        "SELECT ip, ts, action FROM events WHERE kind='intent'"):
                    self.lost_intents.setdefault(ip, []).append((ts, action))
                self.scan(f"journal ({why})", "\n".join(db.iterdump()))
                return {r[0] for r in db.execute("SELECT ip FROM curtailed")}
            except sqlite3.DatabaseError:
                return set()  # an empty or half-written journal: nothing to keep
            finally:
                db.close()

    def _asleep_owned(self) -> set[str]:
        """Machines curtaild owns that are asleep now (reachable, no fault)."""
        owned = self._owned() if not self.journal_unsafe else set()
        return {m["ip"] for m in self.emu.miners()
                if m["ip"] in owned and m["state"] == "sleeping" and m["fault"] == "none"}

    def _journal_loss(self) -> None:
        """kill -9, lose the journal (truncated to 0 bytes or deleted), restart: the daemon
        must report what it cannot know (machines of unknown owner) and wake none of them;
        the harness adopts them a little later, as the operator reading `status` would."""
        self.notify.mark("kill")
        self.daemon.kill9()
        owned = self._keep_journal(f"lost after daemon{len(self.daemons)}")
        asleep = {m["ip"] for m in self.emu.miners()
                  if m["ip"] in owned and m["state"] == "sleeping"}
        mode = self.rng.choice(["truncate", "delete"])
        db = self.state / "journal.sqlite"
        if mode == "truncate":
            db.write_bytes(b"")  # the -wal stays as the kill left it
        else:
            for p in self.state.glob("journal.sqlite*"):
                p.unlink()
        time.sleep(self.rng.uniform(0.2, 2.0))
        self.losses.append(JournalLoss(time.time(), mode, len(self.daemons),
                                       asleep - set(self.operator_slept)))
        self.journal_unsafe = True
        self._start_daemon()
        self.adopt_at = time.time() + self.rng.uniform(8.0, 25.0)
        self.note(f"journal_loss {mode} ({len(asleep)} of its machines asleep)")

    def adopt(self) -> None:
        """The operator's answer to a lost journal: their own machines to them
        (``adopt --operator``), every other one to curtaild (``adopt --all``)."""
        proc = self.cli("status", "--json")
        try:
            unknown = json.loads(proc.stdout).get("unknown_owner") or []
        except ValueError:
            return
        now = time.time()
        listed = [u.get("ip") or u["key"] for u in unknown]
        for ip in listed:
            self.unknown_listed.setdefault(ip, now)
        if not listed:
            return
        mine = [ip for ip in listed if ip in self.operator_slept and ip not in self.released]
        if mine:
            self.cli("adopt", "--operator", *mine)
        proc = self.cli("adopt", "--all")
        handed = []
        for line in proc.stdout.splitlines():
            if line.startswith("adopted: "):
                ip = line.split()[1]
                handed.append(ip)
                self.adopted.setdefault(ip, []).append(time.time())
                # listed after the --operator call above: the operator's own machine is
                # curtaild's now (the operator said "all")
                if ip in self.operator_slept and ip not in self.released:
                    self.released[ip] = time.time()
        self.note(f"adopt {len(handed)} to curtaild, {len(mine)} to the operator "
                  f"(rc {proc.returncode})")

    def _maybe_adopt(self) -> None:
        if self.adopt_at is None or time.time() < self.adopt_at:
            return
        st = self.status_file()
        if st is not None and st.get("unknown_owner"):
            self.adopt()
        self.adopt_at = time.time() + self.rng.uniform(5.0, 15.0)

    # ------------------------------------------------------------------- chaos
    def note(self, text: str) -> None:
        self.log.append(f"{time.monotonic():.1f} {text}")
        key = text.split(" ", 1)[0]
        self.counts[key] = self.counts.get(key, 0) + 1

    def step(self) -> None:
        """One random fault (or repair) from the menu."""
        events = [("miner_fault", 30), ("miner_heal", 20), ("regime", 10), ("market", 12),
                  ("sighup_broken", 8), ("kill9", 5), ("journal_loss", 2), ("power_cut", 4),
                  ("operator_sleep", 4), ("cli_probe", 1)]
        if self.broker is not None:
            events += [("broker_restart", 6), ("dr_event", 6)]
        kind = self.rng.choices([e for e, _ in events], [w for _, w in events])[0]
        getattr(self, f"_{kind}")()

    def _miner_fault(self, fault: str | None = None) -> None:
        fault = fault or self.rng.choice(FAULTS)
        families = FAULT_FAMILIES.get(fault)
        candidates = [ip for ip in self.ips if ip not in self.operator_slept
                      and (families is None or self.family[ip] in families)]
        if not candidates:
            return
        ip = self.rng.choice(candidates)
        kw: dict[str, float | int] = {}
        if fault == "slow":
            kw["delay_s"] = round(self.rng.uniform(0.5, 3.0), 2)
        elif fault == "slow_write":
            kw["delay_s"] = round(self.rng.uniform(1.0, SLOW_WRITE_MAX_S), 2)
        elif fault == "drip":
            kw["delay_s"] = round(self.rng.uniform(0.05, 0.5), 2)
        elif fault == "huge":
            kw["size_bytes"] = self.rng.randrange(2, 64) * 1024 * 1024
        self.emu.set_fault(ip, fault, **kw)
        self.counts[f"fault:{fault}"] = self.counts.get(f"fault:{fault}", 0) + 1
        self.note(f"miner_fault {ip} {fault} {kw or ''}")

    def _miner_heal(self) -> None:
        faulted = [m["ip"] for m in self.emu.miners() if m["fault"] != "none"]
        if faulted:
            ip = self.rng.choice(faulted)
            self.emu.set_fault(ip, "none")
            self.note(f"miner_heal {ip}")

    def _power_cut(self) -> None:
        """Mains power off for some machines (now and then the whole site) for a few
        seconds; each boots into what its firmware stored when it comes back."""
        on = [ip for ip in self.ips if ip not in self.power_off]
        if not on:
            return
        if self.rng.random() < 0.15:
            cut = on
        else:
            cut = self.rng.sample(on, self.rng.randint(1, max(1, len(self.ips) // 5)))
        back = time.time() + self.rng.uniform(2.0, 12.0)
        for ip in cut:
            self.emu.power(ip, False)
            self.power_off[ip] = back
        self.note(f"power_cut {len(cut)} machines for {back - time.time():.0f}s")

    def _restore_power(self, every: bool = False) -> None:
        now = time.time()
        for ip, when in sorted(self.power_off.items()):
            if every or now >= when:
                self.emu.power(ip, True)
                del self.power_off[ip]
                # An operator's sleep survives only where the firmware stores it.
                if ip in self.operator_slept and ip not in self.released \
                        and self.family[ip] not in SLEEP_STORED:
                    self.released[ip] = now
                self.note(f"power_restore {ip}")

    def _regime(self) -> None:
        dear = self.market.tariff_usd_per_mwh == CHEAP_USD_PER_MWH
        self.market.tariff_usd_per_mwh = DEAR_USD_PER_MWH if dear else CHEAP_USD_PER_MWH
        self.note(f"regime {'dear' if dear else 'cheap'}")

    def _market(self) -> None:
        which = self.rng.choice(["hashprice", "tariff"])
        mode = self.rng.choice(["error", "hang", "garbage", "stale"])
        # "stale": a long outage, past max_age and the guards' stale_market_after_s.
        seconds = 45.0 if mode == "stale" else self.rng.uniform(5.0, 20.0)
        self.market.break_for(which, "error" if mode == "stale" else mode, seconds)
        self.note(f"market {which} {mode} {seconds:.0f}s")

    def _sighup_broken(self) -> None:
        good = self.cfg.read_text()
        kind = self._write_broken()
        self.daemon.proc.send_signal(1)  # type: ignore[union-attr]
        time.sleep(1.0)
        self.cfg.write_text(good)
        self.note(f"sighup_broken {kind}")

    def _kill9(self) -> None:
        self.notify.mark("kill")
        self.daemon.kill9()
        time.sleep(self.rng.uniform(0.2, 2.0))
        self._start_daemon()
        self.note("kill9")

    def _operator_sleep(self) -> None:
        if len(self.operator_slept) >= max(1, len(self.ips) // 10):
            return
        owned = self._owned()
        states = {m["ip"]: m for m in self.emu.miners()}
        candidates = [ip for ip, m in states.items()
                      if m["state"] == "mining" and m["fault"] == "none" and ip not in owned
                      and ip not in self.operator_slept and ip not in self.power_off]
        if candidates:
            ip = self.rng.choice(candidates)
            self.emu.action(ip, "sleep")
            self.operator_slept[ip] = time.time()
            self.note(f"operator_sleep {ip}")

    def _broker_restart(self) -> None:
        assert self.broker is not None
        self.broker.stop()
        time.sleep(self.rng.uniform(0.5, 4.0))
        self.broker.start()
        self.note("broker_restart")

    def _dr_event(self) -> None:
        """A demand-response event: shed to a fraction of the fleet's power for a while."""
        assert self.broker is not None
        full_w = sum(m["nameplate_power_w"] for m in self.emu.miners())
        n = self.counts.get("dr_event", 0) + 1
        start = time.time()
        end = start + self.rng.uniform(5.0, 20.0)
        payload = {"id": f"soak-{self.plan.seed}-{n}",
                   "target_power_w": round(full_w * self.rng.uniform(0.3, 0.8)),
                   "start": _iso(start), "end": _iso(end)}
        try:
            with Client(self.broker) as ems:
                ems.publish(f"{PREFIX}/cmd/curtail", json.dumps(payload))
        except (OSError, AssertionError):
            return  # the broker is down right now: an EMS would retry, so do we, later
        self.dr_end = max(self.dr_end, end)
        self.note(f"dr_event {payload['target_power_w']} W for {end - start:.0f}s")

    def warm_up(self, timeout_s: float = 90.0) -> None:
        """Make the fleet dear on healthy inputs and wait for the daemon's first curtailment.

        Chaos on a daemon that has never commanded anything proves little: a random schedule
        can keep the market stale for the whole run (each "stale" outage lasts 45 s), and then
        no intent is ever journaled. Starting from a curtailed fleet makes every seed exercise
        restores, re-sheds and wakes under faults (and gives a lost journal machines whose
        owner it forgot).
        """
        self.market.tariff_usd_per_mwh = DEAR_USD_PER_MWH
        self.note("regime dear (warm-up)")

        def curtailed() -> int:
            try:
                return len(self._owned_rows())
            except Exception:
                return 0
        wait_for(curtailed, timeout_s, interval=1.0,
                 what="the daemon's first curtailment on a dear, healthy market")

    def _watch(self) -> None:
        """Each round: restore power that is due, adopt when due, record empty pools, and
        scan the status file; notice when the daemon after a journal loss has ticked."""
        self._restore_power()
        self._maybe_adopt()
        now = time.time()
        for m in self.emu.miners():
            if m.get("pools_ok") is False and m["ip"] not in self.pools_lost:
                self.pools_lost[m["ip"]] = (now, f"pools {m.get('pools')!r}, fault "
                                                 f"{m['fault']}, changes {m['changes'][-4:]}")
        st = self.status_file()
        if st is not None:
            self.scan("status.json", json.dumps(st))
            if self.journal_unsafe and self.losses and st.get("at", 0) > self.losses[-1].at:
                self.journal_unsafe = False

    def run_chaos(self) -> None:
        start = time.monotonic()
        deadline = start + self.plan.chaos_s
        while time.monotonic() < deadline:
            elapsed = (time.monotonic() - start) / self.plan.chaos_s
            due = [kind for at, kind in MUST_HAPPEN
                   if self.counts.get(kind, 0) == 0 and elapsed >= at
                   and (kind not in BROKER_EVENTS or self.broker is not None)]
            if "journal_loss" in due and elapsed < 0.7 and not self._asleep_owned():
                # A lost journal proves most when curtaild had machines asleep: make it
                # dear and wait for one (past 0.7 of the run, lose it whatever it holds).
                due.remove("journal_loss")
                if self.market.tariff_usd_per_mwh == CHEAP_USD_PER_MWH:
                    self._regime()
            if due and due[0].startswith("fault:"):
                self._miner_fault(due[0].split(":", 1)[1])
            elif due:
                getattr(self, f"_{due[0]}")()
            else:
                self.step()
            self._check_alive()
            self._watch()
            time.sleep(self.rng.uniform(0.5, 2.5))

    def _check_alive(self) -> None:
        """Restart a daemon that exited on its own, as systemd's Restart=on-failure would.

        The one death that is expected: a daemon (re)started while a broken config file is
        in place (``_sighup_broken`` can land during a restart's start-up) refuses to start,
        with exit status 2 and the config error in its log. Any other exit is recorded and
        reported as a violation.
        """
        if self.daemon.alive():
            return
        d = self.daemon
        rc = d.proc.wait() if d.proc is not None else None
        tail = d.log().strip().splitlines()[-3:]
        if rc == 2 and any("refusing to start, invalid configuration" in x for x in tail):
            self.note(f"daemon_refused_config rc={rc}")
        else:
            self.note(f"daemon_died rc={rc}")
            self.deaths.append(f"{d.log_path.name} exited rc={rc}: " + " | ".join(tail)[-300:])
        self._start_daemon()

    # -------------------------------------------------------------- converge
    def heal_all(self) -> None:
        """Take every fault away, make every machine profitable, let every event end, give
        every machine its power back."""
        if self.broker is not None and (self.broker.proc is None
                                        or self.broker.proc.poll() is not None):
            self.broker.start()
        time.sleep(max(0.0, self.dr_end - time.time()))
        self.market.heal()
        self.market.tariff_usd_per_mwh = CHEAP_USD_PER_MWH
        for m in self.emu.miners():
            if m["fault"] != "none":
                self.emu.set_fault(m["ip"], "none")
        self._restore_power(every=True)
        self._check_alive()

    def converge(self, timeout_s: float) -> bool:
        """Wait until every machine is where it should be, adopting machines of unknown owner
        as the operator would when `status` lists them. False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            st = self.status_file()
            if st is not None and st.get("unknown_owner"):
                self.adopt()
            if not self.wrong_states():
                return True
            time.sleep(1.0)
        return False

    def expected(self, ip: str) -> str:
        return "sleeping" if ip in self.operator_slept and ip not in self.released \
            else "mining"

    def stranded_unseen(self) -> set[str]:
        """Machines a lost journal's review could not judge: the review ended (every machine
        curtaild had discovered seen, none of unknown owner left) before this one was first
        seen -- it was unreachable or powered off then -- so when it turns up asleep curtaild
        takes it for the operator's, as README ("A lost journal") documents. Only machines
        curtaild had curtailed in a lost journal qualify."""
        if not self.losses:
            return set()
        try:
            done = self._journal("SELECT MAX(ts) FROM events WHERE kind='review_done'")[0][0]
            sighted = {r[0] for r in self._journal("SELECT miner FROM sightings")}
        except Exception:
            return set()
        if done is None:
            return set()
        st = self.status_file() or {}
        key = {m["ip"]: m["key"] for m in st.get("miners", [])}
        owned = self._owned()
        return {ip for ip in self.lost_intents
                if ip not in self.unknown_listed and ip not in owned
                and key.get(ip) not in sighted}

    def wrong_states(self) -> dict[str, str]:
        states = {m["ip"]: m["state"] for m in self.emu.miners()}
        excused = self.stranded_unseen()
        self.excused = {ip for ip in excused if states.get(ip) == "sleeping"}
        return {ip: s for ip, s in states.items()
                if s != self.expected(ip) and ip not in self.excused}

    def final_scan(self) -> None:
        """Every output an operator, a dashboard or an EMS sees, once more at the end."""
        self._cli_probe()
        st = self.status_file()
        if st is not None:
            self.scan("status.json", json.dumps(st))
        for d in self.daemons:
            self.scan(d.log_path.name, d.log())
        if self.mqtt_seen is not None:
            with self.mqtt_seen.lock:
                messages = list(self.mqtt_seen.messages)
            self.scan("MQTT messages", "\n".join(f"{t} {p.decode(errors='replace')}"
                                                 for t, p, _r in messages))
            self.counts["mqtt_messages"] = len(messages)
        try:
            db = sqlite3.connect(f"file:{self.state / 'journal.sqlite'}?mode=ro", uri=True)
            try:
                self.scan("journal", "\n".join(db.iterdump()))
            finally:
                db.close()
        except sqlite3.Error:
            pass

    def stop(self) -> int:
        rc = self.daemon.stop(timeout=60)
        return rc

    def close(self) -> None:
        for d in self.daemons:
            if d.alive():
                d.kill9()
        if self.mqtt_seen is not None:
            self.mqtt_seen.stop()
        self.emu.stop()
        self.market.close()
        self.notify.close()

    # ------------------------------------------------------------- invariants
    def violations(self) -> list[str]:
        """Every broken invariant, one line each (empty: the soak passed)."""
        out: list[str] = []
        miners = {m["ip"]: m for m in self.emu.miners()}
        seen = {m["ip"]: m for m in (self.status_file() or {}).get("miners", [])}
        for ip, s in sorted(self.wrong_states().items()):
            why = ("sleeping (operator)" if self.expected(ip) == "sleeping" else
                   "mining (adopted after a lost journal)" if ip in self.adopted else "mining")
            view = seen.get(ip, {})  # what curtaild made of it, for the report
            out.append(f"{ip}: {s} at the end, expected {why}; curtaild: state "
                       f"{view.get('state')}, command_state {view.get('command_state')}, "
                       f"held {view.get('held')!r}")
        intents = self.intents()
        end = time.time()
        for ip, m in sorted(miners.items()):
            for when, action, actor in m.get("changes", []):
                if actor != "client":
                    continue
                if ip in self.operator_slept and \
                        self.operator_slept[ip] < when < self.released.get(ip, end) and \
                        action in ("wake", "reboot", "limit"):
                    out.append(f"{ip}: operator-slept machine got a client {action} at {when:.1f}")
                if not any(when - INTENT_WINDOW_S <= t <= when + 0.5
                           for t, _a in intents.get(ip, [])):
                    out.append(f"{ip}: client {action} at {when:.1f} without a journaled intent")
                if action == "wake":
                    out.extend(self._woken_unadopted(ip, when, intents.get(ip, [])))
        for ip, m in sorted(miners.items()):
            if m.get("pools_ok") is False or ip in self.pools_lost:
                when, what = self.pools_lost.get(ip, (end, f"pools {m.get('pools')!r}"))
                out.append(f"{ip}: empty pools (first seen {when:.1f}): {what}")
        for loss in self.losses:
            later = self.daemons[loss.daemon:]
            if not any("ERROR curtaild: journal lost: " in d.log() for d in later):
                out.append(f"journal {loss.mode} at {loss.at:.1f}: no daemon after it logged "
                           "'journal lost'")
        for name, where in sorted(set(self.leaks)):
            out.append(f"secret {name!r} appears in {where}")
        for d in self.daemons:
            text = d.log()
            for marker in ("Traceback", "exception was never retrieved", "tick failed"):
                if marker in text:
                    line = next(x for x in text.splitlines() if marker in x)
                    out.append(f"{d.log_path.name}: {marker}: {line[:200]}")
        out.extend(f"daemon died on its own: {d}" for d in self.deaths)
        gap = self.notify.max_watchdog_gap_s()
        if gap > self.plan.watchdog_s:
            out.append(f"watchdog starved: {gap:.1f} s between pings > {self.plan.watchdog_s} s")
        return out

    def intents(self) -> dict[str, list[tuple[float, str]]]:
        """Every journaled intent, the lost journals' included: ip -> [(time, action)]."""
        out = {ip: list(rows) for ip, rows in self.lost_intents.items()}
        for ip, ts, action in journal_rows(
                self.state, "SELECT ip, ts, action FROM events WHERE kind='intent'"):
            out.setdefault(ip, []).append((ts, action))
        return out

    def _woken_unadopted(self, ip: str, when: float,
                         intents: list[tuple[float, str]]) -> list[str]:
        """A client wake after a journal loss on a machine curtaild could not know it owned
        -- one the lost journal had asleep, or one `status` listed as of unknown owner --
        before the harness adopted it, and before curtaild curtailed it anew (a machine that
        came back running after a power cut may be slept and woken again)."""
        out = []
        for i, loss in enumerate(self.losses):
            listed = self.unknown_listed.get(ip)
            unknown = ip in loss.asleep_owned or (
                listed is not None and loss.at <= listed
                and all(x.at > listed for x in self.losses[i + 1:]))
            if not unknown or when <= loss.at:
                continue
            ends = [t for t in self.adopted.get(ip, []) if t > loss.at]
            ends += [t for t, a in intents if t > loss.at and a != "run"]
            ends += [x.at for x in self.losses[i + 1:]]
            if when < min(ends, default=float("inf")):
                out.append(f"{ip}: asleep and of unknown owner after the journal {loss.mode} "
                           f"at {loss.at:.1f}, woken by curtaild at {when:.1f} before it was "
                           "adopted")
        return out

    def summary(self) -> dict:
        return {"seed": self.plan.seed, "miners": len(self.ips),
                "events": dict(sorted(self.counts.items())),
                "daemons": len(self.daemons), "operator_slept": sorted(self.operator_slept),
                "released": sorted(self.released),
                "journal_losses": [f"{x.mode} before daemon{x.daemon + 1}: "
                                   f"{len(x.asleep_owned)} of its machines asleep"
                                   for x in self.losses],
                "asleep_at_losses": sum(len(x.asleep_owned) for x in self.losses),
                "unknown_owner_listed": sorted(self.unknown_listed),
                "adopted": sorted(self.adopted),
                "stranded_unseen": sorted(self.excused),
                "max_watchdog_gap_s": round(self.notify.max_watchdog_gap_s(), 2),
                "intents": sum(len(v) for v in self.intents().values())}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def dump(soak: Soak, path: Path, problems: list[str]) -> None:
    path.write_text(json.dumps({"summary": soak.summary(), "problems": problems,
                                "log": soak.log}, indent=1))
