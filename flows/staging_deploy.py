"""The staging-deploy flow: the guide's stages in order, as a table the runner executes, and its gates."""

from __future__ import annotations

from contextlib import ExitStack
from datetime import UTC, datetime

from prefect import flow
from prefect.context import get_run_context
from prefect.logging import get_run_logger
from prefect.states import Cancelled, Completed, Failed, State

from flows import parameters as p
from flows.rollback import bound_rollback
from tasks.core.models import CheckResult, Verdict
from tasks.core.stages import Effect, Stage
from tasks.database.backup import backup_database
from tasks.database.integrity import check_data_integrity
from tasks.database.migration_lint import measure_migration_effect
from tasks.database.migrations import verify_schema
from tasks.database.preflight import check_database
from tasks.database.restore import RestorePolicy
from tasks.gates.health import check_health
from tasks.gates.load.gate import run_load_test
from tasks.gates.metrics import check_metrics
from tasks.gates.preflight import run_preflight
from tasks.gates.smoke.suite import run_smoke_suite
from tasks.notify import RunNotifier, flow_run_url
from tasks.release.build import build_release
from tasks.release.cancellation import keep_cancelled_message, resume_for_rollback
from tasks.release.deploy import deploy_release, plan_dry_run, record_current_revision, run_migrations
from tasks.release.identity import deploy_identity
from tasks.release.journal import Checkpoint, RunJournal, new_workspace
from tasks.release.lock import DeployLocked, deploy_lock
from tasks.release.recovery import recover_abandoned_run
from tasks.release.run_secrets import protect_run
from tasks.release.snapshot import take_snapshot
from tasks.release.timings import publish_stage_timings
from tasks.release.watch import ReleaseWatch
from tasks.runner import StageRunner, Step
from tasks.signoff.approval import publish_signoff_document, sign_off_release, signoff_required


@flow(name="staging-deploy", flow_run_name="deploy-{git_ref}-to-{environment}")
def staging_deploy(
    git_ref: p.GitRef = "main",
    version: p.Version = None,
    environment: p.EnvironmentName = "sandbox",
    on_collision: p.OnCollision = "wait",
    load_profiles: p.LoadProfiles = None,
    load_duration_s: p.LoadSeconds = 10.0,
    sustained_duration_s: p.SustainedSeconds = 600.0,
    signoff_timeout_h: p.SignoffHours = 24.0,
    skip_signoff: bool = False,
    restore_policy: RestorePolicy = RestorePolicy.IF_SCHEMA_CHANGED,
    dry_run: bool = False,
    allow_migrations: p.MigrationNames = None,
) -> State:
    """Take one release to a signed-off staging deployment, or back to the last good one when any gate fails.

    Args:
        git_ref: Branch, tag or commit of the app repository to deploy (e.g. main, v3.2.0).
        version: Semantic version to stamp and tag the image with (e.g. 3.2.0); empty derives it: a tag v<VERSION> gives VERSION, any other ref VERSION plus the ref and commit.
        environment: Name of the Staging Environment block to deploy to (e.g. sandbox, staging).
        on_collision: When another deploy to the same environment is running: wait for it, or cancel this run (nightly).
        load_profiles: Load profiles to run (light, medium, heavy, sustained); empty uses the environment's.
        load_duration_s: Seconds of each load profile, after a short warm-up.
        sustained_duration_s: Seconds of the sustained profile, when it is asked for.
        signoff_timeout_h: Hours the leads have to sign off before the release is rolled back.
        skip_signoff: Deploy without the leads' sign-off; only where the worker's configuration allows it (the sandbox).
        restore_policy: On rollback, restore the pre-deployment backup if the schema changed since it, always, or never.
        dry_run: Build and push, then only show what a deploy would change and which migrations are pending.
        allow_migrations: Contract or dangerous migrations this run may apply, by file name without .up.sql (e.g. 004_purge_load_test_events); the build refuses any other.
    """  # noqa: E501 (the UI shows each Args line as its field's help)
    env = p.load_environment(environment)
    protect_run(env)  # from here on, every log line, artifact, message and Slack text is redacted
    run, app_env, needs_signoff = get_run_context().flow_run, env.app_environment(), signoff_required(env, skip_signoff)
    title, run_url = f"Staging deploy of {version or git_ref} to {environment}", flow_run_url(str(run.id))
    notifier = RunNotifier(env.slack, title, run_url, get_run_logger(), list(Stage))
    frozen = take_snapshot(environment, env)  # the rollback and recovery use this, never the block as edited later
    undo = bound_rollback(environment, restore_policy, frozen, build=lambda: getattr(runner.results, "build", None))
    journal = RunJournal(environment, str(run.id), run.name, env.database, config=frozen, identity=deploy_identity(env))
    runner = StageRunner(notifier, journal, undo, (DeployLocked,), on_cancel=resume_for_rollback)
    load = (load_profiles or env.load_profiles, load_duration_s, sustained_duration_s)
    r, held = runner.results, ExitStack()  # held: the deploy locks and the build workspace, until the run ends

    def preflight():
        lock = held.enter_context(deploy_lock(deploy_identity(env), wait=on_collision == "wait"))
        runner.fence = lock.check  # before each stage that changes something: is the lock still ours?
        r.recovered = recover_abandoned_run(runner.journal, notifier, undo)  # a run that died holding the lock
        taken = CheckResult(name="deploy lock", verdict=Verdict.PASS, detail=f"taken after {lock.waited_s:.1f} s")
        return run_preflight(env, environment, git_ref, extra_checks=[taken, *check_database(env.database).checks])

    def build():
        workspace = held.enter_context(new_workspace(str(run.id)))
        allowed, builder = allow_migrations or (), env.builder_docker_host
        release = build_release(
            env.app_repo, git_ref, version, env.registry, builder, workspace, env.database, allowed, env.app_repo_token
        )
        r.target = env.target.with_checkout(release.source_dir)
        if dry_run:  # only show what a deploy would change
            r.plan = plan_dry_run(r.target, release.digest, release.version, app_env, release.migrations)
        return release

    def backup():  # where a rollback goes back to: the revision serving now (read first), the database as it is
        previous = record_current_revision(r.target)
        dump = backup_database(env.database, run_label=f"{r.build.version} {r.build.commit[:12]}")
        return Checkpoint(version=r.build.version, previous=previous, backup=dump)

    def migrate():
        ran = run_migrations(r.target, r.build.digest, app_env)
        schema = verify_schema(env.database, r.build.schema_version)
        r.build.migrations = measure_migration_effect(env.database, r.build.migrations)  # rows before and after
        return ran, schema

    def deploy():
        rollout = deploy_release(r.target, r.build.digest, r.build.version, app_env, env.rollout_timeout_s)
        r.deployed_at = datetime.now(UTC)
        # Watched from now until the run ends (held stops it): checked before every later stage.
        r.watch = held.enter_context(ReleaseWatch(r.target, len(rollout.replicas), logger=get_run_logger()))
        runner.guards.append(r.watch.check)
        return rollout

    def health():
        expected = r.target.replicas_to_check(r.deploy)
        return check_health(env, r.target.replica_urls(), env.health_timeout_s, expected)

    def metrics():
        integrity = check_data_integrity(env.database, r.backup.backup, r.build.schema_version)
        return check_metrics(env, since=r.deployed_at), integrity

    def sign_off():
        gates, timeout_s = [r.health, r.smoke, r.metrics[0]], signoff_timeout_h * 3600
        return sign_off_release(env, r.build, gates, r.load, timeout_s, notifier, guard=r.watch.check)

    steps = [  # stage, what it changes, its step; a step that returns reports is a gate
        Step(Stage.PREFLIGHT, Effect.NOTHING, preflight),
        Step(Stage.BUILD, Effect.NOTHING, build),
        Step(Stage.BACKUP, Effect.NOTHING, backup, checkpoint=True),
        Step(Stage.MIGRATE, Effect.DATABASE, migrate),
        Step(Stage.DEPLOY, Effect.APP, deploy),
        Step(Stage.HEALTH, Effect.NOTHING, health),
        Step(Stage.SMOKE, Effect.NOTHING, lambda: run_smoke_suite(env)),
        Step(Stage.LOAD, Effect.NOTHING, lambda: run_load_test(env, *load), judged_later=True),  # judged with metrics
        Step(Stage.METRICS, Effect.NOTHING, metrics),
        Step(Stage.SIGN_OFF, Effect.NOTHING, sign_off, skipped="" if needs_signoff else "sandbox run without sign-off"),
    ]
    with runner, held:
        if ended := runner.run(steps[:2] if dry_run else steps):
            if ended.skipped:
                return Cancelled(message=f"{ended.message} (on_collision=cancel)")
            publish_stage_timings(runner.timings)
            if ended.cancelled:  # said by the run itself, kept over the worker's generic message
                keep_cancelled_message(ended.message)
                return Cancelled(message=ended.message)
            return Failed(message=ended.message)
        if dry_run:
            runner.succeed(f"🔍 dry run of {r.build.version}: nothing was changed")
            planned = f"{len(r.plan.changes)} objects would change, {len(r.plan.pending_migrations)} migrations pending"
            return Completed(message=f"dry run of {r.build.version}: {planned}; nothing was changed")
        runner.succeed(f"✅ {r.build.version} is live on {environment}")
        publish_stage_timings(runner.timings)
        if needs_signoff:
            publish_signoff_document(r.sign_off)  # again, so the signed document is the run's last artifact
        live = f"{r.build.version} ({r.build.commit[:12]}) deployed to {environment}{r.recovered}"
        return Completed(message=live, data=r.build)
