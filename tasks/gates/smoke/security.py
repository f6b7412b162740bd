"""The security checks: the client-visible half of the guide's security checklist, as an attacker runs it.

Five classes, each probe its own row with the request it made and, when it fails, the response:

- CORS: the configured origin is echoed exactly; a foreign origin, ``null``, the allowed origin
  extended by prefix, suffix, port or path, a sibling subdomain and the allowed host over
  ``http://`` are refused, each on a simple (credentialed) request and on a preflight.
- TLS: TLS 1.0 and 1.1 refused, the chain and hostname verify against the environment's CA, the
  certificate is not about to expire (a warning row inside the warning window), plain HTTP
  redirects to HTTPS, HSTS on HTTPS responses.
- Headers: ``nosniff`` everywhere, JSON never as ``text/html``, no server or framework banners.
- Input: SQL metacharacters in every query and path parameter answered 4xx, never 5xx; an
  oversized body, malformed JSON, an unknown method; a scripted body echoed only as JSON.
- Auth: the cookie flags and the logout are functional checks (``suite``); the login limiter is
  ``rate_limit``, run last because it spends the limiter's budget.

``SECURITY_CHECKS`` are independent of each other (the suite runs them concurrently) and need
only the session; ``certificate_*`` and ``rate_limit`` take the suite's parameters.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import ssl
import threading
import time
import warnings
from urllib.parse import quote, urlsplit

import httpx
from cryptography import x509

from tasks.core.errors import Inconclusive
from tasks.core.http import retry_after_seconds
from tasks.gates.smoke.session import CheckFailed, SmokeCheck, SmokeSession, body_json, expect, registry

XSS_PROBE = "<script>alert(1)</script>"
SQL_PROBE = "' OR 1=1 --"
# Values with SQL metacharacters for typed parameters: quotes, comments, statement breaks.
SQL_METACHARACTERS = ("'", "' OR '1'='1", "1;DROP TABLE events--", "1) OR (1=1", '1"\\')
EVIL_ORIGIN = "https://evil.example"  # only ever an Origin header value: no traffic goes there
DB_ERROR_MARKERS = ("syntax error at or near", "pq: ", "sqlstate", "unterminated quoted string")
MIN_HSTS_MAX_AGE = 86_400  # a day: shorter protects nobody who comes back tomorrow

# The API's parameters, as its routes take them (every one typed: a metacharacter is invalid).
QUERY_PARAMETERS = {
    "/api/v1/events": ("limit", "offset", "severity"),
    "/api/v1/errors": ("limit", "offset", "resolved"),
    "/api/v1/notifications": ("limit", "offset"),
}
PATH_PARAMETERS = (
    ("GET", "/api/v1/events/{}"),
    ("DELETE", "/api/v1/events/{}"),
    ("POST", "/api/v1/errors/{}/resolve"),
    ("POST", "/api/v1/notifications/{}/read"),
    ("DELETE", "/api/v1/notifications/{}"),
)
# Headers that name a server or framework; any value is a banner.
BANNER_HEADERS = ("x-powered-by", "x-aspnet-version", "x-aspnetmvc-version", "x-generator", "x-runtime-version")
# A product with a version number anywhere in a header value: nginx/1.22.1, Go/1.19, PHP/8.2 ...
VERSIONED_PRODUCT = re.compile(r"[A-Za-z][A-Za-z0-9._-]*[/ ]v?\d+(\.\d+)+")

# TLS alerts and errors with which a server turns an old protocol version away.
SERVER_REFUSALS = {
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "UNSUPPORTED_PROTOCOL",
    "WRONG_VERSION_NUMBER",
    "SSLV3_ALERT_HANDSHAKE_FAILURE",
    "TLSV1_ALERT_INSUFFICIENT_SECURITY",
}
# Errors that mean this client could not offer the version at all: nothing was learnt.
CLIENT_CANNOT_OFFER = {"NO_PROTOCOLS_AVAILABLE", "NO_CIPHERS_AVAILABLE", "NO_SUITABLE_SIGNATURE_ALGORITHM"}

SECURITY_CHECKS: list[tuple[str, SmokeCheck]] = []
security = registry(SECURITY_CHECKS)
# warnings.catch_warnings swaps process-wide state: the probes' setup takes turns.
_WARNINGS_LOCK = threading.Lock()


def _probe_text(response: httpx.Response) -> str:
    return f"{response.request.method} {response.request.url.raw_path.decode()} -> {response.status_code}"


# TLS -----------------------------------------------------------------------------------------


def _tls_address(s: SmokeSession) -> tuple[str, int]:
    parts = urlsplit(s.base)
    if parts.scheme != "https":
        raise CheckFailed(f"api_url {s.base} is not https")
    return parts.hostname or "", parts.port or 443


def _handshake(s: SmokeSession, context: ssl.SSLContext, what: str) -> ssl.SSLSocket:
    host, port = _tls_address(s)
    s.requests.append(f"TLS handshake {host}:{port} ({what})")
    try:
        raw = socket.create_connection((host, port), timeout=5)
    except OSError as exc:
        raise Inconclusive(f"cannot connect to {host}:{port}: {exc}") from None
    try:
        return context.wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise


def _old_protocol_refused(s: SmokeSession, version: ssl.TLSVersion, label: str) -> str:
    """Offer only ``version``; the server must refuse it. A client that cannot offer it learns nothing."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # only the version is asked about
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # deprecated is the point of the probe
            context.minimum_version = context.maximum_version = version
        # Debian's OpenSSL offers no TLS 1.0/1.1 cipher at the default level: lower it for this probe only.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError) as exc:
        raise Inconclusive(f"this client cannot offer {label}: {exc}") from None
    try:
        with _handshake(s, context, f"offering only {label}") as tls:
            negotiated = tls.version()
    except ssl.SSLError as exc:
        if exc.reason in SERVER_REFUSALS:
            return f"refused: {exc.reason}"
        if exc.reason in CLIENT_CANNOT_OFFER:
            raise Inconclusive(f"this client cannot offer {label} ({exc.reason})") from None
        raise Inconclusive(f"handshake ended with {exc.reason or exc}: not a clear refusal") from None
    except (ConnectionResetError, BrokenPipeError) as exc:  # hung up on the ClientHello: a refusal too
        return f"refused: the server closed the connection ({type(exc).__name__})"
    raise CheckFailed(f"the server accepted a {negotiated} handshake")


@security("security: TLS 1.0 refused")
def _tls10(s: SmokeSession) -> str:
    return _old_protocol_refused(s, ssl.TLSVersion.TLSv1, "TLS 1.0")


@security("security: TLS 1.1 refused")
def _tls11(s: SmokeSession) -> str:
    return _old_protocol_refused(s, ssl.TLSVersion.TLSv1_1, "TLS 1.1")


def certificate_verifies(s: SmokeSession) -> str:
    """The chain verifies against the environment's CA and the certificate names the API's host."""
    try:  # the environment's context verifies the chain and, with server_hostname, the hostname
        with _handshake(s, s.verify, "chain and hostname verified") as tls:
            cert, version = tls.getpeercert(), tls.version()
    except ssl.SSLCertVerificationError as exc:
        raise CheckFailed(f"TLS handshake failed: certificate verify failed: {exc.verify_message or exc}") from None
    except ssl.SSLError as exc:
        raise CheckFailed(f"TLS handshake failed: {exc}") from None
    subject = dict(x[0] for x in cert.get("subject", ()))
    return f"chain and hostname verify ({version}); CN={subject.get('commonName', '?')}"


def certificate_expiry(s: SmokeSession, min_days: float, warn_days: float) -> tuple[str, bool]:
    """Days until the served certificate expires: a failure below ``min_days``, a warning below
    ``warn_days``. Read without verifying, so an untrusted chain does not hide its expiry."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with _handshake(s, context, "reading the certificate") as tls:
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLError as exc:
        raise CheckFailed(f"TLS handshake failed: {exc}") from None
    if not der:
        raise CheckFailed("the server sent no certificate")
    not_after = x509.load_der_x509_certificate(der).not_valid_after_utc
    days = (not_after - dt.datetime.now(dt.UTC)).total_seconds() / 86400
    when = not_after.strftime("%Y-%m-%d %H:%M UTC")
    if days < min_days:
        raise CheckFailed(f"certificate expires in {days:.1f} days (< {min_days:g}) on {when}")
    if days < warn_days:
        return f"warning: certificate expires in {days:.1f} days (< {warn_days:g}) on {when}", True
    return f"{days:.0f} days left (expires {when})", False


def _http_base(s: SmokeSession) -> str:
    """The plain-HTTP address of the balancer: given, configured, or derived when the port is default."""
    configured = s.http_url or s.env.api_http_url
    if configured:
        return str(configured).rstrip("/")
    parts = urlsplit(s.base)
    if parts.port not in (None, 443):
        raise CheckFailed(f"no http URL known for {s.base} (port {parts.port}): set api_http_url")
    return f"http://{parts.hostname}"


@security("security: HTTP redirects to HTTPS")
def _https_redirect(s: SmokeSession) -> str:
    seen = []
    with s.new_client(_http_base(s)) as plain:
        for path in ("/health", "/api/v1/auth/me"):
            response = plain.get(path)
            s.last = response
            if response.status_code not in (301, 302, 307, 308):
                raise CheckFailed(f"plain HTTP {path} answered {response.status_code}, not a redirect")
            location = response.headers.get("location", "")
            if not location.startswith("https://") or not location.endswith(path):
                raise CheckFailed(f"plain HTTP {path} redirects to {location!r}, not to https and the same path")
            seen.append(f"{response.status_code} -> {location}")
    return "; ".join(seen)


@security("security: HSTS on HTTPS responses")
def _hsts(s: SmokeSession) -> str:
    values = set()
    for response in (
        s.client.get("/health"),
        s.client.get("/api/v1/auth/me", headers={"Cookie": ""}),  # a 401 from the app
        s.client.get(f"/api/v1/no-such-route-{s.tag}"),  # a 404
    ):
        s.last = response
        hsts = response.headers.get("strict-transport-security", "")
        match = re.search(r"max-age=\"?(\d+)", hsts, re.IGNORECASE)
        if not match or int(match.group(1)) < MIN_HSTS_MAX_AGE:
            raise CheckFailed(
                f"{_probe_text(response)}: Strict-Transport-Security {hsts!r} (needs max-age >= {MIN_HSTS_MAX_AGE})"
            )
        values.add(hsts)
    return f"on 200, 401 and 404: {', '.join(sorted(values))}"


# CORS ----------------------------------------------------------------------------------------


def cors_probes(allowed: str) -> list[tuple[str, str]]:
    """(label, origin) pairs that must be refused, derived from the allowed origin."""
    parts = urlsplit(allowed)
    scheme, host = parts.scheme, parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    other_port = (parts.port or (443 if scheme == "https" else 80)) + 1
    parent = host.split(".", 1)[1] if "." in host else host
    probes = [
        ("a foreign origin", EVIL_ORIGIN),
        ("the null origin", "null"),
        ("the allowed origin extended by prefix", f"{scheme}://{host}.evil.test{port}"),
        ("the allowed origin extended by suffix", f"{scheme}://evil{host}{port}"),
        ("the allowed host on another port", f"{scheme}://{host}:{other_port}"),
        ("the allowed origin with a path", f"{allowed.rstrip('/')}/.evil.test"),
        ("a sibling subdomain", f"{scheme}://evil-sibling.{parent}{port}"),
    ]
    if scheme == "https":
        probes.append(("the allowed host over http", f"http://{host}{port}"))
    return probes


def _preflight(s: SmokeSession, origin: str) -> httpx.Response:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    return s.client.options("/api/v1/events", headers=headers)


def _simple(s: SmokeSession, origin: str) -> httpx.Response:
    """A credentialed GET, as a page on ``origin`` would send it with the user's cookie."""
    return s.session().get("/api/v1/auth/me", headers={"Origin": origin})


def _grant(response: httpx.Response) -> tuple[str | None, bool]:
    acao = response.headers.get("access-control-allow-origin")
    return acao, response.headers.get("access-control-allow-credentials", "").strip().lower() == "true"


def _cors_refused(s: SmokeSession, origin: str, kind: str) -> str:
    response = _simple(s, origin) if kind == "request" else _preflight(s, origin)
    s.last = response
    acao, credentials = _grant(response)
    with_credentials = " with credentials" if credentials else ""
    if response.status_code >= 500:
        raise CheckFailed(f"{kind} from {origin}: {response.status_code}")
    if acao is not None and acao.strip() == "*":
        raise CheckFailed(f"{kind} from {origin}: Access-Control-Allow-Origin is the wildcard{with_credentials}")
    if acao is not None and acao.strip() == origin:
        raise CheckFailed(f"{kind} from {origin}: allowed{with_credentials} (Access-Control-Allow-Origin {acao!r})")
    if acao is None:
        return f"{response.status_code}, no Access-Control-Allow-Origin"
    return f"{response.status_code}, Access-Control-Allow-Origin {acao!r} does not grant {origin}"


def _register_cors_refusals() -> None:
    # The probes depend on the environment's allowed origin, known only at run time: each row
    # derives its origin from it by label.
    labels = [label for label, _ in cors_probes("https://allowed.example")]
    for label in labels:
        for kind in ("request", "preflight"):

            def check(s: SmokeSession, label: str = label, kind: str = kind) -> str:
                origin = dict(cors_probes(s.env.allowed_origin)).get(label)
                if origin is None:  # the http probe of an allowed origin that is http already
                    return f"not applicable to {s.env.allowed_origin}"
                return _cors_refused(s, origin, kind)

            title = "simple request" if kind == "request" else "preflight"
            security(f"security: CORS {title} from {label} refused")(check)


@security("security: CORS allows the configured origin exactly")
def _cors_allowed(s: SmokeSession) -> str:
    origin = s.env.allowed_origin
    for kind, response in (("request", _simple(s, origin)), ("preflight", _preflight(s, origin))):
        s.last = response
        expect(response, 200, 204)
        acao, credentials = _grant(response)
        if acao != origin:
            wildcard = " (a wildcard" + (" with credentials" if credentials else "") + ")" if acao == "*" else ""
            raise CheckFailed(f"{kind}: Access-Control-Allow-Origin is {acao!r}{wildcard}, expected {origin!r}")
        if kind == "request" and "origin" not in response.headers.get("vary", "").lower():
            raise CheckFailed("request: the origin is echoed without Vary: Origin (caches would share it)")
    return f"Access-Control-Allow-Origin echoes {origin} exactly on requests and preflights"


_register_cors_refusals()


# Headers -------------------------------------------------------------------------------------


def _api_sample(s: SmokeSession) -> list[httpx.Response]:
    """One response of each kind the API gives: 200 JSON, 401, 404, 405, 400 and /health."""
    client = s.session()
    return [
        client.get("/health"),
        client.get("/api/v1/events", params={"limit": 1}),
        client.get("/api/v1/auth/me", headers={"Cookie": ""}),
        client.get(f"/api/v1/events/{10**12}"),
        client.get(f"/api/v1/no-such-route-{s.tag}"),
        client.request("PATCH", "/api/v1/events"),
        client.post("/api/v1/events", content=b"{", headers={"Content-Type": "application/json"}),
    ]


@security("security: X-Content-Type-Options nosniff on API responses")
def _nosniff(s: SmokeSession) -> str:
    sample = _api_sample(s)
    for response in sample:
        s.last = response
        if response.headers.get("x-content-type-options", "").strip().lower() != "nosniff":
            raise CheckFailed(f"{_probe_text(response)} has no X-Content-Type-Options: nosniff")
    return f"nosniff on all {len(sample)} kinds of response"


@security("security: JSON never served as text/html")
def _json_content_type(s: SmokeSession) -> str:
    sample = _api_sample(s)
    for response in sample:
        s.last = response
        content_type = response.headers.get("content-type", "").lower()
        if "html" in content_type:
            raise CheckFailed(f"{_probe_text(response)} is served as {content_type!r}")
        if response.content and response.request.url.path != "/metrics":
            try:
                json.loads(response.content)
            except ValueError:
                continue  # not JSON: judged by the html rule above only
            if not content_type.startswith("application/json"):
                raise CheckFailed(f"{_probe_text(response)}: a JSON body served as {content_type!r}")
    return f"{len(sample)} kinds of response: JSON as application/json, none as text/html"


@security("security: no server or framework version banners")
def _banners(s: SmokeSession) -> str:
    sample = _api_sample(s)
    with s.new_client(_http_base(s)) as plain:
        sample.append(plain.get("/health"))  # the balancer's own answer on the plain port
    for response in sample:
        s.last = response
        for name in BANNER_HEADERS:
            if name in response.headers:
                raise CheckFailed(f"{_probe_text(response)} sends {name}: {response.headers[name]}")
        for name, value in response.headers.items():
            named = name.lower() in ("server", "via") or name.lower().startswith("x-")
            if named and VERSIONED_PRODUCT.search(value):
                raise CheckFailed(f"{_probe_text(response)} names a version: {name}: {value}")
    servers = sorted({r.headers.get("server", "-") for r in sample})
    return f"{len(sample)} responses, no versions (Server: {', '.join(servers)})"


# Input ---------------------------------------------------------------------------------------


def _judge_probe(response: httpx.Response, want_4xx: bool = True) -> str | None:
    leaked = [m for m in DB_ERROR_MARKERS if m in response.text.lower()]
    if response.status_code >= 500:
        return f"{_probe_text(response)}" + (f" leaking {leaked}" if leaked else "")
    if leaked:
        return f"{_probe_text(response)} leaking {leaked}"
    if want_4xx and not 400 <= response.status_code < 500:
        return f"{_probe_text(response)}, not 4xx"
    return None


@security("security: SQL metacharacters in query parameters answered 4xx")
def _sql_query(s: SmokeSession) -> str:
    client, sent = s.session(), 0
    for path, names in QUERY_PARAMETERS.items():
        for name in names:
            for value in SQL_METACHARACTERS:
                response = client.get(path, params={name: value})
                s.last, sent = response, sent + 1
                if problem := _judge_probe(response):
                    raise CheckFailed(f"?{name}={value!r}: {problem}")
    return f"{sent} probes over {sum(map(len, QUERY_PARAMETERS.values()))} parameters: all 4xx"


@security("security: SQL metacharacters in path parameters answered 4xx")
def _sql_path(s: SmokeSession) -> str:
    client, sent = s.session(), 0
    for method, template in PATH_PARAMETERS:
        for value in SQL_METACHARACTERS:
            response = client.request(method, template.format(quote(value, safe="")))
            s.last, sent = response, sent + 1
            if problem := _judge_probe(response):
                raise CheckFailed(f"{{id}}={value!r}: {problem}")
    return f"{sent} probes over {len(PATH_PARAMETERS)} routes: all 4xx"


@security("security: SQL metacharacters in a body are stored as data")
def _sql_body(s: SmokeSession) -> str:
    client = s.session()
    response = client.post("/api/v1/events", json={"type": SQL_PROBE, "source": f"smoke-{s.tag}", "payload": {}})
    s.last = response
    if problem := _judge_probe(response, want_4xx=False):
        raise CheckFailed(problem)
    if response.status_code != 201:
        return f"refused with {response.status_code}"
    created = body_json(response)
    s.created_events.append(str(created.get("id")))
    got = body_json(expect(client.get(f"/api/v1/events/{created.get('id')}"), 200))
    if got.get("type") != SQL_PROBE:
        raise CheckFailed(f"the probe was not stored verbatim as data (type came back {got.get('type')!r})")
    return "stored and read back verbatim"


def _json_error(response: httpx.Response, label: str) -> None:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "error" not in body:
        raise CheckFailed(f"{label}: error body is not JSON with an 'error' field")


@security("security: oversized body answered 413 or 400")
def _oversized(s: SmokeSession) -> str:
    body = json.dumps({"type": "smoke", "source": f"smoke-{s.tag}", "payload": {"pad": "x" * 70_000}}).encode()
    response = s.session().post("/api/v1/events", content=body, headers={"Content-Type": "application/json"})
    s.last = response
    if response.status_code not in (400, 413):
        raise CheckFailed(f"a {len(body) // 1024} KiB body: expected 413/400, got {response.status_code}")
    _json_error(response, "oversized body")
    return f"{len(body) // 1024} KiB -> {response.status_code} with a JSON error"


@security("security: malformed JSON answered 400")
def _malformed(s: SmokeSession) -> str:
    for body in (b'{"type": "smoke", ', b"{'type': 'smoke'}", b"[1, 2"):
        response = s.session().post("/api/v1/events", content=body, headers={"Content-Type": "application/json"})
        s.last = response
        if response.status_code != 400:
            raise CheckFailed(f"{body.decode()!r}: expected 400, got {response.status_code}")
        _json_error(response, "malformed JSON")
    return "3 malformed bodies -> 400 with JSON errors"


@security("security: unknown method answered 405")
def _unknown_method(s: SmokeSession) -> str:
    client = s.session()
    for method, path in (("PUT", "/api/v1/events"), ("PATCH", "/api/v1/auth/me"), ("BREW", "/api/v1/events")):
        response = client.request(method, path)
        s.last = response
        if response.status_code != 405:
            raise CheckFailed(f"{method} {path}: expected 405, got {response.status_code}")
    return "PUT, PATCH and an invented method -> 405"


@security("security: a scripted body is echoed only as JSON")
def _xss(s: SmokeSession) -> str:
    created = s.create_event(payload={"note": XSS_PROBE})
    echoes = [s.last, s.session().get(f"/api/v1/events/{created['id']}")]
    # An error that names what it refused must not echo it raw either.
    refused = s.session().post("/api/v1/events", json={XSS_PROBE: 1, "type": "x", "source": f"smoke-{s.tag}"})
    if refused.status_code == 201:  # an API that ignores unknown fields stored it: cleaned up with the rest
        s.created_events.append(str(body_json(refused).get("id")))
    echoes.append(refused)
    for response in echoes:
        s.last = response
        if "<script" in response.text.lower():
            raise CheckFailed(f"{_probe_text(response)} returns a literal <script> in the body")
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("application/json"):
            raise CheckFailed(f"{_probe_text(response)}: content-type is {content_type!r}")
    if (body_json(echoes[1]).get("payload") or {}).get("note") != XSS_PROBE:
        raise CheckFailed("the probe did not round-trip as data")
    return "JSON-escaped, application/json, also in error messages"


# Auth ----------------------------------------------------------------------------------------


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
