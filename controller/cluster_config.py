"""``[cluster]``: hot standby through etcd (absent section: curtaild runs alone, as before).

Strict like every other section: a typo is an error naming the key. Secrets (the etcd
password, a client key) never live in the config: each is read from a file (``*_file``) or a
systemd credential (``*_credential``), with the rules of drivers/secret.py.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)

from curtaild.core.bounds import at_most
from curtaild.drivers.secret import CredentialName, SecretFile, read_secret, read_secret_bytes

#: site, shard and instance names go into etcd keys and metric labels
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _name(v: str | None) -> str | None:
    if v is not None and not NAME.match(v):
        raise ValueError(f"{v!r}: 1 to 64 letters, digits, '_', '.' or '-' (it names etcd keys)")
    return v


class ClusterTlsConfig(_Strict):
    """``[cluster.tls]``: TLS to etcd (a CA to trust; a client certificate if etcd asks)."""

    ca_file: SecretFile = Field(None, description="CA bundle (PEM) that signed etcd's certificate")
    ca_credential: CredentialName = None
    cert_file: SecretFile = Field(None, description="client certificate (PEM)")
    cert_credential: CredentialName = None
    key_file: SecretFile = Field(None, description="client key (PEM); needs a certificate")
    key_credential: CredentialName = None
    server_name: str | None = Field(
        None, min_length=1, description="the name in etcd's certificate to verify (needed: the "
        "endpoints are addresses)")

    @model_validator(mode="after")
    def _consistent(self) -> ClusterTlsConfig:
        for what in ("ca", "cert", "key"):
            if getattr(self, f"{what}_file") and getattr(self, f"{what}_credential"):
                raise ValueError(f"give {what}_file or {what}_credential, not both")
        if not (self.ca_file or self.ca_credential):
            raise ValueError("ca_file or ca_credential is required (the CA that signed etcd's "
                             "certificate)")
        has_cert = bool(self.cert_file or self.cert_credential)
        has_key = bool(self.key_file or self.key_credential)
        if has_cert != has_key:
            raise ValueError("a client certificate needs its key, and a key its certificate")
        return self

    def read(self) -> tuple[bytes, bytes | None, bytes | None]:
        """(CA, certificate, key) as PEM bytes, read now; ValueError names the setting."""
        def one(what: str) -> bytes | None:
            return read_secret_bytes(
                file=getattr(self, f"{what}_file"),
                credential=getattr(self, f"{what}_credential"),
                file_key=f"cluster.tls.{what}_file",
                credential_key=f"cluster.tls.{what}_credential")

        ca = one("ca")
        assert ca is not None
        return ca, one("cert"), one("key")


class ClusterConfig(_Strict):
    endpoints: list[str] = Field(..., min_length=1, max_length=16, description=(
        "etcd client URLs, e.g. [\"http://127.0.0.1:2379\"]; every member of the etcd cluster"))
    site_id: str = Field(..., description="the site: instances of one site (and shard) elect "
                         "one leader among them")
    instance_id: str = Field(..., description="this instance, unique in the site")
    lease_ttl_s: Annotated[int, at_most(
        300, "a dead leader is replaced after up to this long: the fleet is uncommanded "
        "meanwhile")] = Field(10, ge=2, description=(
            "the leader's lease: a standby takes over within this (plus a tick) of a crash, and a "
            "leader cut off from etcd stops commanding within it"))
    shard: str | None = Field(None, description="shard name (instances of one shard elect a "
                              "leader); unset: the whole site is one shard")
    site_power_cap_w: float | None = Field(
        None, gt=0, description="the site's power cap, divided across its shards by marginal "
        "value per watt (controller/site_allocator.py); the same value on every instance")
    budget_hold_s: Annotated[float, at_most(
        86400, "a shard that cannot hear the allocator keeps an old budget this long")] = Field(
        120.0, ge=0, description="a shard that cannot read its budget keeps the last one this "
        "long, then falls back to safe_budget_w")
    safe_budget_w: float | None = Field(
        None, ge=0, description="this shard's power cap once its budget is older than "
        "budget_hold_s (etcd lost): the site cap divided by the number of shards is always safe")
    standby: StrictBool = Field(True, description=(
        "false: this shard has no standby (this instance is its only one), so no peer can lead "
        "in its place: it commands without etcd too, under its last budget for budget_hold_s, "
        "then safe_budget_w (docs/cluster.md). Needs site_power_cap_w"))
    request_timeout_s: Annotated[float, at_most(
        30, "the loop waits this long on an etcd member that does not answer")] = Field(
        2.0, gt=0, description="deadline of one etcd request")
    username: str | None = Field(None, min_length=1, description="etcd user (etcd auth)")
    password_file: SecretFile = Field(None, description="file holding the etcd password")
    password_credential: CredentialName = Field(
        None, description="systemd credential holding the etcd password")
    tls: ClusterTlsConfig | None = None

    _site = field_validator("site_id", "instance_id", "shard")(_name)

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        for e in v:
            parts = urlsplit(e)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{e!r}: not an etcd client URL (http://ADDRESS:PORT)")
            if parts.path not in ("", "/") or parts.query or parts.username:
                raise ValueError(f"{e!r}: only scheme, address and port (no path, user, query)")
            try:
                ipaddress.IPv4Address(parts.hostname)
            except ValueError:
                raise ValueError(f"{e!r}: give the member's IPv4 address, not a name (the etcd "
                                 "client balances over addresses; docs/cluster.md)") from None
            try:
                port = parts.port
            except ValueError:
                raise ValueError(f"{e!r}: the port is not a number from 1 to 65535") from None
            if port is None:
                raise ValueError(f"{e!r}: give the port (etcd's client port is 2379)")
        if len(set(v)) != len(v):
            raise ValueError("an endpoint is listed twice")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ClusterConfig:
        schemes = {urlsplit(e).scheme for e in self.endpoints}
        if len(schemes) > 1:
            raise ValueError("endpoints: all http or all https")
        if "https" in schemes and self.tls is None:
            raise ValueError("https endpoints need [cluster.tls] (at least ca_file)")
        if "http" in schemes and self.tls is not None:
            raise ValueError("[cluster.tls] is set but the endpoints are http://")
        if self.password_file and self.password_credential:
            raise ValueError("give password_file or password_credential, not both")
        if (self.password_file or self.password_credential) and not self.username:
            raise ValueError("a password needs a username")
        if self.username and not (self.password_file or self.password_credential):
            raise ValueError("username needs password_file or password_credential")
        if self.site_power_cap_w is not None and self.safe_budget_w is None:
            raise ValueError("site_power_cap_w needs safe_budget_w (this shard's cap when it "
                             "cannot hear the allocator; site cap / number of shards is safe)")
        if not self.standby and self.site_power_cap_w is None:
            raise ValueError("standby = false needs site_power_cap_w: a shard without a "
                             "standby uses etcd only for the site's power allocation (without "
                             "a site cap, leave [cluster] out to run alone)")
        if (self.safe_budget_w is not None and self.site_power_cap_w is not None
                and self.safe_budget_w > self.site_power_cap_w):
            raise ValueError("safe_budget_w is above site_power_cap_w")
        return self

    @property
    def site_scope(self) -> str:
        """The etcd prefix shared by every shard of the site (allocator, summaries, budgets)."""
        return f"/curtaild/{self.site_id}/_allocation/"

    @property
    def scope(self) -> str:
        """The etcd prefix of this instance's election and state."""
        return f"/curtaild/{self.site_id}/{self.shard or '_site'}/"

    def read_password(self) -> str | None:
        secret = read_secret(file=self.password_file, credential=self.password_credential,
                             file_key="cluster.password_file",
                             credential_key="cluster.password_credential")
        return secret.get_secret_value() if secret is not None else None
