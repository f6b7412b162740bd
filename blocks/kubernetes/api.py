"""One call to the Kubernetes API server, its failures mapped by ``blocks.kubernetes.errors``.

Every call is logged by what it touches, never by what it sends.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kubernetes import client as k8s

from blocks.kubernetes.errors import kubernetes_errors, refusal
from tasks.core.run_log import run_logger


def call(
    api: k8s.ApiClient,
    method: str,
    path: str,
    what: str,
    *,
    timeout_s: float,
    query: Mapping[str, Any] | None = None,
    body: Any = None,
    content_type: str = "application/json",
    missing_ok: bool = False,
    secret: bool = False,
    text: bool = False,
) -> Any:
    """One API call; JSON (or text) back, None for 404 when ``missing_ok``.

    ``secret`` keeps the server's message out of errors: it could quote what was sent.
    """
    run_logger(__name__).info("kubernetes: %s %s", method, what)
    params = [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (query or {}).items()]
    headers = {"Accept": "text/plain" if text else "application/json", "Content-Type": content_type}
    with kubernetes_errors(what, secret=secret):
        req = api.param_serialize(
            method, path, query_params=params, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        resp = api.call_api(*req, _request_timeout=timeout_s)
        resp.read()
    status = resp.status
    if status == 404 and missing_ok:
        return None
    if status >= 300:
        raise refusal(status, resp.data, what, secret=secret)
    return resp.data.decode(errors="replace") if text else json.loads(resp.data or b"{}")
