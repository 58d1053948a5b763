"""Configuration: TOML parsed by tomllib into strict pydantic models.

Strict (``extra="forbid"``) so that a typo is an error naming the key, never a silently
ignored setting; every problem is reported as ``key.path: reason`` so ``curtaild check`` can
print one line per problem. Policy parameters are validated by the policy's own model.
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from curtaild.controller.cluster_config import ClusterConfig
from curtaild.controller.guards import GuardConfig
from curtaild.controller.mqtt_config import MqttConfig
from curtaild.controller.site_config import (
    HardPowerConfig,
    InventoryConfig,
    MeterConfig,
    PduConfig,
    check_site,
)
from curtaild.core.bounds import at_most, finite_message
from curtaild.core.errors import ConfigError
from curtaild.drivers.hashprice_config import HashpriceConfig
from curtaild.drivers.miners_config import (
    FleetConfig,
)
from curtaild.drivers.tariff_config import TariffConfig

#: A config file larger than this is refused before it is read: a site's file is a few KB (a
#: 100,000-address fleet in ``hosts`` is about 2 MB); reading an arbitrary file whole could
#: take the daemon's memory on a reload.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
#: Arrays and tables nested deeper than this are refused. curtaild's deepest key is five levels
#: (``policy.power_cap.schedule[0].days[0]``); a pathological file nested thousands deep would
#: otherwise reach code that recurses (the parser, validation, comparisons on reload).
MAX_NESTING = 64

_KEYED = re.compile(r"^[A-Za-z_][\w.\[\]-]*: ")


def as_config_error(exc: BaseException, where: str) -> ConfigError:
    """Any exception met while loading, validating or building from a config, as a
    ConfigError: every load failure is a configuration problem (exit 2 at start, a rejected
    reload), never a crash, whatever raised it (a parser recursing, a plug-in policy, a source
    constructor). A message that already names its key (``key: reason``) is kept as it is;
    anything else is prefixed with ``where`` (the file) and the exception's type."""
    if isinstance(exc, ConfigError):
        return exc
    problems = getattr(exc, "problems", None)  # PolicyError and friends: already key: reason
    if isinstance(problems, list) and problems and all(isinstance(p, str) for p in problems):
        return ConfigError(list(problems))
    if isinstance(exc, RecursionError):
        return ConfigError([f"{where}: nested too deeply to process (arrays or tables inside "
                            f"each other; at most {MAX_NESTING} levels)"])
    if isinstance(exc, MemoryError):
        return ConfigError([f"{where}: too large to process (out of memory)"])
    text = " ".join(str(exc).split())[:300]
    if _KEYED.match(text):
        return ConfigError([text])
    return ConfigError([f"{where}: {type(exc).__name__}" + (f": {text}" if text else "")])


@contextlib.contextmanager
def config_errors(where: str) -> Iterator[None]:
    """``with config_errors(path):`` turns whatever the block raises into a ConfigError
    (see :func:`as_config_error`); KeyboardInterrupt/SystemExit pass through."""
    try:
        yield
    except Exception as exc:
        raise as_config_error(exc, where) from exc


def _nesting(data: object) -> int:
    """Depth of nested lists/dicts, counted without recursion (the input may be deep)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(data, 0)]
    while stack:
        node, depth = stack.pop()
        children: Iterable[object]
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if depth > MAX_NESTING:
            return depth
        stack.extend((c, depth) for c in children)
    return deepest


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ControllerConfig(_Strict):
    dry_run: bool = False
    state_dir: str = Field(
        default_factory=lambda: os.environ.get("STATE_DIRECTORY", "state"),
        description="journal directory; systemd's StateDirectory= sets $STATE_DIRECTORY",
    )
    poll_interval_s: Annotated[float, at_most(
        3600, "prices, demand windows and hot machines are acted on once per tick at most")] \
        = Field(30.0, ge=1)
    command_timeout_s: Annotated[float, at_most(
        600, "a miner that never acknowledges a command holds a command slot and the tick "
        "this long")] = Field(20.0, gt=0, description="overall deadline per command")
    command_attempts: Annotated[int, at_most(
        10, "every try can take command_timeout_s; the tick waits for them all", unit="")] \
        = Field(3, ge=1, description="tries per command (tenacity)")
    command_concurrency: Annotated[int, at_most(
        20000, "each command in flight holds a connection (an open file), like "
        "fleet.poll_concurrency", unit="")] = Field(50, ge=1)
    verify_grace_s: Annotated[float, at_most(
        86400, "a machine that has not reached its commanded state within a day is not "
        "booting; it would never be re-commanded or flagged")] = Field(
        240.0, ge=0, description="time a machine gets to reach a commanded state (boot)"
    )
    flag_after_failures: Annotated[int, at_most(
        1000, "a miner that ignores commands would be re-commanded this many times before "
        "it is flagged", unit="")] = Field(
        3, ge=1, description="re-commands before a miner is flagged")
    flag_retry_s: Annotated[float, at_most(
        7 * 86400, "a flagged machine is tried again at least once a week: firmware that "
        "ignored a command may obey after a fix or a reboot, and a machine left asleep "
        "for good is a site that does not mine")] = Field(
        1800.0, ge=0, description="a flagged machine is commanded again this long after its "
        "last try (one command, then flagged again if it still does not obey; 0: never, "
        "the flag then clears only when the machine is seen in the expected state)")


class MetricsConfig(_Strict):
    """``[metrics]``: the Prometheus exporter (off unless ``listen`` is set)."""

    listen: str | None = Field(
        None, description="HOST:PORT to serve /metrics on, e.g. '127.0.0.1:9464'; unset: off"
    )
    # Whoever reaches the port must not reach the fleet's descriptors (issue 15): the server
    # holds at most this many sockets, and a request is due within request_timeout_s.
    max_connections: Annotated[int, at_most(
        1024, "each scrape connection holds an open file the fleet's polls need; Prometheus "
        "uses one or two", unit="")] = Field(
        32, ge=1, description="scrape connections open at once; past it the oldest one still "
        "sending its request is closed, or the newcomer gets 503")
    request_timeout_s: Annotated[float, at_most(
        60, "a client that has not sent its request by then is idle or hostile; a scraper "
        "sends it at once")] = Field(
        5.0, gt=0, description="time a connection has to send its whole request")

    @field_validator("listen")
    @classmethod
    def _listen_is_host_port(cls, v: str | None) -> str | None:
        if v is not None:
            from curtaild.controller.listen import parse_listen

            parse_listen(v)
        return v


class SiteConfig(_Strict):
    """``[site]``: site facts that enter the exported economics, not the run/sleep decision."""

    fixed_costs_usd_per_day: float | None = Field(
        None, ge=0, description="hosting, depreciation, staff, debt...: for all-in cost per BTC"
    )
    power_cap_w: float | None = Field(
        None, gt=0, description="contracted/feeder site power cap, exported for alerting"
    )


class Config(_Strict):
    fleet: FleetConfig
    hashprice: HashpriceConfig
    tariff: TariffConfig
    policy: dict[str, Any]
    guards: GuardConfig = Field(default_factory=GuardConfig)
    controller: ControllerConfig = Field(default_factory=ControllerConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    site: SiteConfig = Field(default_factory=SiteConfig)
    mqtt: MqttConfig | None = None  # absent section: the MQTT bridge is off
    cluster: ClusterConfig | None = None  # absent section: one instance, no etcd (issue 19)
    # the site's power equipment (controller/site_config.py, issue 18); all optional
    inventory: InventoryConfig = Field(default_factory=InventoryConfig)
    pdu: list[PduConfig] = Field(default_factory=list)
    meter: MeterConfig | None = None
    hard_power: HardPowerConfig = Field(default_factory=HardPowerConfig)
    source_path: str | None = None


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


#: sections that are tagged unions: pydantic puts the tag in the error location; drop it
#: (also for nested unions in those sections, e.g. hashprice.fallbacks[0], tariff.fallback).
_TAGS = {"hashprice": "source", "tariff": "kind"}


def _drop_tags(loc: tuple, data: dict[str, Any]) -> tuple:
    if not loc or loc[0] not in _TAGS:
        return loc
    tag = _TAGS[loc[0]]
    out: list = [loc[0]]
    node: Any = data.get(loc[0])
    for part in loc[1:]:
        if isinstance(node, dict) and part == node.get(tag) and part not in node:
            continue  # the union's tag, not a key
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(out)


def _problems(exc: ValidationError, data: dict[str, Any]) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = _drop_tags(tuple(err["loc"]), data)
        msg = finite_message(err["type"], err["msg"].removeprefix("Value error, "))
        lines.append(f"{_loc(loc)}: {msg}")
    return lines


def parse_config(data: dict[str, Any], source_path: str | None = None) -> Config:
    """Validate a parsed TOML document; raises ConfigError listing every problem."""
    from curtaild.policies.base import PolicyError
    from curtaild.policies.compose import build_policy_stack

    problems: list[str] = []
    config: Config | None = None
    where = source_path or "config"
    try:
        # relative secret files resolve beside the config file (drivers/secret.py)
        config_dir = os.path.dirname(os.path.abspath(source_path)) if source_path else None
        config = Config.model_validate({**data, "source_path": source_path},
                                       context={"config_dir": config_dir})
    except ValidationError as exc:
        problems.extend(_problems(exc, data))
    except Exception as exc:  # a validator that raised something pydantic does not wrap
        problems.extend(as_config_error(exc, where).problems)
    policy = data.get("policy")
    if isinstance(policy, dict):
        try:  # the base and its layers, each validated by its own model
            build_policy_stack(policy)
        except PolicyError as exc:
            problems.extend(exc.problems)
        except Exception as exc:  # a plug-in policy's constructor, say
            problems.extend(as_config_error(exc, "policy").problems)
    if config is not None:  # the site map against the PDUs and [hard_power] (whole-file checks)
        try:
            check_site(config.pdu, config.inventory, config.hard_power)
        except ValueError as exc:
            problems.extend(str(exc).splitlines())
    if problems or config is None:
        raise ConfigError(problems or ["config: invalid"])
    return _with_absolute_state_dir(config)


def resolve_state_dir(state_dir: str, config_path: str | None) -> str:
    """A relative ``controller.state_dir`` resolves against ``$STATE_DIRECTORY`` when systemd
    sets it, else against the directory of the config file -- never against the current
    directory: a daemon started from elsewhere would open a new, empty journal and take every
    machine it had slept for an operator's (README, "A lost journal")."""
    if Path(state_dir).is_absolute():
        return state_dir
    env = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if env and Path(env).is_absolute():
        base = Path(env)
    elif config_path:
        base = Path(os.path.abspath(config_path)).parent
    else:
        return state_dir  # parsed without a file (tests): as given
    return os.path.normpath(base / state_dir)


def _with_absolute_state_dir(config: Config) -> Config:
    resolved = resolve_state_dir(config.controller.state_dir, config.source_path)
    if resolved == config.controller.state_dir:
        return config
    return config.model_copy(update={"controller": config.controller.model_copy(
        update={"state_dir": resolved})})


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML file.

    Raises ConfigError, and nothing else, for anything wrong with the file: unreadable (a
    directory, no permission), too large, not UTF-8, not TOML, nested too deeply, invalid.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{p}: larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB; "
                           "not a curtaild configuration"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{p}: not UTF-8 text (byte {exc.start}): save it as UTF-8"]) \
            from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{p}: not valid TOML: {exc}"]) from None
    except Exception as exc:  # RecursionError on deeply nested arrays, and anything else
        raise as_config_error(exc, f"{p}: not valid TOML") from None
    depth = _nesting(data)
    if depth > MAX_NESTING:
        raise ConfigError([f"{p}: arrays or tables nested more than {MAX_NESTING} levels "
                           "deep; no curtaild key nests that deep"])
    with config_errors(str(p)):
        return parse_config(data, str(p))


#: The slowest a supported machine takes to hash again after a command, in seconds: a
#: Whatsminer restarts btminer (~2 min) on every new power limit; an Antminer cold-boots its
#: hash boards in ~1.5 min.
SLOWEST_BOOT_S = 120.0


def advisories(config: Config) -> list[str]:
    """Valid settings that are probably a mistake at a real site, one ``key: why`` line each.

    They do not stop the daemon (the test fleets boot in seconds and use short timings on
    purpose); ``check`` prints them and ``run`` logs them as warnings at start and reload.
    """
    out: list[str] = []
    grace = config.controller.verify_grace_s
    if grace < SLOWEST_BOOT_S:
        out.append(
            f"controller.verify_grace_s: {grace:g} s is shorter than a real machine's boot "
            f"(up to {SLOWEST_BOOT_S:g} s; a Whatsminer restarts on every new power limit): "
            "machines still booting will be re-commanded and may restart again")
    return out
