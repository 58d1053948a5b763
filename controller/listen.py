"""``HOST:PORT`` of a listening socket ([metrics] listen), checked where the config is read
and parsed where the exporter binds: one function, so that what ``curtaild check`` accepts is
what the exporter can bind."""

from __future__ import annotations

import ipaddress
import re

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); IPv6 hosts in brackets (``[::1]:9464``).

    Raises ValueError with a message fit for ``curtaild check``.
    """
    example = "expected HOST:PORT, e.g. '127.0.0.1:9464', '0.0.0.0:9464' or '[::1]:9464'"
    if not isinstance(text, str) or not text.strip():
        raise ValueError(example)
    host, sep, port_s = text.strip().rpartition(":")
    if not sep or not host or not port_s:
        raise ValueError(f"{text!r}: {example}")
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            raise ValueError(f"{text!r}: unbalanced brackets; {example}")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"{text!r}: an IPv6 address goes in brackets, e.g. '[::1]:9464'")
    else:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            if host.replace(".", "").isdigit() or not _HOSTNAME.match(host):
                raise ValueError(f"{text!r}: {host!r} is neither an IP address nor a "
                                 "host name") from None
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ValueError(f"{text!r}: port {port_s!r} is not a number from 1 to 65535")
    return host, int(port_s)


# ----------------------------------------------------------------------- counters / state
