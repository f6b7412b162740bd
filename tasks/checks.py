"""The health, smoke and security gates: what a client of the deployed API can check.

Every check is named, independent (it catches its own errors and fails with the reason) and
records the requests it made (method + path, never credentials) and, on failure, what came
back (status + the first 300 characters of the body, secrets redacted). The flow decides.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

import httpx
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError

from blocks.environment import StagingEnvironment
from tasks.models import CheckResult, GateReport, Verdict

EXCERPT_CHARS = 300
XSS_PROBE = "<script>alert(1)</script>"
SQL_PROBE = "' OR 1=1 --"
EVIL_ORIGIN = "https://evil.example"  # only ever an Origin header value: no traffic goes there
DB_ERROR_MARKERS = ("syntax error at or near", "pq: ", "sqlstate", "unterminated quoted string")


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a run, a module logger when called as ``.fn`` in tests."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def publish_table(report: GateReport, key: str, columns: Callable[[CheckResult], dict]) -> None:
    """The gate's table artifact; only inside a task run (a plain ``.fn`` call has no API to write to)."""
    if TaskRunContext.get() is None:
        return
    create_table_artifact(
        table=[columns(c) for c in report.checks], key=key, description=f"{report.summary()}"
    )


class Redactor:
    """Replaces every known secret (and every session token seen) with ``***``."""

    def __init__(self, secrets: list[str]):
        self.secrets = [s for s in secrets if s]

    def __call__(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


def environment_secrets(environment: StagingEnvironment) -> list[str]:
    try:
        return environment.secret_values()
    except Exception:  # a partly configured block still has the smoke password to hide
        return [environment.smoke_password.get_secret_value()]


def excerpt(response: httpx.Response, redact: Redactor) -> str:
    try:
        body = response.read().decode("utf-8", "replace")
    except Exception as exc:  # a body cut off mid-stream is still worth a status line
        body = f"<body unreadable: {exc}>"
    return redact(f"{response.status_code} {body[:EXCERPT_CHARS]}")


# --------------------------------------------------------------------------- health


def _health_problem(response: httpx.Response) -> str | None:
    """None when /health says healthy with every component healthy, else what is wrong."""
    if response.status_code != 200:
        return f"status {response.status_code}"
    try:
        body = response.json()
    except ValueError:
        return "body is not JSON"
    if body.get("status") != "healthy":
        return f"status field is {body.get('status')!r}"
    components = body.get("components") or {}
    if not components:
        return "no components reported"
    bad = {k: v for k, v in components.items() if v != "healthy"}
    return f"components not healthy: {bad}" if bad else None


@task(cache_policy=NO_CACHE)
def check_health(environment: StagingEnvironment, replica_urls: list[str], deadline_s: float) -> GateReport:
    """``/health`` of every replica (plain HTTP on loopback) and of the load-balanced API URL.

    Each URL is polled until it answers healthy or the shared deadline passes, so a replica
    that is still restarting gets its chance. Observes only; it loops itself instead of retrying.
    """
    logger = run_logger()
    redact = Redactor(environment_secrets(environment))
    deadline = time.monotonic() + deadline_s
    targets = [(f"replica {u}", u, True) for u in replica_urls]
    targets.append((f"load balancer {environment.api_url}", str(environment.api_url), environment.ssl_context()))
    report = GateReport(stage="health")
    for name, base, verify in targets:
        url = base.rstrip("/") + "/health"
        attempts, problem, last = 0, "not asked", ""
        with httpx.Client(verify=verify, timeout=5.0) as client:
            while True:
                attempts += 1
                try:
                    response = client.get(url)
                    problem, last = _health_problem(response), excerpt(response, redact)
                except httpx.HTTPError as exc:
                    problem, last = f"{type(exc).__name__}: {exc}", ""
                if problem is None or time.monotonic() >= deadline:
                    break
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        logger.info("GET %s -> %s after %d attempt(s)", url, problem or "healthy", attempts)
        report.checks.append(
            CheckResult(
                name=name,
                verdict=Verdict.PASS if problem is None else Verdict.FAIL,
                detail=f"healthy (attempt {attempts})" if problem is None else f"{problem} after {attempts} attempt(s)",
                request=f"GET {urlsplit(url).path}",
                response="" if problem is None else redact(last),
            )
        )
    publish_table(report, "health-gate", lambda c: c.model_dump(include={"name", "verdict", "detail", "response"}))
    return report


# --------------------------------------------------------------------------- smoke


class CheckFailed(Exception):
    """Raised inside a smoke check: the check fails with this reason."""


def expect(response: httpx.Response, *codes: int) -> httpx.Response:
    if response.status_code not in codes:
        raise CheckFailed(f"expected {'/'.join(map(str, codes))}, got {response.status_code}")
    return response


def body_json(response: httpx.Response):
    try:
        return response.json()
    except ValueError:
        raise CheckFailed(f"{response.request.method} {response.request.url.path}: body is not JSON") from None


def items_of(body) -> list:
    items = body if isinstance(body, list) else (body or {}).get("items")
    if not isinstance(items, list):
        raise CheckFailed("list response has no 'items' array")
    return items


class SmokeSession:
    """State shared by the smoke checks: one logged-in client, created ids, a request log."""

    def __init__(self, environment: StagingEnvironment, http_url: str | None):
        self.env = environment
        self.base = str(environment.api_url).rstrip("/")
        self.http_url = http_url
        self.verify = environment.ssl_context()
        self.redact = Redactor(environment_secrets(environment))
        self.tag = uuid.uuid4().hex[:8]  # marks this run's data
        self.requests: list[str] = []
        self.last: httpx.Response | None = None
        self.token: str | None = None
        self.login_cookie: str | None = None
        self.ids: dict[str, str] = {}
        self.created_events: list[str] = []
        self.client = self.new_client()

    def new_client(self, base_url: str | None = None) -> httpx.Client:
        hooks = {"request": [self._on_request], "response": [self._on_response]}
        return httpx.Client(base_url=base_url or self.base, verify=self.verify, timeout=10.0, event_hooks=hooks)

    def _on_request(self, request: httpx.Request) -> None:
        where = request.url.raw_path.decode()
        if not str(request.url).startswith(self.base):  # another listener (the plain-HTTP port): say which
            where = f"{request.url.scheme}://{request.url.netloc.decode()}{where}"
        self.requests.append(f"{request.method} {where}")

    def _on_response(self, response: httpx.Response) -> None:
        self.last = response

    def login(self, client: httpx.Client | None = None) -> tuple[httpx.Response, str]:
        """Log the smoke user in; returns the response and the session token it set."""
        creds = {"username": self.env.smoke_user, "password": self.env.smoke_password.get_secret_value()}
        response = expect((client or self.client).post("/api/v1/auth/login", json=creds), 200)
        for header in response.headers.get_list("set-cookie"):
            cookie = SimpleCookie()
            cookie.load(header)
            if "session" in cookie and cookie["session"].value:
                self.redact.secrets.append(cookie["session"].value)
                return response, cookie["session"].value
        raise CheckFailed("login answered 200 but set no 'session' cookie")

    def session(self) -> httpx.Client:
        """The logged-in client; logs in on first use so one failed check does not hide the rest."""
        if self.token is None:
            try:
                response, self.token = self.login()
            except (CheckFailed, httpx.HTTPError) as exc:
                raise CheckFailed(f"no session (login failed: {exc})") from None
            self.login_cookie = next(h for h in response.headers.get_list("set-cookie") if h.startswith("session="))
            self.client.headers["Cookie"] = f"session={self.token}"
        return self.client

    def create_event(self, type_: str = "smoke.check", payload: dict | None = None) -> dict:
        body = {"type": type_, "source": f"smoke-{self.tag}", "payload": payload or {"run": self.tag}}
        created = body_json(expect(self.session().post("/api/v1/events", json=body), 201))
        if not created.get("id"):
            raise CheckFailed("created event has no id")
        self.created_events.append(str(created["id"]))
        return created

    def known(self, kind: str, make: Callable[[], dict]) -> str:
        """The id an earlier check created, or a fresh one when that check failed."""
        if kind not in self.ids:
            self.ids[kind] = str(make()["id"])
        return self.ids[kind]


SmokeCheck = Callable[[SmokeSession], str]
SMOKE_CHECKS: list[tuple[str, SmokeCheck]] = []


def smoke(name: str) -> Callable[[SmokeCheck], SmokeCheck]:
    def register(fn: SmokeCheck) -> SmokeCheck:
        SMOKE_CHECKS.append((name, fn))
        return fn

    return register


# Authentication -------------------------------------------------------------


@smoke("auth: login with valid credentials")
def _login_valid(s: SmokeSession) -> str:
    s.token = None
    s.session()
    me = expect(s.client.get("/api/v1/auth/me"), 200)
    return f"logged in as {s.env.smoke_user}; /auth/me {me.status_code}"


@smoke("auth: invalid credentials return 401")
def _login_invalid(s: SmokeSession) -> str:
    with s.new_client() as anon:
        body = {"username": s.env.smoke_user, "password": f"wrong-{s.tag}"}
        expect(anon.post("/api/v1/auth/login", json=body), 401)
    return "401"


@smoke("auth: session cookie is HttpOnly, Secure, SameSite")
def _cookie_flags(s: SmokeSession) -> str:
    if s.token is None:
        s.session()
    else:  # judged from the login an earlier check made
        s.requests.append("POST /api/v1/auth/login (its Set-Cookie)")
    attrs = [a.strip().lower() for a in (s.login_cookie or "").split(";")[1:]]
    missing = [f for f in ("httponly", "secure") if f not in attrs]
    samesite = next((a.split("=", 1)[1] for a in attrs if a.startswith("samesite=")), None)
    if samesite not in ("strict", "lax"):
        missing.append(f"SameSite=Strict|Lax (got {samesite})")
    if missing:
        raise CheckFailed(f"session cookie lacks {', '.join(missing)}")
    return f"HttpOnly; Secure; SameSite={samesite.capitalize()}"


@smoke("auth: logout clears the session")
def _logout(s: SmokeSession) -> str:
    with s.new_client() as own:  # its own session: the shared one stays usable
        _, token = s.login(own)
        own.headers["Cookie"] = f"session={token}"
        expect(own.post("/api/v1/auth/logout"), 200, 204)
        expect(own.get("/api/v1/auth/me"), 401)
    return "the old cookie is refused with 401 after logout"


# Events ---------------------------------------------------------------------


@smoke("events: create")
def _event_create(s: SmokeSession) -> str:
    s.ids["event"] = str(s.create_event()["id"])
    return f"201 id={s.ids['event']}"


@smoke("events: list with pagination")
def _event_list(s: SmokeSession) -> str:
    while len(s.created_events) < 3:  # enough rows that a page of 2 must be cut
        s.create_event()
    client = s.session()
    page = body_json(expect(client.get("/api/v1/events", params={"limit": 2, "offset": 0}), 200))
    items, total = items_of(page), page.get("total")
    if page.get("limit") != 2 or page.get("offset") != 0:
        raise CheckFailed(f"limit/offset echoed as {page.get('limit')}/{page.get('offset')}, asked 2/0")
    if not isinstance(total, int) or total < 3 or len(items) != 2:
        raise CheckFailed(f"total={total}, {len(items)} items for limit=2 (expected total>=3, 2 items)")
    second = items_of(body_json(expect(client.get("/api/v1/events", params={"limit": 1, "offset": 1}), 200)))
    if len(second) != 1 or second[0].get("id") != items[1].get("id"):
        raise CheckFailed("offset=1 limit=1 did not return the second item of the first page")
    return f"total={total}; limit/offset respected"


@smoke("events: get one")
def _event_get(s: SmokeSession) -> str:
    event_id = s.known("event", s.create_event)
    got = body_json(expect(s.session().get(f"/api/v1/events/{event_id}"), 200))
    if str(got.get("id")) != event_id or got.get("source") != f"smoke-{s.tag}":
        raise CheckFailed(f"got id={got.get('id')} source={got.get('source')}, expected {event_id} smoke-{s.tag}")
    return f"200 id={event_id}"


@smoke("events: delete")
def _event_delete(s: SmokeSession) -> str:
    event_id = s.known("event", s.create_event)
    expect(s.session().delete(f"/api/v1/events/{event_id}"), 200, 204)
    expect(s.session().get(f"/api/v1/events/{event_id}"), 404)
    return "deleted; then GET 404"


# Errors ---------------------------------------------------------------------


def _report_error(s: SmokeSession, kind: str, message: str) -> dict:
    with s.new_client() as anon:  # reporting an error needs no session
        body = {"kind": kind, "message": message, "stack": "smoke"}
        created = body_json(expect(anon.post("/api/v1/errors", json=body), 201))
    if not created.get("id"):
        raise CheckFailed("created error has no id")
    return created


@smoke("errors: create without auth")
def _error_create(s: SmokeSession) -> str:
    s.ids["error"] = str(_report_error(s, f"smoke-{s.tag}", "smoke probe")["id"])
    return f"201 id={s.ids['error']}"


@smoke("errors: list")
def _error_list(s: SmokeSession) -> str:
    error_id = s.known("error", lambda: _report_error(s, f"smoke-{s.tag}", "smoke probe"))
    body = body_json(expect(s.session().get("/api/v1/errors", params={"limit": 100}), 200))
    if error_id not in {str(e.get("id")) for e in items_of(body)}:  # newest first: ours is on page one
        raise CheckFailed(f"error {error_id} is not in the newest {len(items_of(body))} of the list")
    return f"listed among {body.get('total', '?')}"


@smoke("errors: resolve")
def _error_resolve(s: SmokeSession) -> str:
    error_id = s.known("error", lambda: _report_error(s, f"smoke-{s.tag}", "smoke probe"))
    response = expect(s.session().post(f"/api/v1/errors/{error_id}/resolve"), 200, 204)
    if response.status_code == 200 and body_json(response).get("resolved") is False:
        raise CheckFailed("resolve answered resolved=false")
    return f"{response.status_code}"


@smoke("errors: aggregation")
def _error_aggregate(s: SmokeSession) -> str:
    kind, message = f"smoke-agg-{s.tag}", "aggregation probe"
    for _ in range(2):
        _report_error(s, kind, message)
    groups = body_json(expect(s.session().get("/api/v1/errors/aggregate"), 200)).get("groups") or []
    count = next((g.get("count", 0) for g in groups if g.get("kind") == kind and g.get("message") == message), 0)
    if count < 2:
        raise CheckFailed(f"two errors of one kind+message aggregate to count={count}")
    return f"count={count}"


# Notifications --------------------------------------------------------------


def _notifications(s: SmokeSession) -> dict[str, dict]:
    body = body_json(expect(s.session().get("/api/v1/notifications", params={"limit": 100}), 200))
    return {str(n.get("id")): n for n in items_of(body)}


def _new_notification(s: SmokeSession) -> dict:
    body = {"title": f"smoke {s.tag}", "body": "smoke probe"}
    created = body_json(expect(s.session().post("/api/v1/notifications", json=body), 201))
    if not created.get("id"):
        raise CheckFailed("created notification has no id")
    return created


@smoke("notifications: create")
def _notification_create(s: SmokeSession) -> str:
    s.ids["notification"] = str(_new_notification(s)["id"])
    return f"201 id={s.ids['notification']}"


@smoke("notifications: list")
def _notification_list(s: SmokeSession) -> str:
    note_id = s.known("notification", lambda: _new_notification(s))
    if note_id not in _notifications(s):
        raise CheckFailed(f"notification {note_id} is not in the list")
    return "listed"


@smoke("notifications: mark as read")
def _notification_read(s: SmokeSession) -> str:
    note_id = s.known("notification", lambda: _new_notification(s))
    expect(s.session().post(f"/api/v1/notifications/{note_id}/read"), 200, 204)
    if _notifications(s).get(note_id, {}).get("read") is not True:
        raise CheckFailed("the list does not show it read afterwards")
    return "read=true"


@smoke("notifications: delete")
def _notification_delete(s: SmokeSession) -> str:
    note_id = s.known("notification", lambda: _new_notification(s))
    expect(s.session().delete(f"/api/v1/notifications/{note_id}"), 200, 204)
    if note_id in _notifications(s):
        raise CheckFailed("still listed after delete")
    return "deleted; no longer listed"


# Health ---------------------------------------------------------------------


@smoke("health: returns 200")
def _health_200(s: SmokeSession) -> str:
    expect(s.client.get("/health"), 200)
    return "200"


@smoke("health: all components healthy")
def _health_components(s: SmokeSession) -> str:
    response = s.client.get("/health")
    body = body_json(response) if response.status_code in (200, 503) else {}
    components = body.get("components") or {}
    bad = {k: v for k, v in components.items() if v != "healthy"}
    if not components or bad or body.get("status") != "healthy":
        raise CheckFailed(f"status={body.get('status')!r} components={components}")
    return ", ".join(f"{k}=healthy" for k in components)


@smoke("health: metrics endpoint responds")
def _metrics_endpoint(s: SmokeSession) -> str:
    response = expect(s.client.get("/metrics"), 200)
    if "http_requests_total" not in response.text:
        raise CheckFailed("no http_requests_total in /metrics")
    return f"{len(response.text.splitlines())} lines of Prometheus text"


@smoke("health: database connection works")
def _database(s: SmokeSession) -> str:
    event_id = str(s.create_event(payload={"persisted": s.tag})["id"])
    for _ in range(4):  # fresh connections: the balancer spreads them over the replicas
        with s.new_client() as fresh:
            fresh.headers["Cookie"] = f"session={s.token}"
            got = body_json(expect(fresh.get(f"/api/v1/events/{event_id}"), 200))
            if (got.get("payload") or {}).get("persisted") != s.tag:
                raise CheckFailed(f"event {event_id} came back without its payload")
    return "written once, read back 4 times over fresh connections"


# Security (the guide's checklist, as far as a client can see it) -------------


def _http_base(s: SmokeSession) -> str:
    """The plain-HTTP address of the balancer: given, configured, or derived when the port is default."""
    configured = s.http_url or s.env.api_http_url
    if configured:
        return str(configured).rstrip("/")
    parts = urlsplit(s.base)
    if parts.port not in (None, 443):
        raise CheckFailed(f"no http URL known for {s.base} (port {parts.port}): set api_http_url")
    return f"http://{parts.hostname}"


@smoke("security: HTTPS enforced")
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


def _certificate(s: SmokeSession, min_days: float) -> str:
    parts = urlsplit(s.base)
    host, port = parts.hostname or "", parts.port or 443
    s.requests.append(f"TLS handshake {host}:{port}")
    try:  # create_default_context verifies the chain and the hostname
        with socket.create_connection((host, port), timeout=10) as raw:
            with s.verify.wrap_socket(raw, server_hostname=host) as tls:
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


@smoke("security: CORS allows the configured origin")
def _cors_allowed(s: SmokeSession) -> str:
    origin = s.env.allowed_origin
    simple = expect(s.session().get("/api/v1/auth/me", headers={"Origin": origin}), 200)
    preflight = expect(_preflight(s, origin), 200, 204)
    for kind, response in (("request", simple), ("preflight", preflight)):
        acao = response.headers.get("access-control-allow-origin")
        if acao != origin:
            raise CheckFailed(f"{kind}: Access-Control-Allow-Origin is {acao!r}, expected {origin!r}")
    return f"ACAO echoes {origin} on requests and preflights"


@smoke("security: CORS refuses another origin")
def _cors_refused(s: SmokeSession) -> str:
    for kind, response in (("request", s.session().get("/api/v1/auth/me", headers={"Origin": EVIL_ORIGIN})),
                           ("preflight", _preflight(s, EVIL_ORIGIN))):
        acao = response.headers.get("access-control-allow-origin")
        if acao is not None or response.status_code >= 500:
            raise CheckFailed(f"{kind}: {response.status_code}, Access-Control-Allow-Origin {acao!r} for {EVIL_ORIGIN}")
    return f"no ACAO for {EVIL_ORIGIN} on requests or preflights"


@smoke("security: input validation")
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


@smoke("security: SQL injection probes")
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
            raise CheckFailed(f"{response.request.method} {response.request.url.raw_path.decode()} -> "
                              f"{response.status_code}{' leaking ' + str(leaked) if leaked else ''}")
    if probes[0].status_code == 201:
        s.created_events.append(str(probes[0].json().get("id")))
        if probes[0].json().get("type") != SQL_PROBE:
            raise CheckFailed("the probe was not stored verbatim as data")
    after = body_json(expect(client.get("/api/v1/events", params={"limit": 1}), 200)).get("total", 0)
    if after < before:
        raise CheckFailed(f"events total fell from {before} to {after}")
    return f"no 5xx, no database errors, {after} events still there"


@smoke("security: XSS probe comes back escaped")
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


def _rate_limit(s: SmokeSession, attempts: int, wait_max_s: float) -> str:
    """Bad logins until 429 (bounded), then wait out Retry-After so the next gates are not throttled."""
    deadline = time.monotonic() + 60
    body = {"username": f"smoke-ratelimit-{s.tag}", "password": "not-the-password"}
    with s.new_client() as anon:
        for sent in range(1, max(attempts, 1) + 1):
            response = anon.post("/api/v1/auth/login", json=body)
            if response.status_code == 429 or response.status_code >= 500 or time.monotonic() > deadline:
                break
    if response.status_code != 429:
        raise CheckFailed(f"no 429 after {sent} failed logins (last {response.status_code})")
    retry_after = response.headers.get("retry-after", "")
    try:
        wait = float(retry_after)
    except ValueError:
        try:
            wait = (parsedate_to_datetime(retry_after) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError):
            raise CheckFailed(f"429 without a usable Retry-After (got {retry_after!r})") from None
    time.sleep(min(max(wait, 0.0), wait_max_s))
    return f"429 after {sent} attempts, Retry-After {retry_after} (waited {min(max(wait, 0), wait_max_s):.0f} s)"


def _run_check(s: SmokeSession, name: str, fn: Callable[[], str]) -> CheckResult:
    s.requests, s.last = [], None
    try:
        verdict, detail, response = Verdict.PASS, fn(), ""
    except Exception as exc:  # each check fails alone with its reason; the others still run
        reason = str(exc) if isinstance(exc, CheckFailed) else f"{type(exc).__name__}: {exc}"
        verdict, detail = Verdict.FAIL, reason
        response = excerpt(s.last, s.redact) if s.last is not None else ""
    seen: list[str] = []
    for r in s.requests:
        seen += [] if r in seen else [r]
    request = ", ".join(f"{r} x{s.requests.count(r)}" if s.requests.count(r) > 1 else r for r in seen)
    return CheckResult(name=name, verdict=verdict, detail=s.redact(detail), request=s.redact(request)[:500],
                       response=s.redact(response))


@task(cache_policy=NO_CACHE)
def run_smoke_suite(
    environment: StagingEnvironment,
    http_url: str | None = None,
    min_cert_days: float = 14,
    rate_limit_attempts: int = 100,
    rate_limit_wait_max_s: float = 10,
) -> GateReport:
    """The guide's smoke coverage and the client-visible half of its security checklist.

    Writes data (events, errors, notifications tagged with a run id; events and
    notifications are deleted again). The rate-limit check runs last and waits out its
    ``Retry-After`` (at most ``rate_limit_wait_max_s``) so the next gate is not throttled.
    ``http_url`` is the balancer's plain-HTTP address for the HTTPS-redirect check; without
    it the environment's ``api_http_url`` is used, else it is derived from a default port.
    """
    logger = run_logger()
    s = SmokeSession(environment, http_url)
    checks: list[tuple[str, Callable[[], str]]] = [(name, lambda fn=fn: fn(s)) for name, fn in SMOKE_CHECKS]
    checks.insert(next(i for i, (n, _) in enumerate(checks) if n.startswith("security: CORS")),
                  ("security: certificate valid", lambda: _certificate(s, min_cert_days)))
    checks.append(("security: rate limiting", lambda: _rate_limit(s, rate_limit_attempts, rate_limit_wait_max_s)))
    report = GateReport(stage="smoke")
    try:
        for name, fn in checks:
            result = _run_check(s, name, fn)
            logger.info("smoke %s: %s (%s)", result.verdict.value, name, result.request)
            report.checks.append(result)
    finally:
        for event_id in s.created_events:  # best effort: the smoke run leaves no events behind
            try:
                s.client.delete(f"/api/v1/events/{event_id}")
            except httpx.HTTPError:
                pass
        s.client.close()
    publish_table(report, "smoke-gate", lambda c: c.model_dump(include={"name", "verdict", "request", "detail", "response"}))
    return report
