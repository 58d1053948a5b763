"""Secrets from outside the config file: one way to read them, one way to keep them out of logs.

curtaild's config is meant to be readable (``curtaild check``, shared in a ticket, committed to
a site repository), so a secret never lives in it: it names a file (``*_file``) or a systemd
credential (``*_credential``: ``LoadCredential=`` puts it in ``$CREDENTIALS_DIRECTORY``, readable
only by the service). The MQTT password and the miners' firmware passwords are read here, so
both have the same rules and the same error messages, which name the setting and the path,
never the secret.

Values are held as ``pydantic.SecretStr`` (its repr and str are ``**********``) and every value
read is registered with :class:`RedactingFilter`, which the daemon's log handler carries: a
secret that reaches a log line anyway (a library's debug message, an exception text) is
replaced before the line is written.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, SecretStr

#: systemd credential names (``LoadCredential=NAME:PATH``).
CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,255}$")
MASK = "**********"
#: Secrets shorter than this are not searched for in log lines: a one- or two-character
#: password would turn every log line into asterisks, and is no secret anyway.
MIN_REDACTED_CHARS = 3

_live: set[str] = set()
_lock = threading.Lock()


def check_credential_name(value: str | None) -> str | None:
    """Validator body: a systemd credential name or None."""
    if value is not None and not CREDENTIAL_NAME.match(value):
        raise ValueError(f"{value!r} is not a systemd credential name (letters, digits, _.@-)")
    return value


def beside_config(value: str | None, info: Any) -> str | None:
    """Validator body: a relative secret file resolves against the config file's directory.

    Against the working directory, ``password_file = "secrets/antminer"`` named another file
    when the daemon was started from elsewhere (systemd starts it in ``/``): the shipped
    config could not name a file beside itself. ``parse_config`` passes the directory as the
    validation context (``config_dir``); without one (a model built in code) the path is
    kept as given."""
    base = (getattr(info, "context", None) or {}).get("config_dir")
    if value is None or base is None or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base, value))


def _locate(file: str | None, credential: str | None, file_key: str,
            credential_key: str) -> tuple[Path, str] | None:
    """The path a secret setting names and the setting's name for errors: a file, else a
    systemd credential in $CREDENTIALS_DIRECTORY; None when neither is set."""
    if file:
        return Path(file), file_key
    if credential:
        source = f"{credential_key} {credential!r}"
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ValueError(f"{source}: "
                             "$CREDENTIALS_DIRECTORY is not set (LoadCredential= missing?)")
        return Path(directory) / credential, source
    return None


def read_secret(*, file: str | None, credential: str | None, file_key: str,
                credential_key: str) -> SecretStr | None:
    """The secret named by ``file`` or ``credential`` (None if neither is set), read now.

    ``file_key``/``credential_key`` are the settings' full names (``mqtt.password_file``) for
    the error messages. Raises ValueError naming the setting and the path, never the secret.
    One trailing newline is dropped (``echo`` and editors add one); an empty secret is an
    error, not "no password".
    """
    located = _locate(file, credential, file_key, credential_key)
    if located is None:
        return None
    path, source = located
    try:
        text = path.read_text(encoding="utf-8").strip("\r\n")
    except UnicodeDecodeError:
        raise ValueError(f"{source}: {path} is not UTF-8 text") from None
    except OSError as exc:  # name the setting, not only the path systemd made up
        raise ValueError(f"{source}: cannot read {path}: {exc.strerror or exc}") from None
    if not text:
        raise ValueError(f"{source}: {path} is empty")
    if "\n" in text or "\r" in text:
        raise ValueError(f"{source}: {path} holds more than one line")
    remember(text)
    return SecretStr(text)


def remember(value: str) -> None:
    """Register a secret so that log lines containing it are redacted."""
    if len(value) >= MIN_REDACTED_CHARS:
        with _lock:
            _live.add(value)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by the mask."""
    if not _live:
        return text
    with _lock:
        secrets = sorted(_live, key=len, reverse=True)  # a longer secret may contain another
    for value in secrets:
        if value in text:
            text = text.replace(value, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A handler filter: formats the record's message once and redacts registered secrets.

    On the handler (not a logger) so that it also covers records from libraries that log
    through the root logger (pyasic does, at DEBUG, including the token it derives from the
    Whatsminer admin password -- see ``DROP_DEBUG_FROM``).
    """

    #: Source files whose DEBUG lines carry credential material that redaction cannot catch
    #: (derived from the password, not equal to it): pyasic's Whatsminer RPC logs the
    #: ``host_passwd_md5`` token data. They are dropped, whatever the log level.
    DROP_DEBUG_FROM = (os.sep + os.path.join("pyasic", "rpc", "btminer.py"),)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG and record.pathname.endswith(self.DROP_DEBUG_FROM):
            return False
        if not _live:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let logging report it as usual
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            formatter = logging.Formatter()
            record.exc_text = formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


#: A config key naming a secret file: relative paths resolve beside the config file.
SecretFile = Annotated[str | None, AfterValidator(beside_config)]
#: A config key naming a systemd credential.
CredentialName = Annotated[str | None, AfterValidator(check_credential_name)]


def read_secret_bytes(*, file: str | None, credential: str | None, file_key: str,
                      credential_key: str) -> bytes | None:
    """A whole file (a PEM certificate or key, several lines) named by ``file`` or the systemd
    credential ``credential``; None if neither is set. The same rules and error messages as
    :func:`read_secret` (the setting and the path are named, never the content)."""
    located = _locate(file, credential, file_key, credential_key)
    if located is None:
        return None
    path, source = located
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{source}: cannot read {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise ValueError(f"{source}: {path} is empty")
    return data
