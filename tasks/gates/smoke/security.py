"""The security checks: the client-visible half of the guide's security checklist, run in the smoke gate.

HTTPS redirect and HSTS, the certificate, CORS, input validation, SQL injection and XSS probes,
and the login rate limit. ``SECURITY_CHECKS`` need only the session; ``certificate`` and
``rate_limit`` take the suite's parameters (``tasks.gates.smoke.suite`` places them).
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from urllib.parse import urlsplit

import httpx

from tasks.core.http import retry_after_seconds
from tasks.gates.smoke.session import CheckFailed, SmokeCheck, SmokeSession, body_json, expect, registry

XSS_PROBE = "<script>alert(1)</script>"
SQL_PROBE = "' OR 1=1 --"
EVIL_ORIGIN = "https://evil.example"  # only ever an Origin header value: no traffic goes there
DB_ERROR_MARKERS = ("syntax error at or near", "pq: ", "sqlstate", "unterminated quoted string")

SECURITY_CHECKS: list[tuple[str, SmokeCheck]] = []
security = registry(SECURITY_CHECKS)


def _http_base(s: SmokeSession) -> str:
    """The plain-HTTP address of the balancer: given, configured, or derived when the port is default."""
    configured = s.http_url or s.env.api_http_url
    if configured:
        return str(configured).rstrip("/")
    parts = urlsplit(s.base)
    if parts.port not in (None, 443):
        raise CheckFailed(f"no http URL known for {s.base} (port {parts.port}): set api_http_url")
    return f"http://{parts.hostname}"


@security("security: HTTPS enforced")
def _https_enforced(s: SmokeSession) -> str:
    with s.new_client(_http_base(s)) as plain:
        response = expect(plain.get("/health"), 301, 308)
    location = response.headers.get("location", "")
    if not location.startswith("https://"):
        raise CheckFailed(f"redirects to {location!r}, not https")
    hsts = s.client.get("/health").headers.get("strict-transport-security", "")
    if "max-age=" not in hsts.lower() or "max-age=0" in hsts.lower():
        raise CheckFailed(f"no Strict-Transport-Security with a max-age on https (got {hsts!r})")
    return f"{response.status_code} -> {location}; HSTS {hsts}"


def certificate(s: SmokeSession, min_days: float) -> str:
    parts = urlsplit(s.base)
    host, port = parts.hostname or "", parts.port or 443
    s.requests.append(f"TLS handshake {host}:{port}")
    try:  # create_default_context verifies the chain and the hostname
        with (
            socket.create_connection((host, port), timeout=10) as raw,
            s.verify.wrap_socket(raw, server_hostname=host) as tls,
        ):
            cert = tls.getpeercert()
    except (ssl.SSLError, OSError) as exc:
        raise CheckFailed(f"TLS handshake failed: {exc}") from None
    days = (ssl.cert_time_to_seconds(cert["notAfter"]) - time.time()) / 86400
    subject = dict(x[0] for x in cert.get("subject", ()))
    if days < min_days:
        raise CheckFailed(f"certificate expires in {days:.1f} days (< {min_days}) on {cert['notAfter']}")
    return f"chain and hostname verify; CN={subject.get('commonName', '?')}; {days:.0f} days left"


def _preflight(s: SmokeSession, origin: str) -> httpx.Response:
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    return s.client.options("/api/v1/events", headers=headers)


@security("security: CORS allows the configured origin")
def _cors_allowed(s: SmokeSession) -> str:
    origin = s.env.allowed_origin
    simple = expect(s.session().get("/api/v1/auth/me", headers={"Origin": origin}), 200)
    preflight = expect(_preflight(s, origin), 200, 204)
    for kind, response in (("request", simple), ("preflight", preflight)):
        acao = response.headers.get("access-control-allow-origin")
        if acao != origin:
            raise CheckFailed(f"{kind}: Access-Control-Allow-Origin is {acao!r}, expected {origin!r}")
    return f"ACAO echoes {origin} on requests and preflights"


@security("security: CORS refuses another origin")
def _cors_refused(s: SmokeSession) -> str:
    for kind, response in (
        ("request", s.session().get("/api/v1/auth/me", headers={"Origin": EVIL_ORIGIN})),
        ("preflight", _preflight(s, EVIL_ORIGIN)),
    ):
        acao = response.headers.get("access-control-allow-origin")
        if acao is not None or response.status_code >= 500:
            raise CheckFailed(f"{kind}: {response.status_code}, Access-Control-Allow-Origin {acao!r} for {EVIL_ORIGIN}")
    return f"no ACAO for {EVIL_ORIGIN} on requests or preflights"


@security("security: input validation")
def _input_validation(s: SmokeSession) -> str:
    client, headers = s.session(), {"Content-Type": "application/json"}
    for label, body, codes in (
        ("malformed JSON", b'{"type": "smoke", ', (400,)),
        ("body over 64 KiB", json.dumps({"type": "smoke", "payload": {"pad": "x" * 70_000}}).encode(), (400, 413)),
    ):
        response = client.post("/api/v1/events", content=body, headers=headers)
        if response.status_code not in codes:
            raise CheckFailed(f"{label}: expected {'/'.join(map(str, codes))}, got {response.status_code}")
        if not isinstance(body_json(response), dict) or "error" not in response.json():
            raise CheckFailed(f"{label}: error body is not JSON with an 'error' field")
    return "malformed JSON 400 and oversized body rejected, with JSON errors"


@security("security: SQL injection probes")
def _sql_injection(s: SmokeSession) -> str:
    client = s.session()
    before = body_json(expect(client.get("/api/v1/events", params={"limit": 1}), 200)).get("total", 0)
    probes = [
        client.post("/api/v1/events", json={"type": SQL_PROBE, "source": f"smoke-{s.tag}", "payload": {}}),
        client.get("/api/v1/events", params={"limit": "1;DROP TABLE events"}),
        client.get("/api/v1/events", params={"severity": SQL_PROBE, "type": SQL_PROBE, "limit": 1}),
        client.get(f"/api/v1/events/{SQL_PROBE}"),
    ]
    for response in probes:
        s.last = response
        leaked = [m for m in DB_ERROR_MARKERS if m in response.text.lower()]
        if response.status_code >= 500 or leaked:
            raise CheckFailed(
                f"{response.request.method} {response.request.url.raw_path.decode()} -> "
                f"{response.status_code}{' leaking ' + str(leaked) if leaked else ''}"
            )
    if probes[0].status_code == 201:
        s.created_events.append(str(probes[0].json().get("id")))
        if probes[0].json().get("type") != SQL_PROBE:
            raise CheckFailed("the probe was not stored verbatim as data")
    after = body_json(expect(client.get("/api/v1/events", params={"limit": 1}), 200)).get("total", 0)
    if after < before:
        raise CheckFailed(f"events total fell from {before} to {after}")
    return f"no 5xx, no database errors, {after} events still there"


@security("security: XSS probe comes back escaped")
def _xss(s: SmokeSession) -> str:
    created = s.create_event(payload={"note": XSS_PROBE})
    for response in (s.last, s.session().get(f"/api/v1/events/{created['id']}")):
        s.last = response
        expect(response, 200, 201)
        if "<script>" in response.text.lower():
            raise CheckFailed(f"{response.request.method} returns a literal <script> in the body")
        if not response.headers.get("content-type", "").startswith("application/json"):
            raise CheckFailed(f"content-type is {response.headers.get('content-type')!r}")
        if response.headers.get("x-content-type-options", "").lower() != "nosniff":
            raise CheckFailed("no X-Content-Type-Options: nosniff")
    if (body_json(response).get("payload") or {}).get("note") != XSS_PROBE:
        raise CheckFailed("the probe did not round-trip as data")
    return "JSON-escaped, application/json, nosniff"


def rate_limit(s: SmokeSession, attempts: int, wait_max_s: float) -> str:
    """Bad logins until 429 (bounded), then wait out Retry-After so the next gates are not throttled."""
    deadline = time.monotonic() + 60
    body = {"username": f"smoke-ratelimit-{s.tag}", "password": "not-the-password"}
    with s.new_client() as anon:
        for sent in range(1, max(attempts, 1) + 1):  # noqa: B007 (the count is reported after the loop)
            response = anon.post("/api/v1/auth/login", json=body)
            if response.status_code == 429 or response.status_code >= 500 or time.monotonic() > deadline:
                break
    if response.status_code != 429:
        raise CheckFailed(f"no 429 after {sent} failed logins (last {response.status_code})")
    retry_after = response.headers.get("retry-after", "")
    wait = retry_after_seconds(retry_after)
    if wait is None:
        raise CheckFailed(f"429 without a usable Retry-After (got {retry_after!r})")
    waited = min(wait, wait_max_s)
    time.sleep(waited)
    return f"429 after {sent} attempts, Retry-After {retry_after} (waited {waited:.0f} s)"
