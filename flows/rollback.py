"""The rollback subflow: the app back to the last good revision, verified healthy, reported."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger
from pydantic import BaseModel

from blocks.environment import StagingEnvironment
from tasks.checks import check_health
from tasks.deploy import roll_back_release
from tasks.models import Revision, Verdict


class RollbackReport(BaseModel):
    failed_stage: str
    reason: str
    rolled_back_to: Revision | None
    healthy: bool
    detail: str = ""

    def summary(self) -> str:
        if self.rolled_back_to is None:
            return "nothing to roll back to (no earlier revision)"
        health = "healthy" if self.healthy else "NOT healthy"
        return f"rolled back to revision {self.rolled_back_to.number} ({self.rolled_back_to.version}), {health}"


@flow(name="rollback", flow_run_name="rollback-after-{failed_stage}")
def rollback(environment: str, previous: Revision | None, failed_stage: str, reason: str) -> RollbackReport:
    """Return the target to ``previous``, wait until it serves healthy, and report it.

    Args:
        environment: Name of the StagingEnvironment block.
        previous: The revision that ran before the failed deploy.
        failed_stage: The stage whose failure triggered this rollback.
        reason: Why that stage failed.
    """
    logger = get_run_logger()
    logger.warning("rolling back after %s failed: %s", failed_stage, reason)
    env = StagingEnvironment.load(environment)
    if previous is None:
        report = RollbackReport(failed_stage=failed_stage, reason=reason, rolled_back_to=None, healthy=False)
    else:
        rollout = roll_back_release(env.target, previous.number, env.app_environment(), env.rollout_timeout_s)
        health = check_health(env, env.target.replica_urls(), env.health_timeout_s)
        report = RollbackReport(
            failed_stage=failed_stage,
            reason=reason,
            rolled_back_to=previous,
            healthy=health.verdict == Verdict.PASS,
            detail=f"undo took {rollout.duration_s:.1f} s; {health.summary()}",
        )
    create_markdown_artifact(
        key="rollback-report",
        markdown=(
            f"## Rollback\n\n| | |\n|---|---|\n| failed stage | {failed_stage} |\n| reason | {reason} |\n"
            f"| outcome | {report.summary()} |\n| detail | {report.detail} |\n"
        ),
        description=f"Rollback after {failed_stage} failed",
    )
    return report
