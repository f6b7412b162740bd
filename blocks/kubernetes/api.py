"""One call to the Kubernetes API server, with its failures mapped to the pipeline's errors.

"Cannot reach the API" (and 5xx, 429) is ``TemporaryError``; any other refusal is
``PermanentError``. Every call is logged by what it touches, never by what it sends.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from tasks.core.errors import PermanentError, TemporaryError
from tasks.core.run_log import run_logger


def call(api: k8s.ApiClient, method: str, path: str, what: str, *, timeout_s: float,
         query: Mapping[str, Any] | None = None, body: Any = None, content_type: str = "application/json",
         missing_ok: bool = False, secret: bool = False, text: bool = False) -> Any:
    """One API call; JSON (or text) back, None for 404 when ``missing_ok``.

    ``secret`` keeps the server's message out of errors: it could quote what was sent.
    """
    run_logger(__name__).info("kubernetes: %s %s", method, what)
    params = [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (query or {}).items()]
    headers = {"Accept": "text/plain" if text else "application/json", "Content-Type": content_type}
    try:
        req = api.param_serialize(method, path, query_params=params, header_params=headers, body=body,
                                  auth_settings=["BearerToken"])
        resp = api.call_api(*req, _request_timeout=timeout_s)
        resp.read()
    except ApiException as exc:
        raise TemporaryError(f"Kubernetes API unreachable ({what}): {exc.reason}") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise TemporaryError(f"Kubernetes API unreachable ({what}): {type(exc).__name__}") from None
    status = resp.status
    if status == 404 and missing_ok:
        return None
    if status >= 300:
        message = ""
        if not secret:
            try:
                message = json.loads(resp.data).get("message", "")
            except (ValueError, AttributeError):
                message = resp.data[:200].decode(errors="replace")
        error = TemporaryError if status >= 500 or status == 429 else PermanentError
        raise error(f"Kubernetes refused {what}: HTTP {status} {message}".rstrip())
    return resp.data.decode(errors="replace") if text else json.loads(resp.data or b"{}")
