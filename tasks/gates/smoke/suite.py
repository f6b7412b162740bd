"""The smoke gate: the ``run_smoke_suite`` task and the table of checks it runs.

The functional checks (the guide's auth, events, errors, notifications, health and metrics
coverage) are defined here; the security checks come from ``tasks.gates.smoke.security``, the
session they share from ``tasks.gates.smoke.session``. Every check is named and fails alone with
its reason; the others still run. The functional checks run in order (later ones reuse what
earlier ones created); the security checks are independent and run concurrently; the rate-limit
check runs last, alone. The flow decides on the report.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.environment import StagingEnvironment
from tasks.core.models import CheckResult, GateReport, Verdict
from tasks.core.run_log import run_logger
from tasks.core.stages import Stage
from tasks.gates.evidence import publish_table
from tasks.gates.health import health_problem
from tasks.gates.smoke.security import (
    SECURITY_CHECKS,
    certificate_expiry,
    certificate_verifies,
    rate_limit,
)
from tasks.gates.smoke.session import (
    CheckFailed,
    SmokeCheck,
    SmokeSession,
    body_json,
    created_body,
    expect,
    items_of,
    registry,
    run_check,
)

FUNCTIONAL_CHECKS: list[tuple[str, SmokeCheck]] = []
smoke = registry(FUNCTIONAL_CHECKS)

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
        return created_body(anon.post("/api/v1/errors", json=body), "error")


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
    return created_body(s.session().post("/api/v1/notifications", json=body), "notification")


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
    problem = health_problem(response)  # the health gate's own judgement
    if problem:
        raise CheckFailed(problem)
    return ", ".join(f"{k}=healthy" for k in response.json()["components"])


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


# The checks that need only the session, in the order they are reported.
SMOKE_CHECKS: list[tuple[str, SmokeCheck]] = FUNCTIONAL_CHECKS + SECURITY_CHECKS
CERTIFICATE_CHAIN = "security: TLS certificate chain and hostname verify"
CERTIFICATE_EXPIRY = "security: TLS certificate not expiring soon"
RATE_LIMIT = "security: rate limiting"
# Enough threads that the security checks' round trips overlap; each is a handful of requests.
SECURITY_WORKERS = 16


def _run_concurrently(s: SmokeSession, checks: list[tuple[str, Callable[[], str]]]) -> list[CheckResult]:
    with ThreadPoolExecutor(max_workers=SECURITY_WORKERS, thread_name_prefix="smoke-security") as pool:
        futures = [pool.submit(run_check, s, name, fn) for name, fn in checks]
        return [f.result() for f in futures]  # in the order they were listed


@task(cache_policy=NO_CACHE)
def run_smoke_suite(
    environment: StagingEnvironment,
    http_url: str | None = None,
    min_cert_days: float = 14,
    cert_warning_days: float | None = None,
    rate_limit_attempts: int = 100,
    rate_limit_wait_max_s: float = 10,
) -> GateReport:
    """The guide's smoke coverage and the client-visible half of its security checklist.

    Writes data (events, errors, notifications tagged with a run id; events and
    notifications are deleted again). The rate-limit check runs last and waits out its
    ``Retry-After`` (at most ``rate_limit_wait_max_s``) so the next gate is not throttled.
    ``http_url`` is the balancer's plain-HTTP address for the HTTPS-redirect check; without
    it the environment's ``api_http_url`` is used, else it is derived from a default port.
    A certificate with fewer than ``min_cert_days`` left fails; with fewer than
    ``cert_warning_days`` (default: the environment's ``cert_warning_days``) its row is a
    warning that does not block.
    """
    logger = run_logger()
    s = SmokeSession(environment, http_url)
    warn_days = environment.cert_warning_days if cert_warning_days is None else cert_warning_days
    warned: list[bool] = []

    def expiry() -> str:
        detail, warning = certificate_expiry(s, min_cert_days, warn_days)
        warned.append(warning)
        return detail

    functional = [(name, lambda fn=fn: fn(s)) for name, fn in FUNCTIONAL_CHECKS]
    concurrent: list[tuple[str, Callable[[], str]]] = [
        (CERTIFICATE_CHAIN, lambda: certificate_verifies(s)),
        (CERTIFICATE_EXPIRY, expiry),
    ] + [(name, lambda fn=fn: fn(s)) for name, fn in SECURITY_CHECKS]
    report = GateReport(stage=Stage.SMOKE)

    def record(result: CheckResult) -> None:
        if result.name == CERTIFICATE_EXPIRY and result.verdict == Verdict.PASS and any(warned):
            # A warning row: shown as not passing, never blocking the gate.
            result = result.model_copy(update={"verdict": Verdict.FAIL, "required": False})
        logger.info("smoke %s: %s (%s)", result.verdict.value, result.name, result.request)
        report.checks.append(result)

    try:
        for name, fn in functional:
            record(run_check(s, name, fn))
        with contextlib.suppress(CheckFailed, httpx.HTTPError):
            s.session()  # one login before the threads start, not a race of them
        for result in _run_concurrently(s, concurrent):
            record(result)
        record(run_check(s, RATE_LIMIT, lambda: rate_limit(s, rate_limit_attempts, rate_limit_wait_max_s)))
    finally:
        for event_id in s.created_events:  # best effort: the smoke run leaves no events behind
            with contextlib.suppress(httpx.HTTPError):
                s.client.delete(f"/api/v1/events/{event_id}")
        s.client.close()
    publish_table(
        report,
        "smoke-gate",
        lambda c: (
            c.model_dump(include={"name", "verdict", "request", "detail", "response"})
            | ({} if c.required else {"verdict": "warning"})
        ),
    )
    return report
