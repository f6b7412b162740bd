"""The staging-deploy flow: only the order of stages, the gates and the rollback trigger."""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from datetime import datetime, timezone
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
from tasks.metrics import check_metrics
from tasks.models import CheckResult, GateReport, Verdict
from tasks.notify import RunNotifier, flow_run_url
from tasks.preflight import run_preflight
from tasks.smoke import run_smoke_suite

STAGES = ["preflight", "build", "migrate", "deploy", "health", "smoke", "metrics"]
# From this stage on the target has changed: a failure rolls it back.
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
    env = load_environment(environment)
    notifier = RunNotifier(
        slack=env.slack,
        title=f"Staging deploy of {version or git_ref} to {environment}",
        run_url=flow_run_url(str(get_run_context().flow_run.id)),
        logger=get_run_logger(),
        stage_names=STAGES,
    )
    held = ExitStack()
    stage, previous = STAGES[0], None
    try:
        try:
            waited = held.enter_context(deploy_lock(environment, wait=on_collision == "wait"))
        except DeployLocked as exc:
            notifier.finish(f"➖ skipped: {exc}")
            return Cancelled(message=f"{exc}; this run was cancelled (on_collision=cancel)")
        workspace = held.enter_context(tempfile.TemporaryDirectory(prefix="architect-build-"))

        with notifier.running(stage := "preflight"):
            lock = CheckResult(name="deploy lock", verdict=Verdict.PASS, detail=f"taken after {waited:.1f} s")
            require(run_preflight(env, environment, git_ref, extra_checks=[lock]))
        with notifier.running(stage := "build"):
            build = build_release(env.app_repo, git_ref, version, env.registry, env.builder_docker_host, workspace)
        target = env.target.with_checkout(build.source_dir)
        previous = record_current_revision(target)
        with notifier.running(stage := "migrate"):
            run_migrations(target, build.digest, env.app_environment())
        with notifier.running(stage := "deploy"):
            deploy_release(target, build.digest, build.version, env.app_environment(), env.rollout_timeout_s)
        deployed_at = datetime.now(timezone.utc)
        with notifier.running(stage := "health"):
            require(check_health(env, target.replica_urls(), env.health_timeout_s))
        with notifier.running(stage := "smoke"):
            require(run_smoke_suite(env))
        with notifier.running(stage := "metrics"):
            require(check_metrics(env, since=deployed_at))
    except Exception as exc:  # any failure ends the run here, rolled back when the target changed
        reason = str(exc) if isinstance(exc, DeployError) else f"{type(exc).__name__}: {exc}"
        return _fail(notifier, environment, stage, reason, previous)
    else:
        notifier.finish(f"✅ {build.version} is live on {environment}")
        _report_timings(notifier)
        return Completed(message=f"{build.version} ({build.commit[:12]}) deployed to {environment}", data=build)
    finally:
        held.close()
        notifier.close()


def _report_timings(notifier: RunNotifier) -> None:
    create_table_artifact(
        key="stage-timings",
        table=[{"stage": name, "seconds": seconds} for name, seconds in notifier.timings().items()],
        description="How long each stage took",
    )


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
    _report_timings(notifier)
    return Failed(message=f"{stage} failed: {reason}; {report.summary()}")
