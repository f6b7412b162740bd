"""The fault matrix (issue 8), outside services: one of them fails at a chosen stage of a real
deploy; the run must end in a clear state naming why, leave the last good release serving and
nothing of its own running, and say so in Slack.

Each test stops exactly one sandbox service through the sandbox's own API (by its PID file),
declared with the ``broken_service`` fixture: its finaliser starts the service again and checks
that every ``sandbox status`` row is healthy, failing the run loudly if the sandbox did not recover.
Each starts from the good release serving (``deployed_good_release``), whatever ran before.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from datetime import UTC, datetime

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from tests.support.app_state import assert_only_good_replicas, schema_version
from tests.support.deploys import GOOD, GOOD_WITH_MIGRATION, deploy
from tests.support.faults import Trigger
from tests.support.run_records import assert_slack_told, slack_thread_of, task_runs_named, task_runs_of, task_started

pytestmark = pytest.mark.sandbox

# -- the faults ------------------------------------------------------------------------------


def test_database_down_at_preflight_fails_it_and_changes_nothing(
    sandbox_env, deployed_good_release, slack_messages, broken_service
):
    """The PostgreSQL primary is down when a deploy starts: the run ends Failed with
    "preflight failed:" naming the database check, nothing is built or deployed (target
    history unchanged), the good release keeps serving, Slack has the reason."""
    revisions_before = sandbox_env.target.history()
    primary = broken_service("postgres-primary")
    assert primary.stop(), "the primary was not running"
    state = deploy(*GOOD_WITH_MIGRATION)
    broken_service.restore_now()  # the replicas' health and the checks below need the database back
    print(f"final state: {state.type.value}: {state.message}")
    assert state.is_failed()
    assert state.message.startswith("preflight failed:"), state.message
    assert "database primary" in state.message and "nothing was changed" in state.message, state.message
    assert not [t for t in task_runs_of(state) if not t.name.startswith(("run_preflight", "check_database"))]
    assert sandbox_env.target.history() == revisions_before
    assert_only_good_replicas(sandbox_env, deployed_good_release)
    assert_slack_told(slack_messages(), state, "preflight failed", "database primary")


def test_registry_down_at_push_fails_the_build_and_changes_nothing(
    sandbox_env, deployed_good_release, slack_messages, broken_service
):
    """The registry goes down after preflight (when the Go tests start), so the push fails:
    the run ends Failed with "build failed:" naming the docker push, after push_image tried
    three times (two retries on TemporaryError); target history unchanged, good release serving."""
    revisions_before = sandbox_env.target.history()
    started = datetime.now(UTC)
    registry = broken_service("registry")
    with Trigger(task_started("run_go_tests", started), registry.stop) as fault:
        state = deploy("v3.1.0", "3.1.1-nopush")
    print(f"final state: {state.type.value}: {state.message}")
    fault.assert_fired("the registry was never stopped: the build stage was not seen")
    assert state.is_failed()
    assert state.message.startswith("build failed: docker push failed"), state.message
    assert "nothing was changed" in state.message, state.message
    pushes = [t for t in task_runs_of(state) if t.name.startswith("push_image")]
    assert len(pushes) == 1 and pushes[0].run_count == 3, [(t.name, t.run_count) for t in pushes]
    assert not [t for t in task_runs_of(state) if t.name.startswith(("verify_image", "backup", "deploy_release"))]
    assert sandbox_env.target.history() == revisions_before
    assert_only_good_replicas(sandbox_env, deployed_good_release)
    assert_slack_told(slack_messages(), state, "build failed", "docker push failed")


def test_prometheus_down_at_the_metrics_gate_rolls_back(
    sandbox_env, deployed_good_release, slack_messages, broken_service
):
    """Prometheus goes down once the load test starts: the metrics gate cannot read anything,
    which is inconclusive, never a pass; the run ends Failed with "metrics failed:" saying
    inconclusive / unreachable, and the good release is rolled back to and serving."""
    started = datetime.now(UTC)
    prometheus = broken_service("prometheus")
    with Trigger(task_started("run_load_test", started), prometheus.stop) as fault:
        state = deploy(*GOOD_WITH_MIGRATION)
    print(f"final state: {state.type.value}: {state.message}")
    fault.assert_fired("Prometheus was never stopped: the load stage was not seen")
    assert state.is_failed()
    assert state.message.startswith("metrics failed:"), state.message
    assert "inconclusive" in state.message and "unreachable" in state.message, state.message
    assert "rolled back to revision" in state.message and deployed_good_release in state.message, state.message
    assert ", healthy;" in state.message, state.message
    assert_only_good_replicas(sandbox_env, deployed_good_release)
    assert_slack_told(slack_messages(), state, "metrics failed", "rolled back to revision")


def test_a_nightly_run_colliding_with_a_manual_one_is_cancelled(sandbox_env, deployed_good_release, slack_messages):
    """A manual deploy holds the environment's lock; a nightly run (on_collision="cancel") that
    starts meanwhile ends Cancelled saying another deploy runs, runs no stage at all, and the
    manual one completes."""
    started = datetime.now(UTC)
    outcome: dict = {}
    context = contextvars.copy_context()  # keeps the test's Prefect settings in the thread
    manual = threading.Thread(target=context.run, args=(lambda: outcome.update(state=deploy(*GOOD)),), daemon=True)
    manual.start()
    try:
        # The lock is taken before preflight: once its preflight task ran, the manual run holds it.
        deadline = time.monotonic() + 120
        while not task_runs_named("check_database", started) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert task_runs_named("check_database", started), "the manual deploy never got past the lock"
        nightly = deploy("main", None, on_collision="cancel")
    finally:
        manual.join(600)
    print(f"nightly: {nightly.type.value}: {nightly.message}")
    assert nightly.is_cancelled(), (nightly.type, nightly.message)
    assert "another deploy" in nightly.message and "on_collision=cancel" in nightly.message, nightly.message
    assert task_runs_of(nightly) == [], "a stage of the cancelled run ran"
    assert not manual.is_alive(), "the manual deploy did not finish"
    assert outcome["state"].is_completed(), outcome["state"].message
    assert_only_good_replicas(sandbox_env, GOOD[1])
    posts, updates, _ = slack_thread_of(slack_messages(), nightly)
    assert len(posts) == 1 and "another deploy" in (updates or posts)[-1]["text"], posts + updates
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[nightly.state_details.flow_run_id]))
        )
    assert logs and not [log.message for log in logs if log.level >= logging.ERROR], "an expected skip logged an ERROR"


def test_a_release_nobody_signs_off_is_rolled_back_when_the_sign_off_times_out(
    sandbox_env, database_at_schema_2, deployed_good_release, slack_messages
):
    """The whole flow, v3.2.0 (migration 003) up to the leads' pause, and nobody signs within the
    timeout (10 s here): the run ends Failed at sign-off saying it timed out, never left Paused;
    the good release is back, and the database kept: 003 only expands it, which 3.1.0 lives with."""
    state = deploy(*GOOD_WITH_MIGRATION, skip_signoff=False, signoff_timeout_h=10 / 3600)
    print(f"final state: {state.type.value}: {state.message}")
    assert state.is_failed()
    assert state.message.startswith("sign-off failed: not signed off: timed out after 10 s"), state.message
    assert "rolled back to revision" in state.message, state.message
    assert "database kept (only expand migrations were applied (003_event_severity)" in state.message, state.message
    assert schema_version(sandbox_env.database) == 3
    assert_only_good_replicas(sandbox_env, deployed_good_release)
    assert_slack_told(slack_messages(), state, "sign-off failed", "rolled back to revision")
