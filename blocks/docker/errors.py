"""The Docker engine's failures as the pipeline's errors: the one place they are mapped.

The docker SDK raises its own ``DockerException`` family (``APIError`` carries the engine's
HTTP answer) and lets ``requests``/``urllib3`` errors through when the engine does not answer
at all. An engine that did not answer (restarting, say), or answered that it is busy (5xx,
408, 409, 429), is a ``TemporaryError``: the same call may work later. A refusal of the
request itself (4xx, a missing image), a failed build or a failed command in a container is a
``PermanentError``. Every message names the engine and what was being done, on one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
import urllib3
from docker.errors import APIError, BuildError, ContainerError, DockerException, StreamParseError

from tasks.core.errors import DeployError, PermanentError, TemporaryError, one_line
from tasks.core.redaction import redact

# The engine answered, but asked again it may answer otherwise (busy, a removal in progress).
RETRYABLE_STATUS = {408, 409, 429}
# Failures of the request's transport: the engine never answered.
UNANSWERED = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
    ConnectionError,
)
CAUSE_LENGTH = 300


def _cause(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(exc)}"[:CAUSE_LENGTH]


def _unanswered(exc: BaseException) -> bool:
    """A transport failure, or a bare DockerException: the SDK raises one when the engine does not
    answer as the client is made ("Error while fetching server API version: ...")."""
    return isinstance(exc, UNANSWERED) or type(exc) is DockerException


def docker_error(exc: BaseException, doing: str, engine: str, *, stage: Any = None) -> DeployError:
    """``exc`` from the docker SDK (or requests under it) as a TemporaryError or PermanentError
    (of ``stage``, when the caller knows it)."""
    error, message = _classified(exc, doing, engine)
    # The engine's explanation and a one-off's stderr are outside text: they may quote a secret.
    return error(redact(message), stage=stage)


def _classified(exc: BaseException, doing: str, engine: str) -> tuple[type[DeployError], str]:
    if isinstance(exc, APIError):
        status = exc.status_code
        explanation = one_line(exc.explanation or exc)[:CAUSE_LENGTH]
        message = f"Docker engine at {engine} answered {status} while {doing}: {explanation}"
        retryable = status is None or status >= 500 or status in RETRYABLE_STATUS
        return (TemporaryError if retryable else PermanentError), message
    if isinstance(exc, BuildError):
        return PermanentError, f"{doing} failed: {one_line(exc.msg)[:CAUSE_LENGTH]}"
    if isinstance(exc, ContainerError):
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else str(exc.stderr or "")
        stderr = redact(one_line(stderr))  # before the cut, which could leave half a secret unmatched
        return PermanentError, f"{doing} failed: exit status {exc.exit_status}: {stderr[-CAUSE_LENGTH:]}"
    if isinstance(exc, StreamParseError):  # the engine's answer was cut off mid-stream
        return TemporaryError, f"Docker engine at {engine} broke off its answer while {doing}: {_cause(exc)}"
    if _unanswered(exc):
        return TemporaryError, f"Docker engine at {engine} did not answer while {doing}: {_cause(exc)}"
    # Settings the SDK refused (InvalidArgument, InvalidRepository, TLSParameterError...), an
    # image that would not load, or a request requests itself refused: asking again is the same.
    return PermanentError, f"{doing} failed on the Docker engine at {engine}: {_cause(exc)}"


@contextmanager
def docker_errors(doing: str, engine: str, *, stage: Any = None) -> Iterator[None]:
    """Raise the docker SDK's failures inside the block as the tree's errors (``docker_error``)."""
    try:
        yield
    except (
        DockerException,
        StreamParseError,
        requests.exceptions.RequestException,
        urllib3.exceptions.HTTPError,
        ConnectionError,
    ) as exc:
        raise docker_error(exc, doing, engine, stage=stage) from exc
