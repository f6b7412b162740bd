"""The health gate and what every gate that talks HTTP to the deployed API shares.

Every check is named, independent (it catches its own errors and fails with the reason) and
records the requests it made (method + path, never credentials) and, on failure, what came
back (status + the first 300 characters of the body, secrets redacted). The flow decides.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from blocks.environment import StagingEnvironment
from tasks.models import CheckResult, GateReport, Verdict
from tasks.logs import run_logger

EXCERPT_CHARS = 300


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
