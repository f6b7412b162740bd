"""Deploy stage and its undo, through whichever deploy target the environment names."""

from __future__ import annotations

import json
from collections.abc import Mapping

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from blocks.target import DeployTarget
from tasks.core.errors import PermanentError, RolloutFailed, retry_if_temporary
from tasks.core.models import DeployPlan, OneOffResult, Revision, RolloutResult
from tasks.core.stages import Stage

LOG_LINES_IN_REPORT = 60


def _report_rollout(key: str, title: str, result: RolloutResult) -> None:
    create_table_artifact(
        key=key,
        table=[r.model_dump(include={"name", "image", "ready", "detail"}) for r in result.replicas]
        or [{"name": "(none running)", "image": "", "ready": False, "detail": ""}],
        description=(
            f"{title}: revision {result.revision.number} ({result.revision.version}) "
            f"{'complete' if result.complete else 'FAILED: ' + result.reason} in {result.duration_s:.1f} s"
            + (f"; previous revision {result.previous.number} ({result.previous.version})" if result.previous else "")
        ),
    )
    if result.logs:
        sections = [
            f"### {name}\n```\n" + "\n".join(text.splitlines()[-LOG_LINES_IN_REPORT:]) + "\n```"
            for name, text in result.logs.items()
        ]
        create_markdown_artifact(
            key=f"{key}-logs",
            markdown=f"## {title} failed: {result.reason}\n\n" + "\n\n".join(sections),
            description="Logs of the replicas that failed",
        )


@task(cache_policy=NO_CACHE)
def record_current_revision(target: DeployTarget) -> Revision | None:
    """The revision running before this deploy: where a rollback goes back to."""
    revision = target.current_revision()
    get_run_logger().info("current revision on the target: %s", revision.number if revision else "none")
    return revision


@task(cache_policy=NO_CACHE)
def deploy_release(
    target: DeployTarget, image: str, version: str, env: Mapping[str, str], timeout_s: float
) -> RolloutResult:
    """Rolling update to ``image``; raises RolloutFailed (carrying the result) when it never completes."""
    logger = get_run_logger()
    logger.info("rolling out %s (%s) on %s", version, image, target.get_block_type_slug())
    result = target.deploy(image, version, env, timeout_s)
    _report_rollout("rollout", f"Rollout of {version}", result)
    if not result.complete:
        raise RolloutFailed(f"rollout of {version} failed: {result.reason}", stage=Stage.DEPLOY, result=result)
    logger.info("revision %s complete in %.1f s", result.revision.number, result.duration_s)
    return result


# Idempotent (replicas already on the wanted image stay), so an engine that is briefly away is waited out.
@task(cache_policy=NO_CACHE, retries=5, retry_delay_seconds=10, retry_condition_fn=retry_if_temporary)
def roll_back_release(
    target: DeployTarget, to_revision: int | None, env: Mapping[str, str], timeout_s: float
) -> RolloutResult:
    """Undo to ``to_revision`` (or the one before the newest) and wait until it is complete."""
    logger = get_run_logger()
    logger.info("rolling back to revision %s", to_revision if to_revision is not None else "previous")
    result = target.rollback(to_revision, env, timeout_s)
    _report_rollout("rollback-rollout", "Rollback", result)
    if not result.complete:
        raise RolloutFailed(f"rollback did not complete: {result.reason}", result=result)
    return result


def _status_json(logs: str) -> dict:
    """The JSON line of `migrate status --json` among the one-off's log lines."""
    for line in reversed(logs.splitlines()):
        if line.startswith("{") and '"current"' in line:
            return json.loads(line)
    return {}


class MigrationRun(OneOffResult):
    """The app's own `migrate --direction up`, and the status it reported afterwards."""

    status: dict = {}


@task(cache_policy=NO_CACHE)
def run_migrations(target: DeployTarget, image: str, env: Mapping[str, str], timeout_s: float = 300) -> MigrationRun:
    """Run the NEW image's `migrate --direction up` as a one-off, then its `migrate status --json`."""
    logger = get_run_logger()
    logger.info("migrate --direction up from %s", image)
    up = target.run_one_off(image, ["migrate", "--direction", "up"], env, timeout_s)
    logger.info("migrate status --json from %s", image)
    status = target.run_one_off(image, ["migrate", "status", "--json"], env, 60)
    run = MigrationRun(**up.model_dump(), status=_status_json(status.logs))
    if not up.succeeded:
        tail = "\n".join(up.logs.splitlines()[-5:])
        raise PermanentError(f"migration failed (exit {up.exit_code}): {tail}", stage=Stage.MIGRATE, result=run)
    return run


@task(cache_policy=NO_CACHE)
def plan_release(target: DeployTarget, image: str, version: str, env: Mapping[str, str]) -> DeployPlan:
    """The dry run: what a deploy of ``image`` would change, as a diff artifact. Changes nothing."""
    get_run_logger().info("dry run of %s (%s) on %s", version, image, target.get_block_type_slug())
    plan = target.plan(image, version, env)
    sections = [
        f"### {o.kind} {o.name}: {o.action}\n" + (f"```diff\n{o.diff}\n```" if o.diff else "") for o in plan.objects
    ]
    create_markdown_artifact(
        key="dry-run-diff",
        markdown=f"## Dry run of {version}\n\n{len(plan.changes)} of {len(plan.objects)} objects would change.\n\n"
        + "\n\n".join(sections),
        description=f"What deploying {version} would change (nothing was changed)",
    )
    return plan


@task(cache_policy=NO_CACHE)
def list_pending_migrations(target: DeployTarget, image: str, env: Mapping[str, str]) -> list[dict]:
    """The NEW image's `migrate status --json` as a one-off on ``target``: the build engine's
    (``StagingEnvironment.builder_target``), since a dry run must not write the deploy target's
    Secret or create anything there."""
    get_run_logger().info("migrate status --json from %s on %s", image, target.get_block_type_slug())
    status = target.run_one_off(image, ["migrate", "status", "--json"], env, 60)
    pending = _status_json(status.logs).get("pending", [])
    create_table_artifact(
        key="dry-run-migrations",
        table=pending or [{"version": "", "name": "(none pending)"}],
        description="Migrations a deploy would apply",
    )
    return pending


def plan_dry_run(
    target: DeployTarget, builder: DeployTarget, image: str, version: str, env: Mapping[str, str]
) -> DeployPlan:
    """The whole dry run: what a deploy would change on ``target``, and which migrations the image
    would run (asked on ``builder``, the build engine, so nothing is created on the target)."""
    plan = plan_release(target, image, version, env)
    return plan.model_copy(update={"pending_migrations": list_pending_migrations(builder, image, env)})
