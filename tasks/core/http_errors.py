"""httpx's failures as the pipeline's errors: the one place they are mapped.

Like httpx's own ``map_httpcore_exceptions``, one context manager turns a library's failures
into another family, here the tree's two kinds. No answer (refused, reset, timed out, a
broken or cut-off response) and an answer that says "later" (408, 425, 429, 5xx) are a
``TemporaryError``. A refused request (other 4xx), a certificate that does not verify, a URL or
protocol that cannot work, too many redirects are a ``PermanentError``. Messages are one line
and name the URL without its query; response bodies are left out (they are not ours to show).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tasks.core.errors import DeployError, PermanentError, TemporaryError, one_line

RETRYABLE_STATUS = {408, 425, 429}
# Transport failures that asking again cannot fix: the request itself or the setup is wrong.
UNFIXABLE_TRANSPORT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.ProxyError)
CAUSE_LENGTH = 300


def _where(exc: httpx.HTTPError) -> str:
    try:
        url = exc.request.url
    except RuntimeError:  # an error raised without a request (e.g. by a mock transport)
        return "?"
    return str(url.copy_with(query=None, fragment=None))


def _certificate_refused(exc: BaseException) -> bool:
    """Whether a TLS certificate check failed somewhere under ``exc`` (httpx wraps ssl's error)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def retryable_status(status: int) -> bool:
    """Whether an HTTP answer of ``status`` may be different if asked again."""
    return status >= 500 or status in RETRYABLE_STATUS


def http_error(exc: httpx.HTTPError | httpx.InvalidURL, doing: str) -> DeployError:
    """``exc`` from httpx, met while ``doing``, as a TemporaryError or PermanentError."""
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        message = f"{doing}: {_where(exc)} answered HTTP {status} {exc.response.reason_phrase}".rstrip()
        return TemporaryError(message) if retryable_status(status) else PermanentError(message)
    if isinstance(exc, httpx.InvalidURL):
        return PermanentError(f"{doing}: invalid URL: {one_line(exc)[:CAUSE_LENGTH]}")
    cause = f"{type(exc).__name__}: {one_line(exc)}"[:CAUSE_LENGTH]
    message = f"{doing}: {_where(exc)}: {cause}"
    if (
        isinstance(exc, httpx.TransportError)
        and not isinstance(exc, UNFIXABLE_TRANSPORT)
        and not _certificate_refused(exc)
    ):
        return TemporaryError(message)
    return PermanentError(message)


@contextmanager
def http_errors(doing: str) -> Iterator[None]:
    """Raise httpx's failures inside the block as the tree's errors (``http_error``); wrap
    ``raise_for_status()`` in it too, so a refusal is mapped like a lost connection."""
    try:
        yield
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise http_error(exc, doing) from exc
