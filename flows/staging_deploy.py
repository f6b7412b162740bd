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
from blocks.validation import GIT_REF, MAX_INPUT_LENGTH, NAME, SEMVER, check_git_ref, check_name, check_semver
from flows.rollback import rollback
from tasks.signoff.approval import publish_signoff_document, sign_off_release, signoff_required
from tasks.release.build import build_release
from tasks.gates.health import check_health
from tasks.database.backup import MigrationResult, backup_database, check_data_integrity, check_database, verify_schema
from tasks.release.deploy import (
    deploy_release,
    list_pending_migrations,
    plan_release,
    record_current_revision,
    run_migrations,
)
from tasks.core.errors import DeployError, GateFailed, InvalidInput
from tasks.release.journal import (DeployJournal, clear_journal, close_abandoned_run, load_backup, new_journal,
                           read_journal, remove_workspaces, workspace_prefix, write_journal)
from tasks.gates.load.gate import LoadReport, run_load_test
from tasks.release.lock import DeployLocked, deploy_lock
from tasks.gates.metrics import check_metrics
from tasks.core.models import CheckResult, GateReport, Verdict
from tasks.notify import RunNotifier, flow_run_url
from tasks.gates.preflight import run_preflight
from tasks.database.restore import RestorePolicy
from tasks.gates.smoke.suite import run_smoke_suite

STAGES = ["preflight", "build", "backup", "migrate", "deploy", "health", "smoke", "load", "metrics", "sign-off"]
# From "migrate" on the database may have changed, from "deploy" on the app: a failure undoes them.
DATABASE_CHANGED_FROM, APP_CHANGED_FROM = "migrate", "deploy"

# Empty means the same as absent (derive the version) in the UI form, the API and the CLI; the schema
# says so too, since the server checks a deployment run's parameters against it.
Version = Annotated[
    str | None,
    Field(pattern=f"^$|{SEMVER.pattern}", max_length=MAX_INPUT_LENGTH),
    AfterValidator(lambda v: check_semver(v) if v else None),
]
# The schema (the UI's form, the server's check of a deployment run) carries the full rule; pydantic's
# own regex engine has no look-arounds, so the validator applies it here.
GitRef = Annotated[str, Field(json_schema_extra={"pattern": GIT_REF.pattern}), AfterValidator(check_git_ref)]
EnvironmentName = Annotated[str, Field(pattern=NAME.pattern), AfterValidator(check_name)]


Report = GateReport | LoadReport | MigrationResult


def _named(report: Report) -> tuple[str, str]:
    """(stage, why) of a report that did not pass."""
    if isinstance(report, GateReport):
        return report.stage, report.summary()
    if isinstance(report, LoadReport):
        return "load", f"load: {report.reason}"
    return "migrate", f"migrate: {report.detail}"


def require(*reports: Report) -> None:
    """Gates pass only on PASS (inconclusive is not a pass). Every failing gate is named,
    so a release that fails load and metrics says so both ways."""
    failed = [_named(r) for r in reports if r.verdict != Verdict.PASS]
    if failed:
        stage = failed[0][0]
        # "<stage> failed: " starts the run's message already; later gates keep their names.
        whys = [why.removeprefix(f"{stage}: ") if n == 0 else why for n, (_, why) in enumerate(failed)]
        raise GateFailed("; ".join(whys), stage=stage)


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
    load_profiles: list[Literal["light", "medium", "heavy", "sustained"]] | None = None,
    load_duration_s: Annotated[float, Field(gt=0, le=3600)] = 10.0,
    sustained_duration_s: Annotated[float, Field(gt=0, le=86400)] = 600.0,
    signoff_timeout_h: Annotated[float, Field(gt=0, le=168)] = 24.0,
    skip_signoff: bool = False,
    restore_policy: RestorePolicy = RestorePolicy.IF_SCHEMA_CHANGED,
    dry_run: bool = False,
) -> State:
    """Take one release of the Architect Dashboard API to a signed-off staging deployment,
    or back to the last good release when any gate fails.

    Args:
        git_ref: Branch, tag or commit of the app repository to deploy (e.g. main, v3.2.0).
        version: Semantic version to stamp and tag the image with (e.g. 3.2.0); empty derives it from the VERSION file and the commit.
        environment: Name of the Staging Environment block to deploy to (e.g. sandbox, staging).
        on_collision: When another deploy to the same environment is running: wait for it, or cancel this run (nightly).
        load_profiles: Load profiles to run (light, medium, heavy, sustained); empty uses the environment's.
        load_duration_s: Seconds of each load profile, after a short warm-up.
        sustained_duration_s: Seconds of the sustained profile, when it is asked for.
        signoff_timeout_h: Hours the leads have to sign off before the release is rolled back.
        skip_signoff: Deploy without the leads' sign-off; refused for every environment but the sandbox.
        restore_policy: On rollback, restore the pre-deployment backup if the schema changed since it, always, or never.
        dry_run: Build and push, then only show what a deploy would change and which migrations are pending.
    """
    env = load_environment(environment)
    needs_signoff = signoff_required(env, skip_signoff)
    notifier = RunNotifier(
        slack=env.slack,
        title=f"Staging deploy of {version or git_ref} to {environment}",
        run_url=flow_run_url(str(get_run_context().flow_run.id)),
        logger=get_run_logger(),
        stage_names=STAGES,
    )
    held = ExitStack()
    stage, previous, backup, recovered = STAGES[0], None, None, ""
    try:
        try:
            waited = held.enter_context(
                deploy_lock(environment, env.database.identity(), wait=on_collision == "wait")
            )
        except DeployLocked as exc:
            notifier.finish(f"➖ skipped: {exc}")
            return Cancelled(message=f"{exc}; this run was cancelled (on_collision=cancel)")
        run = get_run_context().flow_run
        workspace = held.enter_context(tempfile.TemporaryDirectory(prefix=workspace_prefix(str(run.id))))

        with notifier.running(stage := "preflight"):
            if abandoned := read_journal(environment):
                recovered = _recover(notifier, env, environment, abandoned, restore_policy)
            lock = CheckResult(name="deploy lock", verdict=Verdict.PASS, detail=f"taken after {waited:.1f} s")
            database = check_database(env.database)
            require(run_preflight(env, environment, git_ref, extra_checks=[lock, *database.checks]))
        with notifier.running(stage := "build"):
            build = build_release(env.app_repo, git_ref, version, env.registry, env.builder_docker_host, workspace)
        target = env.target.with_checkout(build.source_dir)
        if dry_run:
            plan = plan_release(target, build.digest, build.version, env.app_environment())
            pending = list_pending_migrations(env.builder_docker_host, build.digest, env.app_environment())
            notifier.finish(f"🔍 dry run of {build.version}: nothing was changed")
            return Completed(message=f"dry run of {build.version}: {len(plan.changes)} objects would change, "
                             f"{len(pending)} migrations pending; nothing was changed")
        previous = record_current_revision(target)
        with notifier.running(stage := "backup"):
            backup = backup_database(env.database, run_label=f"{build.version} {build.commit[:12]}")
        journal = write_journal(new_journal(environment, run, build.version, previous, backup.name, notifier.message))
        with notifier.running(stage := "migrate"):
            run_migrations(target, build.digest, env.app_environment())
            require(verify_schema(env.database, build.schema_version))
        with notifier.running(stage := "deploy"):
            write_journal(journal.at(stage))
            rollout = deploy_release(target, build.digest, build.version, env.app_environment(), env.rollout_timeout_s)
        deployed_at = datetime.now(timezone.utc)
        with notifier.running(stage := "health"):
            expected = target.replicas_to_check(rollout)
            require(health := check_health(env, target.replica_urls(), env.health_timeout_s, expected))
        with notifier.running(stage := "smoke"):
            require(smoke := run_smoke_suite(env))
        with notifier.running(stage := "load"):
            load = run_load_test(env, load_profiles or env.load_profiles, load_duration_s, sustained_duration_s)
        with notifier.running(stage := "metrics"):
            # Metrics are read even after a failed load test: the report then names both.
            integrity = check_data_integrity(env.database, backup, build.schema_version)
            require(load, metrics := check_metrics(env, since=deployed_at), integrity)
        stage = "sign-off"
        if needs_signoff:  # the sign-off keeps the run's Slack line itself, so no notifier.running here
            write_journal(journal.at(stage))  # the longest wait of a run: a death here is likeliest
            record = sign_off_release(env, build, [health, smoke, metrics], load, signoff_timeout_h * 3600, notifier)
        else:
            notifier.stage("sign-off", "skipped", "sandbox run without sign-off")
    except Exception as exc:  # any failure ends the run here, rolled back when the target changed
        reason = str(exc) if isinstance(exc, DeployError) else f"{type(exc).__name__}: {exc}"
        stage = exc.stage if getattr(exc, "stage", None) in STAGES else stage
        return _fail(notifier, environment, stage, reason, previous, backup, restore_policy)
    else:
        clear_journal(environment)
        notifier.finish(f"✅ {build.version} is live on {environment}")
        _report_timings(notifier)
        if needs_signoff:
            publish_signoff_document(record)  # again, so the signed document is the run's last artifact
        return Completed(message=f"{build.version} ({build.commit[:12]}) deployed to {environment}{recovered}",
                         data=build)
    finally:
        held.close()
        notifier.close()


def _recover(notifier, env, environment: str, abandoned: DeployJournal, restore_policy) -> str:
    """A run died mid-deploy (we hold the lock it held): close it, undo its changes, then go on."""
    this_run = get_run_context().flow_run.name
    notifier.reply(f"⚠️ found a half-finished deploy: {abandoned.describe()}; rolling it back first")
    closed = close_abandoned_run(abandoned, this_run)
    remove_workspaces(abandoned.flow_run_id)
    report = rollback(environment, abandoned.previous, abandoned.stage, abandoned.describe(),
                      load_backup(env.database, abandoned.backup), restore_policy, undo_app=True)
    clear_journal(environment)
    notifier.reply(f"↩️ recovered from the half-finished deploy ({closed}): {report.summary()}")
    if abandoned.slack_message:  # its run can no longer say how it ended
        notifier.overwrite(abandoned.slack_message, f"💀 {abandoned.describe()}: its process died. "
                                                    f"Rolled back by run {this_run}: {report.summary()}")
    if not report.healthy:
        raise GateFailed(f"the half-finished deploy of {abandoned.version} was rolled back, but {report.summary()}",
                         stage="preflight")
    return f", after rolling back the half-finished deploy of {abandoned.version} ({report.summary()})"


def _report_timings(notifier: RunNotifier) -> None:
    create_table_artifact(
        key="stage-timings",
        table=[{"stage": name, "seconds": seconds} for name, seconds in notifier.timings().items()],
        description="How long each stage took",
    )


def _fail(notifier, environment, stage, reason, previous, backup, restore_policy) -> State:
    """End the run Failed naming the stage; first undo what the run changed (app, database)."""
    notifier.stage(stage, "failed", reason[:300])
    if STAGES.index(stage) < STAGES.index(DATABASE_CHANGED_FROM):
        notifier.finish(f"❌ {stage} failed; nothing was changed")
        notifier.reply(f"❌ {stage} failed: {reason}")
        return Failed(message=f"{stage} failed: {reason} (nothing was changed)")
    notifier.reply(f"❌ {stage} failed: {reason}\nRolling back…")
    undo_app = STAGES.index(stage) >= STAGES.index(APP_CHANGED_FROM)
    try:
        report = rollback(environment, previous, stage, reason, backup, restore_policy, undo_app)
    except Exception as exc:
        notifier.finish(f"🚨 {stage} failed and the rollback failed too")
        notifier.reply(f"🚨 rollback failed: {exc}")
        return Failed(message=f"{stage} failed: {reason}; ROLLBACK FAILED: {exc}")
    clear_journal(environment)  # rolled back: nothing left for the next run to undo
    notifier.reply(f"↩️ {report.summary()}")
    notifier.finish(f"❌ {stage} failed; {report.summary()}")
    _report_timings(notifier)
    return Failed(message=f"{stage} failed: {reason}; {report.summary()}")
