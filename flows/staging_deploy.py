"""The staging-deploy flow: only the order of stages, the gates and the rollback trigger."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Annotated, Literal

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.context import get_run_context
from prefect.logging import get_run_logger
from prefect.states import Cancelled, Completed, Failed, State
from pydantic import AfterValidator, Field

from blocks.environment import StagingEnvironment
from blocks.validation import GIT_REF_CHARS, NAME, SEMVER, check_git_ref, check_name, check_semver
from flows.rollback import rollback
from tasks.build import build_release
from tasks.checks import check_health
from tasks.deploy import deploy_release, record_current_revision, run_migrations
from tasks.errors import DeployError, GateFailed, InvalidInput
from tasks.lock import DeployLocked, deploy_lock
from tasks.models import CheckResult, GateReport, Verdict
from tasks.notify import RunNotifier, flow_run_url
from tasks.preflight import run_preflight

STAGES = ["preflight", "build", "migrate", "deploy", "health"]
# Stages after which a failure means the target changed and must be rolled back.
ROLLBACK_FROM = "deploy"

Version = Annotated[str | None, Field(pattern=SEMVER.pattern), AfterValidator(lambda v: v and check_semver(v))]
GitRef = Annotated[str, Field(pattern=GIT_REF_CHARS), AfterValidator(check_git_ref)]
EnvironmentName = Annotated[str, Field(pattern=NAME.pattern), AfterValidator(check_name)]


def require(report: GateReport) -> GateReport:
    """A gate passes only on PASS; inconclusive is not a pass."""
    if report.verdict != Verdict.PASS:
        raise GateFailed(report.summary(), stage=report.stage, result=report)
    return report


def load_environment(name: str) -> StagingEnvironment:
    try:
        return StagingEnvironment.load(name)
    except ValueError as exc:
        raise InvalidInput(f"environment: no StagingEnvironment block named {name!r} ({exc})") from exc


@flow(name="staging-deploy", flow_run_name="deploy-{git_ref}-to-{environment}")
def staging_deploy(
    git_ref: GitRef = "main",
    version: Version = None,
    environment: EnvironmentName = "sandbox",
    on_collision: Literal["wait", "cancel"] = "wait",
) -> State:
    """Take one release of the Architect Dashboard API to a signed-off staging deployment,
    or back to the last good release when any gate fails.

    Args:
        git_ref: Branch, tag or commit of the app repository to deploy (e.g. main, v3.2.0).
        version: Semantic version to stamp and tag the image with (e.g. 3.2.0); empty derives it from the VERSION file and the commit.
        environment: Name of the Staging Environment block to deploy to (e.g. sandbox, staging).
        on_collision: When another deploy to the same environment is running: wait for it, or cancel this run (nightly).
    """
    logger = get_run_logger()
    env = load_environment(environment)
    run_id = str(get_run_context().flow_run.id)
    notifier = RunNotifier(
        slack=env.slack,
        title=f"Staging deploy of {version or git_ref} to {environment}",
        run_url=flow_run_url(run_id),
        logger=logger,
        stage_names=STAGES,
    )
    stage, previous = "preflight", None
    lock = ExitStack()
    try:
        try:
            waited = lock.enter_context(deploy_lock(environment, wait=on_collision == "wait"))
        except DeployLocked as exc:
            notifier.finish(f"➖ skipped: {exc}")
            return Cancelled(message=f"{exc}; this run was cancelled (on_collision=cancel)")
        with notifier.running("preflight"):
            held = CheckResult(name="deploy lock", verdict=Verdict.PASS, detail=f"held by this run (waited {waited:.1f} s)")
            require(run_preflight(env, environment, git_ref, extra_checks=[held]))
        stage = "build"
        with notifier.running("build"):
            build = build_release(env.app_repo, git_ref, version, env.registry, env.builder_docker_host)
        previous = record_current_revision(env.target)
        stage = "migrate"
        with notifier.running("migrate"):
            run_migrations(env.target, build.digest, env.app_environment())
        stage = "deploy"
        with notifier.running("deploy"):
            deploy_release(env.target, build.digest, build.version, env.app_environment(), env.rollout_timeout_s)
        stage = "health"
        with notifier.running("health"):
            require(check_health(env, env.target.replica_urls(), env.health_timeout_s))
    except Exception as exc:  # any failure ends the run through _fail, rolled back if needed
        reason = str(exc) if isinstance(exc, DeployError) else f"{type(exc).__name__}: {exc}"
        return _fail(notifier, environment, stage, reason, previous)
    else:
        notifier.finish(f"✅ {build.version} is live on {environment}")
        create_table_artifact(
            key="stage-timings",
            table=[{"stage": name, "seconds": seconds} for name, seconds in notifier.timings().items()],
            description="How long each stage took",
        )
        return Completed(message=f"{build.version} ({build.commit[:12]}) deployed to {environment}", data=build)
    finally:
        lock.close()
        notifier.close()


def _fail(notifier: RunNotifier, environment: str, stage: str, reason: str, previous) -> State:
    """End the run Failed naming the stage; roll back first when the target was touched."""
    if STAGES.index(stage) < STAGES.index(ROLLBACK_FROM):
        notifier.finish(f"❌ {stage} failed; nothing was changed")
        notifier.reply(f"❌ {stage} failed: {reason}")
        return Failed(message=f"{stage} failed: {reason} (nothing was changed)")
    notifier.reply(f"❌ {stage} failed: {reason}\nRolling back…")
    try:
        report = rollback(environment, previous, stage, reason)
    except Exception as exc:
        notifier.finish(f"🚨 {stage} failed and the rollback failed too")
        notifier.reply(f"🚨 rollback failed: {exc}")
        return Failed(message=f"{stage} failed: {reason}; ROLLBACK FAILED: {exc}")
    notifier.reply(f"↩️ {report.summary()}")
    notifier.finish(f"❌ {stage} failed; {report.summary()}")
    return Failed(message=f"{stage} failed: {reason}; {report.summary()}")
