"""PDU drivers from ``[[pdu]]`` config, secrets read now (start and every reload)."""

from __future__ import annotations

from curtaild.drivers.pdu.apc import ApcPdu
from curtaild.drivers.pdu.raritan import RaritanPdu
from curtaild.drivers.pdu.snmp import SnmpCredentials, SnmpSession

DRIVERS = {"apc": ApcPdu, "raritan": RaritanPdu}


def _secret(cfg, i: int, key: str):
    from curtaild.drivers.secret import read_secret

    value = read_secret(file=getattr(cfg, f"{key}_file"),
                        credential=getattr(cfg, f"{key}_credential"),
                        file_key=f"pdu[{i}].{key}_file",
                        credential_key=f"pdu[{i}].{key}_credential")
    return value.get_secret_value() if value is not None else None


def build_pdus(configs) -> dict:
    """Drivers by PDU key. Raises ValueError naming the setting of a secret it cannot read."""
    out = {}
    for i, cfg in enumerate(configs):
        if cfg.version == "v2c":
            creds = SnmpCredentials.v2c(_secret(cfg, i, "community"),
                                        _secret(cfg, i, "write_community"))
        else:
            creds = SnmpCredentials.v3(cfg.user, _secret(cfg, i, "auth_key"),
                                       _secret(cfg, i, "priv_key"), cfg.auth_protocol,
                                       cfg.priv_protocol)
        session = SnmpSession(cfg.address, cfg.port, creds, timeout_s=cfg.timeout_s,
                              retries=cfg.retries)
        out[cfg.key] = DRIVERS[cfg.mib](cfg.key, session, cfg.outlets)
    return out
