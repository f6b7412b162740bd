"""The health and smoke gates: against a fake app that breaks one behaviour at a time, and the sandbox."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from blocks.database import PostgresDatabase
from blocks.docker.target import DockerTarget
from blocks.environment import StagingEnvironment
from blocks.registry import ImageRegistry
from tasks.core.models import Verdict
from tasks.core.redaction import MASK, Redactor
from tasks.gates.health import check_health, health_problem
from tasks.gates.smoke.security import certificate_expiry, cors_probes
from tasks.gates.smoke.session import SmokeSession
from tasks.gates.smoke.suite import CERTIFICATE_CHAIN, CERTIFICATE_EXPIRY, RATE_LIMIT, SMOKE_CHECKS, run_smoke_suite
from tests.support.fake_api import ALLOWED_ORIGIN, PASSWORD, FakeApi

ALL_SMOKE = [name for name, _ in SMOKE_CHECKS] + [CERTIFICATE_CHAIN, CERTIFICATE_EXPIRY, RATE_LIMIT]
CORS_LABELS = [label for label, _ in cors_probes(ALLOWED_ORIGIN)]


def cors_rows(*labels: str, kinds=("simple request", "preflight")) -> list[str]:
    return [f"security: CORS {kind} from {label} refused" for label in labels for kind in kinds]


# fault -> the checks it must fail, and no others
BREAKS = {
    "login_invalid_200": ["auth: invalid credentials return 401"],
    "cookie_no_httponly": ["auth: session cookie is HttpOnly, Secure, SameSite"],
    "logout_keeps_session": ["auth: logout clears the session"],
    "pagination_ignores_limit": ["events: list with pagination"],
    "event_delete_noop": ["events: delete"],
    "resolve_500": ["errors: resolve"],
    "aggregate_broken": ["errors: aggregation"],
    "notification_read_noop": ["notifications: mark as read"],
    "component_degraded": ["health: all components healthy"],
    "no_metrics": ["health: metrics endpoint responds"],
    "http_no_redirect": ["security: HTTP redirects to HTTPS"],
    "no_hsts": ["security: HSTS on HTTPS responses"],
    "cors_reflect_any": cors_rows(*CORS_LABELS),
    "cors_prefix_match": cors_rows(
        "the allowed origin extended by prefix", "the allowed host on another port", "the allowed origin with a path"
    ),
    "cors_null": cors_rows("the null origin"),
    "cors_wildcard_credentials": ["security: CORS allows the configured origin exactly", *cors_rows(*CORS_LABELS)],
    "version_banner": ["security: no server or framework version banners"],
    "html_errors": ["security: JSON never served as text/html"],
    "malformed_json_500": ["security: oversized body answered 413 or 400", "security: malformed JSON answered 400"],
    "sql_500": [
        "security: SQL metacharacters in query parameters answered 4xx",
        "security: SQL metacharacters in a body are stored as data",
    ],
    "query_ignored": ["security: SQL metacharacters in query parameters answered 4xx"],
    "method_501": ["security: unknown method answered 405"],
    "xss_raw": ["security: a scripted body is echoed only as JSON"],
    "no_nosniff": ["security: X-Content-Type-Options nosniff on API responses"],
    "no_rate_limit": [RATE_LIMIT],
}


def environment_for(api: FakeApi, **overrides) -> StagingEnvironment:
    fields = dict(
        kind="sandbox",
        app_repo="/nonexistent",
        api_url=api.https_url,
        api_http_url=api.http_url,
        ca_bundle=str(api.ca),
        target=DockerTarget(),
        registry=ImageRegistry(address="127.0.0.1:1"),
        database=PostgresDatabase(password="db-secret-not-used"),
        prometheus_url="http://127.0.0.1:1",
        smoke_password=PASSWORD,
    )
    return StagingEnvironment(**(fields | overrides))


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    api = FakeApi(tmp_path_factory.mktemp("tls"))
    yield api
    api.close()


@pytest.fixture
def api(fake):
    fake.app.reset()
    return fake


def verdicts(report) -> dict[str, Verdict]:
    return {c.name: c.verdict for c in report.checks}


def assert_no_secrets(report, *secrets: str) -> None:
    dumped = report.model_dump_json()
    for secret in secrets:
        assert secret not in dumped


@pytest.mark.unit
def test_good_app_passes_every_check(api):
    report = run_smoke_suite.fn(environment_for(api))
    assert sorted(verdicts(report)) == sorted(ALL_SMOKE) and len(report.checks) == len(ALL_SMOKE)
    assert report.verdict == Verdict.PASS, report.summary()
    assert report.checks[-1].name == RATE_LIMIT  # last, so later gates are not throttled
    assert "Retry-After 1" in report.checks[-1].detail
    login = report.checks[0]
    assert login.request.startswith("POST /api/v1/auth/login")
    assert_no_secrets(report, PASSWORD, *api.app.sessions)
    # the suite cleans up its events (the fake keeps nothing but the deleted ones' absence)
    assert api.app.events == {}


@pytest.mark.unit
@pytest.mark.parametrize("fault", sorted(BREAKS))
def test_each_broken_behaviour_fails_exactly_its_check(api, fault):
    api.app.faults.add(fault)
    report = run_smoke_suite.fn(environment_for(api), rate_limit_wait_max_s=0)
    failed = [c for c in report.checks if c.verdict != Verdict.PASS]
    assert sorted(c.name for c in failed) == sorted(BREAKS[fault]), report.summary()
    assert all(c.verdict == Verdict.FAIL for c in failed)
    assert report.verdict == Verdict.FAIL
    assert all(c.detail and c.request for c in failed)  # says why, and what was asked
    assert all(c.response for c in failed if c.name.startswith("security: "))  # and what came back
    if fault == "http_no_redirect":
        assert f"GET {api.http_url}/health" in failed[0].request  # the plain-HTTP port is named
    assert_no_secrets(report, PASSWORD, *api.app.sessions)


@pytest.mark.unit
def test_failure_shows_status_and_body_excerpt(api):
    api.app.faults.add("resolve_500")
    check = next(
        c
        for c in run_smoke_suite.fn(environment_for(api), rate_limit_wait_max_s=0).checks
        if c.name == "errors: resolve"
    )
    assert check.response.startswith("500 ") and '"internal"' in check.response
    assert "POST /api/v1/errors/" in check.request and check.request.endswith("/resolve")


@pytest.mark.unit
def test_broken_login_fails_what_needs_a_session_and_redacts_the_echoed_password(api):
    api.app.faults.add("login_500_echo")
    report = run_smoke_suite.fn(environment_for(api), rate_limit_wait_max_s=0)
    login = report.checks[0]
    assert login.verdict == Verdict.FAIL and login.response.startswith("500 ") and MASK in login.response
    assert_no_secrets(report, PASSWORD)
    # checks that need no session still run and pass: one failure hides nothing else
    assert verdicts(report)["errors: create without auth"] == Verdict.PASS
    assert verdicts(report)["health: returns 200"] == Verdict.PASS
    assert "no session" in next(c.detail for c in report.checks if c.name == "events: get one")


@pytest.mark.unit
def test_certificate_near_expiry_fails_only_that_check(tmp_path):
    api = FakeApi(tmp_path, cert_days=5)
    try:
        report = run_smoke_suite.fn(environment_for(api), rate_limit_wait_max_s=0)
    finally:
        api.close()
    failed = [c for c in report.checks if c.verdict != Verdict.PASS]
    assert [c.name for c in failed] == [CERTIFICATE_EXPIRY]
    assert "expires in 4." in failed[0].detail or "expires in 5." in failed[0].detail
    assert failed[0].required and report.verdict == Verdict.FAIL


@pytest.mark.unit
def test_certificate_inside_the_warning_window_is_a_warning_row_that_does_not_block(tmp_path):
    api = FakeApi(tmp_path, cert_days=20)
    try:
        report = run_smoke_suite.fn(environment_for(api), rate_limit_wait_max_s=0)
        narrower = certificate_expiry(SmokeSession(environment_for(api, cert_warning_days=10), None), 14, 10)
    finally:
        api.close()
    warned = [c for c in report.checks if c.verdict != Verdict.PASS]
    assert [c.name for c in warned] == [CERTIFICATE_EXPIRY]
    assert warned[0].detail.startswith(("warning: certificate expires in 19.", "warning: certificate expires in 20.0"))
    assert not warned[0].required
    assert report.verdict == Verdict.PASS  # a warning, not a failure
    assert narrower[1] is False and "days left" in narrower[0]  # outside a 10-day window: no warning


@pytest.mark.unit
def test_untrusted_certificate_fails_https_checks_without_crashing(api, tmp_path):
    from tests.support.fake_api import make_tls

    other_ca, _, _ = make_tls(tmp_path)  # a CA that did not sign the server's certificate
    report = run_smoke_suite.fn(environment_for(api, ca_bundle=str(other_ca)), rate_limit_wait_max_s=0)
    assert len(report.checks) == len(ALL_SMOKE)  # every check reported, none hidden by the first failure
    cert = next(c for c in report.checks if c.name == CERTIFICATE_CHAIN)
    assert cert.verdict == Verdict.FAIL and "certificate verify failed" in cert.detail.lower()
    # the expiry is still read (an untrusted chain does not hide it)
    assert next(c for c in report.checks if c.name == CERTIFICATE_EXPIRY).verdict == Verdict.PASS
    # checks that could not get an answer over a chain that does not verify fail; none passes
    assert not any(c.verdict == Verdict.PASS for c in report.checks if c.name.startswith("security: CORS"))


@pytest.mark.unit
def test_https_redirect_without_http_url_on_custom_port_fails_with_reason(api):
    report = run_smoke_suite.fn(environment_for(api, api_http_url=None), rate_limit_wait_max_s=0)
    check = next(c for c in report.checks if c.name == "security: HTTP redirects to HTTPS")
    assert check.verdict == Verdict.FAIL and "api_http_url" in check.detail


@pytest.mark.unit
def test_a_balancer_that_accepts_tls_1_0_and_1_1_fails_both_rows(tmp_path):
    """TLS is the balancer's job, not the app's: a release cannot break it, a misconfigured server can."""
    import ssl

    api = FakeApi(tmp_path, tls_minimum=ssl.TLSVersion.MINIMUM_SUPPORTED)
    try:
        report = run_smoke_suite.fn(environment_for(api), rate_limit_wait_max_s=0)
    finally:
        api.close()
    failed = {c.name: c for c in report.checks if c.verdict != Verdict.PASS}
    assert sorted(failed) == ["security: TLS 1.0 refused", "security: TLS 1.1 refused"]
    assert "accepted a TLSv1 handshake" in failed["security: TLS 1.0 refused"].detail
    assert "offering only TLS 1.1" in failed["security: TLS 1.1 refused"].request


@pytest.mark.unit
def test_checks_that_cannot_reach_the_server_are_inconclusive_never_a_pass(api):
    import socket

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = environment_for(api, api_url=f"https://localhost:{port}", api_http_url=f"http://localhost:{port}")
    report = run_smoke_suite.fn(env, rate_limit_wait_max_s=0)
    assert not [c.name for c in report.checks if c.verdict == Verdict.PASS]
    verdicts_ = verdicts(report)
    for name in ("security: TLS 1.0 refused", "security: TLS 1.1 refused", CERTIFICATE_CHAIN, "health: returns 200"):
        assert verdicts_[name] == Verdict.INCONCLUSIVE, name
    assert report.verdict == Verdict.FAIL or report.verdict == Verdict.INCONCLUSIVE


@pytest.mark.unit
def test_cors_probes_extend_the_allowed_origin_every_way():
    probes = dict(cors_probes("https://dashboard.architect.localhost"))
    assert probes["the allowed origin extended by prefix"] == "https://dashboard.architect.localhost.evil.test"
    assert probes["the allowed origin extended by suffix"] == "https://evildashboard.architect.localhost"
    assert probes["the allowed host on another port"] == "https://dashboard.architect.localhost:444"
    assert probes["a sibling subdomain"] == "https://evil-sibling.architect.localhost"
    assert probes["the allowed host over http"] == "http://dashboard.architect.localhost"
    assert probes["the null origin"] == "null"
    assert "the allowed host over http" not in dict(cors_probes("http://127.0.0.1:8080"))


@pytest.mark.unit
def test_redactor_hides_every_secret():
    redact = Redactor(["hunter2", "", "tok123"])
    assert redact('{"password":"hunter2","session":"tok123"}') == f'{{"password":"{MASK}","session":"{MASK}"}}'


# --------------------------------------------------------------------------- health gate


@pytest.mark.unit
def test_health_passes_for_healthy_replicas_and_balancer(api):
    report = check_health.fn(environment_for(api), [api.replica_url], deadline_s=5)
    assert verdicts(report) == {
        f"replica {api.replica_url}": Verdict.PASS,
        f"load balancer {api.https_url}/": Verdict.PASS,
    }


@pytest.mark.unit
def test_health_fails_an_unhealthy_replica_after_the_deadline(api):
    api.app.faults.add("replica_unhealthy")
    report = check_health.fn(environment_for(api), [api.replica_url], deadline_s=1.5)
    replica = report.checks[0]
    assert replica.verdict == Verdict.FAIL and "503" in replica.detail
    assert "attempt" in replica.detail and replica.response.startswith("503 ")
    assert report.checks[1].verdict == Verdict.PASS  # the balancer (TLS) side is healthy


@pytest.mark.unit
def test_health_waits_for_a_restarting_replica(api):
    api.app.faults.add("replica_unhealthy")
    threading.Timer(1.2, api.app.faults.discard, args=("replica_unhealthy",)).start()
    report = check_health.fn(environment_for(api), [api.replica_url], deadline_s=10)
    assert report.verdict == Verdict.PASS
    assert "attempt 1)" not in report.checks[0].detail  # it took more than one look


@pytest.mark.unit
def test_health_fails_an_unreachable_replica(api):
    report = check_health.fn(environment_for(api), ["http://127.0.0.1:9"], deadline_s=0.5)
    assert report.checks[0].verdict == Verdict.FAIL and "ConnectError" in report.checks[0].detail


@pytest.mark.unit
def test_health_component_degraded_fails(api):
    api.app.faults.add("component_degraded")
    report = check_health.fn(environment_for(api), [api.replica_url], deadline_s=0.5)
    assert all(c.verdict == Verdict.FAIL and "cache" in c.detail for c in report.checks)


@pytest.mark.unit
def test_health_gate_and_smoke_check_give_the_same_judgement(api):
    api.app.faults.add("component_degraded")
    gate = check_health.fn(environment_for(api), [api.replica_url], deadline_s=0.5)
    smoke = run_smoke_suite.fn(environment_for(api), rate_limit_wait_max_s=0)
    check = next(c for c in smoke.checks if c.name == "health: all components healthy")
    judgement = "components not healthy: {'cache': 'degraded'}"
    assert check.verdict == Verdict.FAIL and check.detail == judgement
    assert all(c.detail.startswith(judgement) for c in gate.checks)


# --------------------------------------------------------------------------- the /health judgement

HEALTHY = {"status": "healthy", "components": {"database": "healthy", "cache": "healthy"}}


@pytest.mark.unit
def test_health_problem_passes_only_a_200_with_every_component_healthy():
    assert health_problem(httpx.Response(200, json=HEALTHY)) is None


@pytest.mark.unit
@pytest.mark.parametrize(
    "status, body, problem",
    [
        (
            503,
            {"status": "unhealthy", "components": {"database": "unhealthy", "cache": "healthy"}},
            "status 503; components not healthy: {'database': 'unhealthy'}",
        ),
        (500, None, "status 500"),
        (
            200,
            {"status": "healthy", "components": {"database": "healthy", "cache": "degraded"}},
            "components not healthy: {'cache': 'degraded'}",
        ),
        (200, {"status": "degraded", "components": {"database": "healthy"}}, "status field is 'degraded'"),
        (200, {"status": "healthy", "components": {}}, "no components reported"),
        (200, {"status": "healthy"}, "no components reported"),
        (200, ["healthy"], "body is not a JSON object"),
        (200, "<html>ok</html>", "body is not a JSON object"),
    ],
)
def test_health_problem_names_what_is_wrong(status, body, problem):
    response = (
        httpx.Response(status, text=body)
        if isinstance(body, str) or body is None
        else httpx.Response(status, json=body)
    )
    assert health_problem(response) == problem


# --------------------------------------------------------------------------- the real sandbox


@pytest.mark.sandbox
@pytest.mark.usefixtures("deployed_good_release")
def test_sandbox_good_release_passes_health_and_smoke(sandbox_env):
    urls = sandbox_env.target.replica_urls()
    health = check_health.fn(sandbox_env, urls, deadline_s=30)
    assert health.verdict == Verdict.PASS, health.summary()
    report = run_smoke_suite.fn(sandbox_env)
    assert report.verdict == Verdict.PASS, report.summary()
    assert sorted(c.name for c in report.checks) == sorted(ALL_SMOKE)
    assert_no_secrets(report, *sandbox_env.secret_values())


@pytest.mark.sandbox
def test_smoke_and_health_tasks_publish_table_artifacts(api, sandbox_up):
    """As real Prefect tasks in a flow (the sandbox's Prefect server): one table per gate, no secrets."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    @flow
    def gates():
        env = environment_for(api)
        return check_health(env, [api.replica_url], deadline_s=5), run_smoke_suite(env, rate_limit_wait_max_s=0)

    state = gates(return_state=True)
    health, smoke = state.result()
    assert health.verdict == Verdict.PASS and smoke.verdict == Verdict.PASS
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    by_key = {a.key: a for a in artifacts}
    assert set(by_key) == {"health-gate", "smoke-gate"}
    rows = by_key["smoke-gate"].data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert [r["name"] for r in rows] == [c.name for c in smoke.checks]
    assert set(rows[0]) == {"name", "verdict", "request", "detail", "response"}
    assert PASSWORD not in json.dumps(rows)
