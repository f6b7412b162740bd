"""Deploy stage and its undo, through whichever deploy target the environment names."""

from __future__ import annotations

import json
from collections.abc import Mapping

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import BaseModel

from blocks.target import DeployTarget
from tasks.core.artifacts import markdown_artifact, table_artifact
from tasks.core.errors import PermanentError, RolloutFailed, retry_if_temporary
from tasks.core.migration_review import MigrationReview
from tasks.core.models import CheckResult, DeployPlan, GateReport, OneOffResult, Revision, RolloutResult, Verdict
from tasks.core.stages import Stage
from tasks.database.pending import list_pending_migrations_read_only

LOG_LINES_IN_REPORT = 60


def _report_rollout(key: str, title: str, result: RolloutResult) -> None:
    table_artifact(
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
        markdown_artifact(
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


class ReleaseRemoval(BaseModel):
    """A release with nothing to go back to, taken down (a failed or rejected first deploy)."""

    replicas: int  # serving when the removal began
    urls: list[str]  # where its replicas answered, checked afterwards to serve nothing
    detail: str  # what the target says it did


def _serving(target: DeployTarget) -> int:
    try:
        return sum(s.running for s in target.replica_states())
    except NotImplementedError:  # a target without replica states lists one URL per running replica (Docker)
        return len(target.replica_urls())


# Idempotent (a replica already gone is fine), so an engine that is briefly away is waited out.
@task(cache_policy=NO_CACHE, retries=5, retry_delay_seconds=10, retry_condition_fn=retry_if_temporary)
def remove_release(target: DeployTarget, timeout_s: float) -> ReleaseRemoval:
    """No earlier revision to roll back to: stop serving the release at all (Docker removes its
    containers, Kubernetes scales its Deployment to zero)."""
    logger = get_run_logger()
    urls, replicas = target.replica_urls(), _serving(target)
    logger.info("no earlier revision: removing the release (%d replicas serving)", replicas)
    detail = target.remove_release(timeout_s)
    logger.info("release removed: %s", detail)
    return ReleaseRemoval(replicas=replicas, urls=urls, detail=detail)


def _still_answers(url: str, health_path: str) -> str | None:
    """What ``url`` answered healthy, or None when it serves nothing (refused, or not 200)."""
    try:
        response = httpx.get(url.rstrip("/") + health_path, timeout=2.0)
    except httpx.HTTPError:
        return None
    return f"{health_path} answered {response.status_code}" if response.status_code == 200 else None


@task(cache_policy=NO_CACHE)
def verify_release_removed(target: DeployTarget, removal: ReleaseRemoval) -> GateReport:
    """The check after a removal: there are no replicas to be healthy, so it asks the opposite: the
    target runs no replica of the app, and none of the replica URLs the release served on answers
    healthy. A URL the target still lists afterwards is a configured address (Kubernetes'
    ``reachable_replica_urls``), not a replica: there the replica states decide. The load balancer
    is not asked: with nothing behind it, its answer says nothing of the target."""
    report = GateReport(stage=Stage.HEALTH)
    left, still_listed = _serving(target), set(target.replica_urls())
    report.checks.append(
        CheckResult(
            name="replicas left",
            verdict=Verdict.PASS if left == 0 else Verdict.FAIL,
            detail=f"{left} replica(s) still running after the removal ({removal.detail})",
        )
    )
    health_path = getattr(target, "health_path", "/health")
    for url in [u for u in removal.urls if u not in still_listed]:
        answered = _still_answers(url, health_path)
        report.checks.append(
            CheckResult(
                name=f"replica {url}",
                verdict=Verdict.FAIL if answered else Verdict.PASS,
                detail=f"still serving: {answered}" if answered else "serves nothing",
                request=f"GET {health_path}",
            )
        )
    table_artifact(
        key="rollback-removal",
        table=[c.model_dump(include={"name", "verdict", "detail"}) for c in report.checks],
        description=f"Removal of a release with no earlier revision: {report.summary()}",
    )
    return report


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
    markdown_artifact(
        key="dry-run-diff",
        markdown=f"## Dry run of {version}\n\n{len(plan.changes)} of {len(plan.objects)} objects would change.\n\n"
        + "\n\n".join(sections),
        description=f"What deploying {version} would change (nothing was changed)",
    )
    return plan


def plan_dry_run(
    target: DeployTarget, image: str, version: str, env: Mapping[str, str], migrations: MigrationReview | None
) -> DeployPlan:
    """The whole dry run: what a deploy would change on ``target``, and which migrations it would
    apply, from the build's review of the release's migration files: the new, unreviewed image is
    never run, so it never sees the database password."""
    plan = plan_release(target, image, version, env)
    return plan.model_copy(update={"pending_migrations": list_pending_migrations_read_only(migrations)})
