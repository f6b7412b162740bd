"""The health gate, and the one judgement of a ``/health`` answer (the smoke suite uses it too).

``check_health`` polls ``/health`` of every replica and of the load-balanced API URL until each
has been healthy a few times in a row or the deadline passes. It observes only; the flow decides.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.environment import StagingEnvironment
from tasks.core.models import CheckResult, GateReport, Verdict
from tasks.core.redaction import Redactor
from tasks.core.run_log import run_logger
from tasks.core.stages import Stage
from tasks.gates.evidence import environment_secrets, excerpt, publish_table


def health_problem(response: httpx.Response) -> str | None:
    """None when a ``/health`` answer is 200, says healthy and lists only healthy components; else what is wrong."""
    try:
        body = response.json()
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else None
    components = body.get("components") if body else None
    components = components if isinstance(components, dict) else {}
    bad = {k: v for k, v in components.items() if v != "healthy"}
    if response.status_code != 200:  # a 503 names its broken components: say which
        return f"status {response.status_code}" + (f"; components not healthy: {bad}" if bad else "")
    if body is None:
        return "body is not a JSON object"
    if body.get("status") != "healthy":
        return f"status field is {body.get('status')!r}"
    if not components:
        return "no components reported"
    return f"components not healthy: {bad}" if bad else None


# Healthy answers in a row, half a second apart: a replica that dies or flaps while the gate
# watches fails it, for one second added to a deploy.
HEALTHY_IN_A_ROW, POLL_INTERVAL_S = 3, 0.5


@dataclass
class _Probe:
    name: str
    url: str
    verify: object
    attempts: int = 0
    in_a_row: int = 0
    problem: str | None = "not asked"
    last_problem: str = ""
    response: str = ""

    def poll(self, redact: Redactor) -> None:
        self.attempts += 1
        with httpx.Client(verify=self.verify, timeout=5.0) as client:
            try:
                response = client.get(self.url)
                self.problem, self.response = health_problem(response), excerpt(response, redact)
            except httpx.HTTPError as exc:
                self.problem, self.response = f"{type(exc).__name__}: {exc}", ""
        self.in_a_row = self.in_a_row + 1 if self.problem is None else 0
        if self.problem is not None:
            self.last_problem = self.problem

    def result(self, needed: int) -> CheckResult:
        if self.in_a_row >= needed:
            detail = f"healthy {needed} times in a row (attempt {self.attempts})"
        elif self.problem is None:
            detail = f"healthy only {self.in_a_row} time(s) in a row; before that: {self.last_problem}"
        else:
            detail = f"{self.problem} after {self.attempts} attempt(s)"
        return CheckResult(
            name=self.name,
            verdict=Verdict.PASS if self.in_a_row >= needed else Verdict.FAIL,
            detail=detail,
            request=f"GET {urlsplit(self.url).path}",
            response="" if self.in_a_row >= needed else self.response,
        )


@task(cache_policy=NO_CACHE)
def check_health(
    environment: StagingEnvironment,
    replica_urls: list[str],
    deadline_s: float,
    expected_replicas: int | None = None,
    in_a_row: int = HEALTHY_IN_A_ROW,
) -> GateReport:
    """``/health`` of every replica (plain HTTP on loopback) and of the load-balanced API URL,
    each ``in_a_row`` times healthy in a row, and as many replicas as the rollout left running.

    URLs are polled every half second until they pass or the shared deadline passes, so a replica
    that is still restarting gets its chance. Observes only; it loops itself instead of retrying.
    """
    logger = run_logger()
    redact = Redactor(environment_secrets(environment))
    deadline = time.monotonic() + deadline_s
    probes = [_Probe(f"replica {u}", u.rstrip("/") + "/health", True) for u in replica_urls]
    api = str(environment.api_url).rstrip("/")
    probes.append(_Probe(f"load balancer {environment.api_url}", api + "/health", environment.ssl_context()))
    while True:
        for probe in probes:
            if probe.in_a_row < in_a_row:
                probe.poll(redact)
        if all(p.in_a_row >= in_a_row for p in probes) or time.monotonic() >= deadline:
            break
        time.sleep(min(POLL_INTERVAL_S, max(0.0, deadline - time.monotonic())))
    report = GateReport(stage=Stage.HEALTH)
    if expected_replicas is not None:
        running = len(replica_urls)
        report.checks.append(
            CheckResult(
                name="replicas running",
                verdict=Verdict.PASS if running >= expected_replicas else Verdict.FAIL,
                detail=f"{running} of the {expected_replicas} the rollout left running",
            )
        )
    for probe in probes:
        logger.info("GET %s -> %s after %d attempt(s)", probe.url, probe.problem or "healthy", probe.attempts)
        report.checks.append(probe.result(in_a_row))
    publish_table(report, "health-gate", lambda c: c.model_dump(include={"name", "verdict", "detail", "response"}))
    return report
