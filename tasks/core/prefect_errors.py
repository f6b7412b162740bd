"""The Prefect API's failures as the pipeline's errors: the one place they are mapped.

Prefect's client raises ``PrefectHTTPStatusError`` (an ``httpx.HTTPStatusError``) for an error
answer, its own ``ObjectNotFound``/``ObjectAlreadyExists``/``ObjectLimitReached`` for the
answers it recognises, and lets httpx's transport errors through. A server that does not answer
or answers that it is busy (a restart, a database that is locked: 5xx, 429) is a
``TemporaryError``; anything it refuses (a missing or conflicting object, a bad request) and
Prefect's own refusals are a ``PermanentError``. Code that expects an object may be missing
catches ``ObjectNotFound`` itself, outside this mapping: absence is an answer, not a failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from prefect.exceptions import ObjectAlreadyExists, ObjectLimitReached, ObjectNotFound, PrefectException

from tasks.core.errors import DeployError, PermanentError, one_line
from tasks.core.http_errors import http_error

CAUSE_LENGTH = 300


def prefect_error(exc: PrefectException | httpx.HTTPError, doing: str) -> DeployError:
    """``exc`` from Prefect's client, met while ``doing``, as a TemporaryError or PermanentError."""
    if isinstance(exc, httpx.HTTPError):  # PrefectHTTPStatusError included: judged by its status
        return http_error(exc, f"Prefect API, {doing}")
    if isinstance(exc, ObjectNotFound):
        return PermanentError(f"Prefect API, {doing}: not found")
    if isinstance(exc, (ObjectAlreadyExists, ObjectLimitReached)):
        return PermanentError(f"Prefect API, {doing}: {type(exc).__name__}")
    return PermanentError(f"Prefect API, {doing}: {type(exc).__name__}: {one_line(exc)[:CAUSE_LENGTH]}")


@contextmanager
def prefect_errors(doing: str) -> Iterator[None]:
    """Raise the Prefect client's failures inside the block as the tree's errors (``prefect_error``)."""
    try:
        yield
    except (PrefectException, httpx.HTTPError) as exc:
        raise prefect_error(exc, doing) from exc
