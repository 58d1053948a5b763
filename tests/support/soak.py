"""The soak harness: a running `curtaild run` against an emulated fleet while faults rain down.

Everything is real and on loopback: the emulator (its faults come from its socket layer), the
market APIs (tests/drivers/fakeapi.py: real HTTP, mempool.space shapes and a real-time tariff
feed that can fail, hang, serve garbage or go stale), the daemon process (SIGHUP with broken
configs, kill -9, restart), an sd_notify datagram socket (the daemon's watchdog pings are
timed) and, when the test gives one, a mosquitto broker that is restarted under it.

The harness records; invariants are judged against the emulator's truth at the end
(:meth:`Soak.violations`): no machine left asleep that should run, none woken that an operator
slept, every command a miner received journaled before it arrived, no unhandled exception in
any daemon's log, and the watchdog never starved.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tests.drivers.fakeapi import FakeApi, Reply, js, mempool_routes
from tests.support.daemon import DaemonProcess, journal_rows, wait_for, write_config
from tests.support.emulator import EmulatorProcess
from tests.support.mosquitto import PREFIX, Client, MosquittoProcess

#: Real-time tariff feed prices, USD/MWh. With the mempool fake's 0.0634 USD/TH/day and a 2 %
#: pool fee, breakeven is 86 J/TH at 30 and 27 J/TH at 95: every machine earns when "cheap";
#: the S19, S19j Pro and M30S lose when "dear".
CHEAP_USD_PER_MWH = 30.0
DEAR_USD_PER_MWH = 95.0
FAULTS = ("hang", "refuse", "garbage", "slow", "ignore_sleep")
#: How long (s) before a client-side change its journaled intent may be: the command deadline
#: plus the retries' backoff, generously.
INTENT_WINDOW_S = 60.0
#: Faults every run must inject whatever the seed, and by when (fraction of the chaos time):
#: if the random schedule has not drawn one by then, it is injected next.
MUST_HAPPEN = ((0.25, "dr_event"), (0.35, "kill9"), (0.45, "sighup_broken"),
               (0.55, "broker_restart"), (0.65, "market"), (0.75, "operator_sleep"))
BROKER_EVENTS = {"dr_event", "broker_restart"}


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
class Soak:
    plan: SoakPlan
    tmp: Path
    #: the MQTT broker, if the test runs one: restarted under the daemon, and the road for
    #: demand-response events
    broker: MosquittoProcess | None = None
    log: list[str] = field(default_factory=list)
    operator_slept: dict[str, float] = field(default_factory=dict)  # ip -> when
    daemons: list[DaemonProcess] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    #: daemons that exited on their own for a reason other than a broken config at start
    deaths: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ set-up
    def __post_init__(self) -> None:
        self.rng = random.Random(self.plan.seed)
        self.state = self.tmp / "state"
        self.cfg = self.tmp / "config.toml"
        self.market = Market()
        self.notify = NotifyListener(self.tmp / "notify.sock")
        self.emu = EmulatorProcess(count=self.plan.miners, first_ip=self.plan.first_ip,
                                   time_scale=0.01)
        self.ips: list[str] = []
        self.dr_end = 0.0  # when the last demand-response event ends (unix s)

    def _write_good(self) -> None:
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
""" + (self.broker.mqtt_toml(self.state) if self.broker is not None else "")
        write_config(self.cfg, ranges=[f"{self.ips[0]}-{self.ips[-1]}"], hashprice=0.0,
                     tariff=0.0, state_dir=self.state,
                     poll_interval_s=self.plan.poll_interval_s,
                     guards={"ramp_w_per_min": 200_000.0, "stale_market_after_s": 25.0,
                             "stale_hold_s": 10.0, "min_dwell_s": 4.0},
                     controller={"command_timeout_s": 8.0, "verify_grace_s": 8.0},
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
        self.ips = [m["ip"] for m in self.emu.miners()]
        self._write_good()
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

    # ------------------------------------------------------------------- chaos
    def note(self, text: str) -> None:
        self.log.append(f"{time.monotonic():.1f} {text}")
        key = text.split(" ", 1)[0]
        self.counts[key] = self.counts.get(key, 0) + 1

    def _owned_rows(self) -> list[tuple]:
        return journal_rows(self.state, "SELECT ip FROM curtailed")

    def _owned(self) -> set[str]:
        try:
            return {r[0] for r in self._owned_rows()}
        except Exception:
            return set(self.ips)  # journal not there yet: treat everything as claimed

    def step(self) -> None:
        """One random fault (or repair) from the menu."""
        events = [("miner_fault", 30), ("miner_heal", 20), ("regime", 10), ("market", 12),
                  ("sighup_broken", 8), ("kill9", 6), ("operator_sleep", 4)]
        if self.broker is not None:
            events += [("broker_restart", 6), ("dr_event", 6)]
        kind = self.rng.choices([e for e, _ in events], [w for _, w in events])[0]
        getattr(self, f"_{kind}")()

    def _miner_fault(self) -> None:
        candidates = [ip for ip in self.ips if ip not in self.operator_slept]
        ip = self.rng.choice(candidates)
        fault = self.rng.choice(FAULTS)
        kw = {"delay_s": self.rng.uniform(0.5, 3.0)} if fault == "slow" else {}
        self.emu.set_fault(ip, fault, **kw)
        self.note(f"miner_fault {ip} {fault}")

    def _miner_heal(self) -> None:
        faulted = [m["ip"] for m in self.emu.miners() if m["fault"] != "none"]
        if faulted:
            ip = self.rng.choice(faulted)
            self.emu.set_fault(ip, "none")
            self.note(f"miner_heal {ip}")

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
                      and ip not in self.operator_slept]
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
        restores, re-sheds and wakes under faults.
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

    def run_chaos(self) -> None:
        start = time.monotonic()
        deadline = start + self.plan.chaos_s
        while time.monotonic() < deadline:
            due = [kind for at, kind in MUST_HAPPEN
                   if self.counts.get(kind, 0) == 0
                   and time.monotonic() - start >= at * self.plan.chaos_s
                   and (kind not in BROKER_EVENTS or self.broker is not None)]
            if due:
                getattr(self, f"_{due[0]}")()
            else:
                self.step()
            self._check_alive()
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
        """Take every fault away, make every machine profitable, let every event end."""
        if self.broker is not None and (self.broker.proc is None
                                        or self.broker.proc.poll() is not None):
            self.broker.start()
        time.sleep(max(0.0, self.dr_end - time.time()))
        self.market.heal()
        self.market.tariff_usd_per_mwh = CHEAP_USD_PER_MWH
        for m in self.emu.miners():
            if m["fault"] != "none":
                self.emu.set_fault(m["ip"], "none")
        self._check_alive()

    def converged(self) -> dict[str, str] | None:
        states = {m["ip"]: m["state"] for m in self.emu.miners()}
        want = {ip: ("sleeping" if ip in self.operator_slept else "mining") for ip in states}
        wrong = {ip: s for ip, s in states.items() if s != want[ip]}
        return None if wrong else states

    def wrong_states(self) -> dict[str, str]:
        states = {m["ip"]: m["state"] for m in self.emu.miners()}
        return {ip: s for ip, s in states.items()
                if s != ("sleeping" if ip in self.operator_slept else "mining")}

    def stop(self) -> int:
        rc = self.daemon.stop(timeout=60)
        return rc

    def close(self) -> None:
        for d in self.daemons:
            if d.alive():
                d.kill9()
        self.emu.stop()
        self.market.close()
        self.notify.close()

    # ------------------------------------------------------------- invariants
    def violations(self) -> list[str]:
        """Every broken invariant, one line each (empty: the soak passed)."""
        out: list[str] = []
        miners = {m["ip"]: m for m in self.emu.miners()}
        wrong = self.wrong_states()
        for ip, s in sorted(wrong.items()):
            out.append(f"{ip}: {s} at the end, expected "
                       f"{'sleeping (operator)' if ip in self.operator_slept else 'mining'}")
        intents: dict[str, list[float]] = {}
        for ip, ts in journal_rows(self.state,
                                   "SELECT ip, ts FROM events WHERE kind='intent'"):
            intents.setdefault(ip, []).append(ts)
        for ip, m in sorted(miners.items()):
            for when, action, actor in m.get("changes", []):
                if actor != "client":
                    continue
                if ip in self.operator_slept and when > self.operator_slept[ip] and \
                        action in ("wake", "reboot", "limit"):
                    out.append(f"{ip}: operator-slept machine got a client {action} at {when:.1f}")
                if not any(when - INTENT_WINDOW_S <= t <= when + 0.5 for t in intents.get(ip, [])):
                    out.append(f"{ip}: client {action} at {when:.1f} without a journaled intent")
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

    def summary(self) -> dict:
        return {"seed": self.plan.seed, "miners": len(self.ips),
                "events": dict(sorted(self.counts.items())),
                "daemons": len(self.daemons), "operator_slept": sorted(self.operator_slept),
                "max_watchdog_gap_s": round(self.notify.max_watchdog_gap_s(), 2),
                "intents": journal_rows(self.state,
                                        "SELECT COUNT(*) FROM events WHERE kind='intent'")[0][0]}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def dump(soak: Soak, path: Path, problems: list[str]) -> None:
    path.write_text(json.dumps({"summary": soak.summary(), "problems": problems,
                                "log": soak.log}, indent=1))

