"""The Kubernetes API's failures as the pipeline's errors: the one place they are mapped.

Like Kopf's ``check_response``: an API server that cannot be reached (``urllib3`` and socket
errors, the client's ``ApiException`` with no HTTP status: TLS, connection) or that answers it
is overloaded or failing (429, 5xx) is a ``TemporaryError``; any other refusal (400 invalid,
403 forbidden, 404, 409, 422) and a client with no usable configuration are a ``PermanentError``.
``secret`` keeps the server's message out of the error: it could quote what was sent (a Secret's data).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from tasks.core.errors import DeployError, PermanentError, TemporaryError, one_line
from tasks.core.redaction import redact

MESSAGE_LENGTH = 300


def _server_message(body: bytes | str | None) -> str:
    """The ``message`` of a Status object, or the start of whatever else the server sent."""
    if not body:
        return ""
    try:
        return str(json.loads(body).get("message", ""))
    except (ValueError, AttributeError):  # not JSON, or JSON that is not an object
        return body[:MESSAGE_LENGTH].decode(errors="replace") if isinstance(body, bytes) else str(body)[:MESSAGE_LENGTH]


def refusal(status: int, body: bytes | str | None, what: str, *, secret: bool = False) -> DeployError:
    """An HTTP answer of ``status`` (>= 300) to ``what`` as a TemporaryError or PermanentError."""
    # The server's message is outside text: the run's secrets are cut out before it is shortened.
    message = "" if secret else redact(one_line(_server_message(body)))[:MESSAGE_LENGTH]
    error = TemporaryError if status >= 500 or status == 429 else PermanentError
    return error(f"Kubernetes refused {what}: HTTP {status} {message}".rstrip())


def kubernetes_error(exc: BaseException, what: str, *, secret: bool = False) -> DeployError:
    """``exc`` from the kubernetes client (or urllib3 under it) as the tree's error."""
    if isinstance(exc, ConfigException):  # no usable kubeconfig or service account: a setting to fix
        return PermanentError(f"Kubernetes client not configured ({what}): {redact(one_line(exc))[:MESSAGE_LENGTH]}")
    if isinstance(exc, ApiException) and exc.status:
        return refusal(exc.status, exc.body, what, secret=secret)
    reason = exc.reason if isinstance(exc, ApiException) else type(exc).__name__
    return TemporaryError(f"Kubernetes API unreachable ({what}): {redact(one_line(reason))[:MESSAGE_LENGTH]}")


@contextmanager
def kubernetes_errors(what: str, *, secret: bool = False) -> Iterator[None]:
    """Raise the kubernetes client's failures inside the block as the tree's errors.

    The cause is not chained (``from None``): a traceback of a call that sent a Secret is
    nothing anyone needs, and the mapped message already says what failed.
    """
    try:
        yield
    except (ApiException, ConfigException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise kubernetes_error(exc, what, secret=secret) from None
