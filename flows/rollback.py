"""The rollback subflow: the app back to the last good revision, then the database back to the
pre-deployment backup when the policy says so, verified healthy, reported."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger
from pydantic import BaseModel

from blocks.environment import StagingEnvironment
from tasks.core.models import Revision, Verdict
from tasks.core.stages import Stage
from tasks.database.backup import BackupResult
from tasks.database.restore import RestorePolicy, RestoreResult, restore_database, should_restore
from tasks.gates.health import check_health
from tasks.release.deploy import roll_back_release


class RollbackReport(BaseModel):
    failed_stage: Stage
    reason: str
    rolled_back_to: Revision | None
    app_undone: bool
    database: str = "not touched"
    restore: RestoreResult | None = None
    healthy: bool
    detail: str = ""

    def summary(self) -> str:
        if self.app_undone and self.rolled_back_to is not None:
            app = f"rolled back to revision {self.rolled_back_to.number} ({self.rolled_back_to.version})"
        elif self.app_undone:
            app = "no earlier revision to roll back to"
        else:
            app = "the app was not changed"
        health = "healthy" if self.healthy else "NOT healthy"
        return f"{app}, {health}; database {self.database}"


@flow(name="rollback", flow_run_name="rollback-after-{failed_stage}")
def rollback(
    environment: str,
    previous: Revision | None,
    failed_stage: Stage,
    reason: str,
    backup: BackupResult | None = None,
    restore_policy: RestorePolicy = RestorePolicy.IF_SCHEMA_CHANGED,
    undo_app: bool = True,
) -> RollbackReport:
    """Undo a failed release: app first (so the new release writes no more), then the database.

    Args:
        environment: Name of the StagingEnvironment block.
        previous: The revision that ran before the failed deploy.
        failed_stage: The stage whose failure triggered this rollback.
        reason: Why that stage failed.
        backup: The pre-deployment backup of this run, if it got that far.
        restore_policy: Restore the backup if the schema changed since it, always, or never.
        undo_app: False when the failure came before the app was touched (a failed migration).
    """
    logger = get_run_logger()
    logger.warning("rolling back after %s failed: %s", failed_stage, reason)
    env = StagingEnvironment.load(environment)
    app_env = env.app_environment()
    undone = undo_app and previous is not None
    expected = None
    if undone:
        undo = roll_back_release(env.target, previous.number, app_env, env.rollout_timeout_s)
        expected = env.target.replicas_to_check(undo)

    decision = should_restore(restore_policy, env.database, backup)
    restored = restore_database(env.database, backup) if decision else None
    database = (
        f"restored from {backup.name} ({restored.rows_discarded} rows written since were discarded)"
        if restored
        else f"kept ({decision.reason})"
    )
    health = check_health(env, env.target.replica_urls(), env.health_timeout_s, expected) if undo_app else None
    report = RollbackReport(
        failed_stage=failed_stage,
        reason=reason,
        rolled_back_to=previous,
        app_undone=undo_app,
        database=database,
        restore=restored,
        healthy=health is None or health.verdict == Verdict.PASS,
        detail=health.summary() if health else "",
    )
    discarded = "".join(f"| {d.table} | {d.rows_discarded} |\n" for d in (restored.discarded if restored else []))
    create_markdown_artifact(
        key="rollback-report",
        markdown=(
            f"## Rollback\n\n| | |\n|---|---|\n| failed stage | {failed_stage} |\n| reason | {reason} |\n"
            f"| outcome | {report.summary()} |\n| health | {report.detail} |\n"
            + (
                f"\n### Data written since the backup, discarded\n\n| table | rows |\n|---|---|\n{discarded}"
                if discarded
                else ""
            )
        ),
        description=f"Rollback after {failed_stage} failed",
    )
    return report
