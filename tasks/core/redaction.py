"""The one redactor: every secret a run knows is cut out of text copied from outside.

Outside text (container and pod logs, tool stderr, exception messages, HTTP response bodies)
passes through a ``Redactor`` before it reaches an artifact, a log line, a state message or
Slack. It replaces each secret in the forms it is likely to appear in: as it is, URL-encoded,
and base64-encoded (alone, or inside a longer base64 string such as an HTTP Basic header), and
the password of any URL that carries userinfo.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
from collections.abc import Iterable, Iterator
from urllib.parse import quote, quote_plus

from pydantic import BaseModel, SecretBytes, SecretStr

MASK = "[redacted]"
# Shorter values would mask ordinary words; the blocks refuse secrets this short.
MIN_SECRET_LENGTH = 4
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)(?P<password>[^\s@/]+)(?P<tail>@)")


def _base64_forms(secret: bytes) -> Iterator[str]:
    """The secret's base64 alone, and the part of it that is the same wherever it starts in a longer string."""
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        yield encode(secret).decode()
        for offset in (0, 1, 2):
            encoded = encode(b"\0" * offset + secret).decode()
            # Keep only the characters made of the secret's bits alone: not the ones that mix in the
            # bytes before it, nor the last partial one that mixes in whatever follows.
            first, end = -(-offset * 8 // 6), (offset + len(secret)) * 8 // 6
            if end - first >= MIN_SECRET_LENGTH:
                yield encoded[first:end]


def forms_of(secret: str) -> set[str]:
    """Every spelling of ``secret`` the redactor looks for."""
    if len(secret) < MIN_SECRET_LENGTH:
        return set()
    spellings = {secret, quote(secret, safe=""), quote_plus(secret)}
    # base64 of each spelling: a DATABASE_URL holds the password URL-encoded, and may itself be base64'd.
    return spellings | {form for s in spellings for form in _base64_forms(s.encode())}


def secrets_of(*models: BaseModel) -> set[str]:
    """The values of every SecretStr/SecretBytes field, at any depth, of the given models."""
    found: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, SecretStr):
            found.add(value.get_secret_value())
        elif isinstance(value, SecretBytes):
            found.add(value.get_secret_value().decode(errors="replace"))
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name, None))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple | set | frozenset):
            for item in value:
                walk(item)

    for model in models:
        walk(model)
    return {s for s in found if s}


class Redactor:
    """Replaces every known secret, in every form, and every URL password, with ``[redacted]``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = tuple(s for s in secrets if s)
        self._forms: frozenset[str] = frozenset().union(*map(forms_of, self._secrets))
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(self._forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if not text:
            return text
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        return _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['tail']}", text)

    def knows(self, secret: str) -> bool:
        return secret in self._forms

    def with_secrets(self, secrets: Iterable[str]) -> Redactor:
        """This redactor, also hiding ``secrets`` (say, a session token the API just handed out)."""
        return Redactor([*self._secrets, *secrets])


# -- the run's redactor ------------------------------------------------------------------------
# One per process: a run registers its secrets once, at its start, and every task and subflow of it
# (threads of the same process) redacts with them. Secrets are only ever added, never removed: a
# worker process that ran one environment's deploy keeps hiding its secrets.

_lock = threading.Lock()
_run_redactor = Redactor()


def register(secrets: Iterable[str]) -> Redactor:
    """Hide ``secrets`` from now on, everywhere in this process; installs the log filter."""
    global _run_redactor
    with _lock:
        new = [s for s in secrets if s and not _run_redactor.knows(s)]
        if new:
            _run_redactor = _run_redactor.with_secrets(new)
        install_log_redaction()
        return _run_redactor


def run_redactor() -> Redactor:
    """The redactor holding every secret registered in this process (URL passwords even with none)."""
    return _run_redactor


def redact(text: object) -> str:
    """``text`` (any object, as ``str()`` renders it) with every registered secret and URL password masked."""
    return _run_redactor(str(text))


def redact_data(value: object) -> object:
    """Every string inside ``value`` (lists, dicts, tuples) redacted; other values as they are."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_data(k): redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_data(v) for v in value)
    return value


class RedactingFilter(logging.Filter):
    """A handler filter: the record's message, arguments and traceback text leave with secrets masked.

    It sits on handlers, not loggers, because a logger's filters never see what its children
    propagate; a handler sees every record it writes, whichever logger made it."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        redactor = _run_redactor
        try:
            message = record.getMessage()
        except Exception:  # a malformed call (wrong argument count): its raw parts, still redacted
            message = f"{record.msg} {record.args}"
        record.msg, record.args = redactor(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redactor(record.exc_text)
        if record.stack_info:
            record.stack_info = redactor(record.stack_info)
        return True


_FILTER = RedactingFilter()


def install_log_redaction() -> None:
    """Put the filter on every handler of every logger there is (Prefect's API and console handlers,
    the root's); idempotent. Called by ``register``; handlers made later need another call."""
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
