"""Preflight: every outside system answers and no other deploy runs. Changes nothing."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from blocks.environment import StagingEnvironment
from tasks.core.artifacts import table_artifact
from tasks.core.models import CheckResult, GateReport, Verdict
from tasks.core.stages import Stage


def _probe(name: str, probe: Callable[[], str], *, required: bool = True) -> CheckResult:
    """Run one probe; any exception becomes a failed check naming it."""
    try:
        return CheckResult(name=name, verdict=Verdict.PASS, detail=probe(), required=required)
    except Exception as exc:
        detail = f"{type(exc).__name__}: {str(exc)[:300]}"
        if not required:
            detail += " (notifications will be dropped; the deploy goes on)"
        return CheckResult(name=name, verdict=Verdict.FAIL, detail=detail, required=required)


def _git_ref_exists(app_repo: str, git_ref: str) -> str:
    result = subprocess.run(
        ["git", "ls-remote", "--", app_repo, git_ref],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode:
        raise RuntimeError(f"git ls-remote failed: {result.stderr.strip()[-300:]}")
    if result.stdout.strip():
        return f"{git_ref} → {result.stdout.split()[0][:12]}"
    # Not a branch or tag name: a commit id is checked at checkout.
    if len(git_ref) >= 7 and all(c in "0123456789abcdef" for c in git_ref):
        return f"{git_ref} looks like a commit; checked at checkout"
    raise RuntimeError(f"no branch or tag {git_ref!r} in {app_repo}")


def _prometheus_ready(environment: StagingEnvironment) -> str:
    response = httpx.get(f"{str(environment.prometheus_url).rstrip('/')}/-/ready", timeout=5)
    response.raise_for_status()
    return "Prometheus is ready"


def _slack_answers(environment: StagingEnvironment) -> str:
    if environment.slack is None:
        return "no Slack channel configured"
    environment.slack.get_client().auth_test()
    return f"Slack answers; channel {environment.slack.channel}"


@task(cache_policy=NO_CACHE)
def run_preflight(
    environment: StagingEnvironment,
    environment_name: str,
    git_ref: str,
    extra_checks: list[CheckResult] | None = None,
) -> GateReport:
    """Ask every outside system a harmless question; one table artifact of the answers."""
    logger = get_run_logger()
    checks = [
        _probe("app repository", lambda: _git_ref_exists(environment.app_repo, git_ref)),
        _probe("deploy target", environment.target.check_reachable),
        _probe("image registry", environment.registry.check_reachable),
        _probe("prometheus", lambda: _prometheus_ready(environment)),
        _probe("slack", lambda: _slack_answers(environment), required=False),
        *(extra_checks or []),
    ]
    for check in checks:
        logger.info("preflight %s: %s %s", check.name, check.verdict.value, check.detail)
    report = GateReport(stage=Stage.PREFLIGHT, checks=checks)
    table_artifact(
        key="preflight",
        table=[
            {"check": c.name, "verdict": c.verdict.value, "required": c.required, "detail": c.detail} for c in checks
        ],
        description=f"Preflight for {environment_name}: {report.verdict.value}",
    )
    return report
