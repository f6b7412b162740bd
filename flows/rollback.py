"""The rollback subflow: the app back to the last good revision (or, with none, the release removed),
then the database back to the pre-deployment backup when the policy says so, verified, reported.

It works from the run's configuration as it was when the run started (a snapshot without secrets,
``tasks.release.snapshot``), never from the block as it is now: a block edited during a 24 h
sign-off pause must not point the restore at another database.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger
from pydantic import BaseModel

from blocks.environment import StagingEnvironment
from tasks.core.artifacts import markdown_artifact
from tasks.core.escaping import for_markdown
from tasks.core.migration_review import MigrationReview
from tasks.core.models import BuildResult, Revision, Verdict
from tasks.core.stages import Stage
from tasks.database.backup import BackupResult
from tasks.database.restore import RestorePolicy, RestoreResult, restore_database, should_restore
from tasks.gates.health import check_health
from tasks.release.deploy import ReleaseRemoval, remove_release, roll_back_release, verify_release_removed
from tasks.release.run_secrets import protect_run
from tasks.release.snapshot import ConfigSnapshot, environment_from


class RollbackReport(BaseModel):
    failed_stage: Stage
    reason: str
    rolled_back_to: Revision | None
    app_undone: bool
    removed: ReleaseRemoval | None = None  # a release with no earlier revision, taken down
    database: str = "not touched"
    restore: RestoreResult | None = None
    healthy: bool
    detail: str = ""

    def summary(self) -> str:
        if self.removed is not None:
            n = self.removed.replicas
            app = f"no earlier release: removed the release ({n} replica{'' if n == 1 else 's'})"
            health = "nothing left serving" if self.healthy else "NOT removed, still serving"
        else:
            if self.app_undone and self.rolled_back_to is not None:
                number, version = self.rolled_back_to.number, self.rolled_back_to.version
                app = f"rolled back to revision {number} ({version})"
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
    config: ConfigSnapshot | None = None,
    migrations: MigrationReview | None = None,
) -> RollbackReport:
    """Undo a failed release: app first (so the new release writes no more), then the database.

    Args:
        environment: Name of the StagingEnvironment block.
        previous: The revision that ran before the failed deploy; none: the release is removed.
        failed_stage: The stage whose failure triggered this rollback.
        reason: Why that stage failed.
        backup: The pre-deployment backup of this run, if it got that far.
        restore_policy: Restore the backup if the schema changed since it, always, or never.
        undo_app: False when the failure came before the app was touched (a failed migration).
        config: The run's configuration frozen at its start (no secrets); none: the block as it is now.
        migrations: The build's review of the migrations; with it, only contract or dangerous ones restore.
    """
    logger = get_run_logger()
    logger.warning("rolling back after %s failed: %s", failed_stage, reason)
    if config is not None:
        env = environment_from(config)
        logger.info("using %s (sha256 %s)", config.describe(), config.sha256[:12])
    else:  # a journal written before runs froze their configuration
        env = StagingEnvironment.load(environment)
        logger.warning("no frozen configuration: using the %s block as it is now", environment)
    protect_run(env)  # a recovery's rollback runs before anything else registered these secrets
    app_env = env.app_environment()
    removal, expected = None, None
    if undo_app and previous is not None:
        undo = roll_back_release(env.target, previous.number, app_env, env.rollout_timeout_s)
        expected = env.target.replicas_to_check(undo)
    elif undo_app:  # a first deploy: nothing to go back to, so nothing of it may keep serving
        removal = remove_release(env.target, env.rollout_timeout_s)

    # Without the build's review (a dead run's recovery) the version comparison decides.
    decision = should_restore(restore_policy, env.database, backup, migrations)
    restored = restore_database(env.database, backup) if decision else None
    database = (
        f"restored from {backup.name} ({restored.rows_discarded} rows written since were discarded)"
        if restored and backup
        else f"kept ({decision.reason})"
    )
    if removal is not None:  # no replica should answer: check that, not their health
        health = verify_release_removed(env.target, removal)
    elif undo_app:
        health = check_health(env, env.target.replica_urls(), env.health_timeout_s, expected)
    else:
        health = None
    report = RollbackReport(
        failed_stage=failed_stage,
        reason=reason,
        rolled_back_to=previous,
        app_undone=undo_app,
        removed=removal,
        database=database,
        restore=restored,
        healthy=health is None or health.verdict == Verdict.PASS,
        detail=health.summary() if health else "",
    )
    markdown_artifact(
        key="rollback-report", markdown=_markdown(report), description=f"Rollback after {failed_stage} failed"
    )
    return report


def _markdown(report: RollbackReport) -> str:
    """The rollback report; every cell is escaped (the reason and the checks' details are outside text)."""
    rows = [
        ("failed stage", report.failed_stage),
        ("reason", report.reason),
        ("outcome", report.summary()),
        ("health" if report.removed is None else "removal", report.detail),
    ]
    if report.removed is not None:
        rows.append(("what the target did", report.removed.detail))
    table = "".join(f"| {name} | {for_markdown(value)} |\n" for name, value in rows)
    discarded = "".join(
        f"| `{for_markdown(d.table)}` | {d.rows_discarded} |\n"
        for d in (report.restore.discarded if report.restore else [])
    )
    return f"## Rollback\n\n| | |\n|---|---|\n{table}" + (
        f"\n### Data written since the backup, discarded\n\n| table | rows |\n|---|---|\n{discarded}"
        if discarded
        else ""
    )


def bound_rollback(
    environment: str,
    restore_policy: RestorePolicy,
    config: ConfigSnapshot,
    build: Callable[[], BuildResult | None],
) -> Callable[..., RollbackReport]:
    """The rollback subflow as the runner and the recovery call it: ``(previous, failed_stage,
    reason, backup, undo_app=...)``, with this run's environment, policy and frozen configuration
    bound. The build's migration review is read when the rollback runs (the build comes after
    this is made); keywords given at the call win, so a dead run's recovery passes its own."""

    def undo(*args: Any, **kwargs: Any) -> RollbackReport:
        kwargs.setdefault("restore_policy", restore_policy)
        kwargs.setdefault("config", config)
        if "migrations" not in kwargs:
            built = build()
            kwargs["migrations"] = built.migrations if built is not None else None
        return rollback(environment, *args, **kwargs)

    return undo
