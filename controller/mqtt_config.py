"""``[mqtt]``: the MQTT bridge's settings (absent section = bridge off).

Strict like every other section, so a typo is an error naming the key. Secrets never live in
the config: the password is read, at each connection, from ``password_file`` or from the
systemd credential ``password_credential`` (``$CREDENTIALS_DIRECTORY/<name>``, set by
``LoadCredential=``), and never logged or shown in a repr.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from curtaild.core.bounds import at_most
from curtaild.drivers.secret import CredentialName, SecretFile, read_secret


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MqttTlsConfig(_Strict):
    """``[mqtt.tls]``: TLS to the broker (a CA to trust; a client certificate if required)."""

    ca_file: str | None = Field(None, description="CA bundle to verify the broker; unset: system")
    cert_file: str | None = Field(None, description="client certificate (PEM)")
    key_file: str | None = Field(None, description="client key (PEM); needs cert_file")
    insecure: bool = Field(False, description="skip broker host name verification (tests only)")

    @model_validator(mode="after")
    def _key_needs_cert(self) -> MqttTlsConfig:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file (the client certificate it belongs to)")
        return self


class MqttConfig(_Strict):
    host: str = Field(..., min_length=1, description="broker host name or address")
    port: Annotated[int, at_most(65535, "TCP ports end at 65,535", unit="")] = Field(
        1883, ge=1)
    topic_prefix: str = Field(..., description="e.g. 'curtaild/site1'; every topic starts here")
    client_id: str | None = Field(None, max_length=128,
                                  description="MQTT client id; default 'curtaild-<prefix>'")
    username: str | None = Field(None, min_length=1)
    password_file: SecretFile = Field(None, description="file holding the password (one line)")
    password_credential: CredentialName = Field(
        None, description="systemd credential name holding the password ($CREDENTIALS_DIRECTORY)")
    tls: MqttTlsConfig | None = None
    keepalive_s: Annotated[int, at_most(
        3600, "a dead broker connection goes unnoticed for up to 1.5 x this")] = Field(30, ge=5)
    connect_timeout_s: Annotated[float, at_most(
        300, "the bridge waits this long for a broker that does not answer")] = Field(
        10.0, gt=0)
    reconnect_min_s: Annotated[float, at_most(
        3600, "demand-response commands are lost while the bridge waits to reconnect")] = Field(
        1.0, gt=0)
    reconnect_max_s: Annotated[float, at_most(
        86400, "demand-response commands are lost while the bridge waits to reconnect")] = Field(
        60.0, gt=0)
    max_payload_bytes: Annotated[int, at_most(
        262144, "no command is that large; each inbound message is held and parsed whole",
        unit="bytes")] = Field(
        4096, ge=256, description="inbound commands larger than this are rejected")
    max_publish_bytes: Annotated[int, at_most(
        268435455, "MQTT's largest packet", unit="bytes")] = Field(
        131072, ge=1024,
        description="outbound messages larger than this are dropped and counted; keep it "
                    "under the broker's max_packet_size (256 KiB in deploy/mosquitto), which "
                    "closes the connection on a larger packet")
    publish_miners: bool = Field(True, description="retained <prefix>/miners/<id> on change")
    publish_queue: Annotated[int, at_most(
        100000, "messages queued while disconnected are held in memory", unit="")] = Field(
        1000, ge=10, description="non-retained messages kept while disconnected")
    # ---- load shedding: a command flood is answered, never allowed to drop the session
    inbound_queue: Annotated[int, at_most(
        100000, "commands waiting to be processed are held in memory (up to "
        "max_payload_bytes each)", unit="")] = Field(
        10000, ge=10, description="commands received but not yet processed; beyond it the "
        "client discards them unanswered. A sender catching up after a stall (or a loop "
        "busy for a second) delivers a second of commands at once: room for several")
    busy_backlog: Annotated[int, at_most(
        99999, "it must stay under inbound_queue (at most 100,000): past inbound_queue "
        "commands are discarded unanswered, so shedding has to start before", unit="")] = Field(
        200, ge=1, description="with more commands than this waiting, each is answered "
        "'rejected' ('busy: ...') without being applied, until the backlog drains")
    # ---- demand-response events and overrides
    max_target_power_w: float = Field(1e9, gt=0, description="largest target_power_w accepted")
    min_target_power_w: float = Field(
        1.0, gt=0, description="smallest target_power_w accepted: the sanity floor (a target "
        "of 1e-300 W is an encoding error, and would shed the whole site)")
    max_event_duration_s: Annotated[float, at_most(
        7 * 86400.0, "also the length of an event sent without an end: a lost 'end' message "
        "would keep the site shed for longer than a week")] = Field(
        86400.0, gt=0, description="longest event accepted; also the end of an event without one")
    max_event_lead_s: Annotated[float, at_most(
        30 * 86400.0, "an event scheduled further ahead is a mistake in its start time, and "
        "would be remembered (and journaled) until then")] = Field(
        7 * 86400.0, ge=0, description="how far ahead an event may start")
    max_override_s: Annotated[float, at_most(
        30 * 86400.0, "also the length of an override or pause sent without an end: one "
        "forgotten message would hold machines for longer than a month")] = Field(
        86400.0, gt=0, description="longest override or pause; also their length when no "
        "until/duration_s is given")
    max_active_events: Annotated[int, at_most(
        10000, "every command and every tick walks the events", unit="")] = Field(
        100, ge=1, description="events active or scheduled at once; more are rejected")
    max_overrides: Annotated[int, at_most(
        1000000, "overrides are held in memory and journaled", unit="")] = Field(
        10000, ge=1, description="overrides in force at once; more are rejected")
    max_remembered_ids: Annotated[int, at_most(
        1000000, "remembered ids are held in memory and journaled", unit="")] = Field(
        5000, ge=100, description="command ids remembered for duplicates (7 days; the oldest "
        "is forgotten first)")
    # ---- inbound watchdog
    event_heartbeat_s: Annotated[float | None, at_most(
        86400.0, "a day of silence during an event is a lost signal, whatever the "
        "heartbeat")] = Field(
        None, gt=0, description="during an event, silence longer than this is a signal loss")
    on_signal_loss: Literal["hold", "release", "end_after_s"] = "hold"
    signal_loss_end_after_s: Annotated[float | None, at_most(
        7 * 86400.0, "an event would outlive its lost signal by more than a week")] = Field(
        None, ge=0, description="with on_signal_loss = 'end_after_s': the event ends this long "
        "after the signal was lost")

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_a_topic(cls, v: str) -> str:
        if not v or len(v) > 200:
            raise ValueError("must be 1 to 200 characters, e.g. 'curtaild/site1'")
        if any(c in v for c in "+#\x00") or v.startswith("/") or v.endswith("/") or "//" in v:
            raise ValueError(f"{v!r}: no wildcards (+ #), no leading, trailing or doubled '/'")
        if v.startswith("$"):
            raise ValueError(f"{v!r}: topics starting with '$' are reserved by the broker")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> MqttConfig:
        if self.password_file and self.password_credential:
            raise ValueError("give password_file or password_credential, not both")
        if (self.password_file or self.password_credential) and not self.username:
            raise ValueError("a password needs a username")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        if self.min_target_power_w > self.max_target_power_w:
            raise ValueError("min_target_power_w must be <= max_target_power_w")
        if self.busy_backlog >= self.inbound_queue:
            raise ValueError("busy_backlog must be < inbound_queue (past inbound_queue commands "
                             "are discarded unanswered, so shedding has to start before)")
        if self.on_signal_loss == "end_after_s" and self.signal_loss_end_after_s is None:
            raise ValueError("on_signal_loss = 'end_after_s' needs signal_loss_end_after_s")
        if self.on_signal_loss != "hold" and self.event_heartbeat_s is None:
            raise ValueError(f"on_signal_loss = {self.on_signal_loss!r} needs event_heartbeat_s "
                             "(without a heartbeat there is no signal to lose)")
        return self

    @property
    def effective_client_id(self) -> str:
        return self.client_id or "curtaild-" + re.sub(r"[^A-Za-z0-9_-]", "-", self.topic_prefix)

    def read_password(self) -> str | None:
        """The password, read now (a rotated file is picked up at the next connection).

        Raises ValueError with a message that names the setting and the path, never the secret
        (``controller.secret.read_secret``, shared with the miners' firmware passwords).
        """
        secret = read_secret(file=self.password_file, credential=self.password_credential,
                             file_key="mqtt.password_file",
                             credential_key="mqtt.password_credential")
        return secret.get_secret_value() if secret is not None else None
