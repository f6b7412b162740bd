"""The staging-deploy flow end to end on the Docker target, against the real sandbox.

Each test starts from the state its fixtures set up (the good release serving, a private copy of
the app repository or of the environment, a Slack outage that ends with the test), never from
what an earlier test left.
"""

from __future__ import annotations

import contextvars
import json
import subprocess
import threading
import time
from datetime import UTC, datetime

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
)
from prefect.deployments import run_deployment
from prefect.flow_runs import resume_flow_run

from tests.support.app_state import api_health, serving_versions
from tests.support.background_load import BackgroundLoad
from tests.support.deploys import GOOD, deploy
from tests.support.run_records import slack_thread_of, task_runs_of, wait_for_paused_deploy
from tests.support.signoff import signed_input

pytestmark = pytest.mark.sandbox


def wait_for_final_state(flow_run_id, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            state = client.read_flow_run(flow_run_id).state
            if state.is_final():
                return state
            time.sleep(2)
    raise AssertionError(f"flow run {flow_run_id} did not finish within {timeout_s} s")


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"git_ref": "main; rm -rf /", "version": "3.1.0"}, "git_ref"),
        ({"git_ref": "$(touch /tmp/pwned)", "version": "3.1.0"}, "git_ref"),
        ({"git_ref": "--upload-pack=evil", "version": "3.1.0"}, "git_ref"),
        ({"git_ref": "v3.1.0", "version": "3.1"}, "version"),
        ({"git_ref": "v3.1.0", "version": "v3.1.0"}, "version"),
        ({"git_ref": "v3.1.0", "version": "3.1.0", "environment": "no-such-environment"}, "environment"),
    ],
)
def test_invalid_parameters_are_rejected_before_any_stage(sandbox_env, parameters, field):
    revisions_before = sandbox_env.target.history()
    parameters = {"environment": "sandbox", **parameters}
    state = deploy(**parameters)
    assert state.is_failed()
    assert field in state.message
    assert task_runs_of(state) == [], "a stage ran although a parameter was invalid"
    assert sandbox_env.target.history() == revisions_before


def test_good_release_deploys_without_a_failed_request(sandbox_env, deployed_good_release, slack_messages):
    # From a release already serving: with nothing behind nginx every request would fail.
    git_ref, version = GOOD
    with BackgroundLoad(rate=50) as load:
        state = deploy(git_ref, version)
    print(f"background load during the deploy: {load.sent} requests, {len(load.failures)} failed")
    assert state.is_completed(), state.message
    assert serving_versions(sandbox_env) == {version}
    assert len(sandbox_env.target.replica_urls()) == 3
    assert api_health()["status_code"] == 200
    assert load.sent > 50 and load.failures == []
    posts, updates, _ = slack_thread_of(slack_messages(), state)
    assert len(posts) == 1, "one Slack message per run, updated in place"
    assert updates and "is live" in updates[-1]["text"] and "/runs/flow-run/" in updates[-1]["text"]


@pytest.mark.parametrize(
    ("git_ref", "version", "expected_reason", "evidence"),
    [
        # The replica's last log line says why it never became healthy.
        ("v3.2.1-crash", "3.2.1-crash", "before becoming healthy", 'it said: {"error":"events query: pq: column'),
        ("v3.2.1-unhealthy", "3.2.1-unhealthy", "503", "answered 503"),
    ],
)
def test_bad_release_is_rolled_back_automatically(
    sandbox_env, deployed_good_release, slack_messages, git_ref, version, expected_reason, evidence
):
    with BackgroundLoad(rate=50) as load:
        state = deploy(git_ref, version)
    print(f"background load during deploy and rollback: {load.sent} requests, {len(load.failures)} failed")
    assert state.is_failed()
    assert state.message.startswith("deploy failed:")
    assert expected_reason in state.message and evidence in state.message
    assert "rolled back to revision" in state.message and deployed_good_release in state.message
    assert serving_versions(sandbox_env) == {deployed_good_release}
    assert api_health()["status_code"] == 200
    assert load.failures == [] and load.sent > 50
    _, _, replies = slack_thread_of(slack_messages(), state)
    assert any("deploy failed" in m["text"] for m in replies)
    assert any("rolled back to revision" in m["text"] for m in replies)


def test_failing_go_test_never_touches_the_target(sandbox_env, deployed_good_release, app_repo_copy, environment_copy):
    failing = app_repo_copy / "cmd" / "architect" / "zz_release_gate_test.go"
    failing.write_text(
        'package main\n\nimport "testing"\n\nfunc TestReleaseGate(t *testing.T) { t.Fatal("deliberately failing") }\n'
    )
    git = ["git", "-C", str(app_repo_copy), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "checkout", "--quiet", "-b", "failing-test", "v3.1.0"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "a failing test"], check=True)
    name = environment_copy(app_repo=str(app_repo_copy))
    revisions_before = sandbox_env.target.history()

    state = deploy("failing-test", "3.1.1-failing", environment=name)

    assert state.is_failed()
    assert state.message.startswith("build failed: go test failed")
    assert "TestReleaseGate" in state.message and "nothing was changed" in state.message
    assert sandbox_env.target.history() == revisions_before
    assert serving_versions(sandbox_env) == {deployed_good_release}


@pytest.mark.parametrize("mode", ["hang", "error"])
def test_a_dead_slack_does_not_change_the_outcome(sandbox_env, deployed_good_release, slack_mode, mode):
    """Slack hangs (every call times out) or answers errors for the whole run: the deploy completes."""
    slack_mode(mode)
    state = deploy(*GOOD)
    assert state.is_completed(), state.message
    assert serving_versions(sandbox_env) == {GOOD[1]}


def test_two_manual_triggers_never_deploy_at_the_same_time(sandbox_env, deployed_good_release, registered_deployments):
    parameters = {
        "git_ref": GOOD[0],
        "version": GOOD[1],
        "environment": "sandbox",
        "load_duration_s": 4.0,
        "skip_signoff": True,
    }
    runs = [run_deployment("staging-deploy/manual", parameters=parameters, timeout=0) for _ in range(2)]
    states = [wait_for_final_state(run.id, timeout_s=900) for run in runs]
    assert all(state.is_completed() for state in states), [s.message for s in states]
    spans = []
    for state in states:
        deploys = [t for t in task_runs_of(state) if t.task_key.startswith("deploy_release")]
        assert len(deploys) == 1
        spans.append((deploys[0].start_time, deploys[0].end_time))
    (_, first_end), (second_start, _) = sorted(spans)
    assert first_end <= second_start, f"deploys overlapped: {spans}"


def artifacts_of(state) -> dict:
    """The run's artifacts by key (its subflows' included)."""
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    return {a.key: a for a in artifacts if a.key}


def artifact_keys_of(state) -> set[str]:
    return set(artifacts_of(state))


def test_good_release_passes_every_gate_with_its_reports(sandbox_env, deployed_good_release):
    state = deploy(*GOOD)
    assert state.is_completed(), state.message
    keys = artifact_keys_of(state)
    for key in (
        "preflight",
        "build-tests",
        "rollout",
        "health-gate",
        "smoke-gate",
        "load-test-results",
        "load-test-report",
        "metrics-gate",
        "stage-timings",
    ):
        assert key in keys, f"artifact {key} missing"


@pytest.mark.parametrize(
    ("git_ref", "version", "failing_stage", "expected"),
    [
        # The guide's targets catch a slow release in the load test (p95 > 500 ms) ...
        ("v3.2.1-slow", "3.2.1-slow", "load", ["p95"]),
        # ... and an erroring one both in the load test's error rate and in Prometheus' 5xx ratio.
        ("v3.2.1-erroring", "3.2.1-erroring", "load", ["metrics: 5xx error rate"]),
        # A broken logout fails exactly its own smoke check and nothing else.
        ("v3.2.1-brokensmoke", "3.2.1-brokensmoke", "smoke", ["smoke failed: auth: logout clears the session"]),
    ],
)
def test_a_release_that_fails_a_gate_is_rolled_back(
    sandbox_env, deployed_good_release, git_ref, version, failing_stage, expected
):
    state = deploy(git_ref, version)
    assert state.is_failed()
    assert state.message.startswith(f"{failing_stage} failed:"), state.message
    for text in expected:
        assert text.lower() in state.message.lower(), state.message
    if failing_stage == "smoke":
        rows = json.loads(artifacts_of(state)["smoke-gate"].data)
        assert [r["name"] for r in rows if r["verdict"] != "pass"] == ["auth: logout clears the session"]
    assert "rolled back to revision" in state.message
    assert serving_versions(sandbox_env) == {deployed_good_release}


def test_a_rejected_sign_off_rolls_the_release_back(sandbox_env, deployed_good_release):
    """The whole flow up to the leads' pause; the security lead rejects; the release goes."""
    started = datetime.now(UTC)
    outcome = {}
    context = contextvars.copy_context()  # keeps the test's Prefect settings in the thread
    runner = threading.Thread(
        target=context.run,
        args=(lambda: outcome.update(state=deploy("v3.2.0", "3.2.0", skip_signoff=False, signoff_timeout_h=0.25)),),
        daemon=True,
    )
    runner.start()
    # A deploy that fails before the pause says why at once, rather than after the whole wait.
    run_id = wait_for_paused_deploy(
        started, 600, ended=lambda: outcome["state"].message if "state" in outcome else None
    )
    assert serving_versions(sandbox_env) == {"3.2.0"}, "the release is live while the leads look at it"
    resume_flow_run(run_id, run_input=signed_input(run_id, "security", "reject", "CORS allows too much"), _sync=True)
    runner.join(300)
    state = outcome["state"]
    assert state.is_failed()
    assert state.message.startswith("sign-off failed: not signed off: rejected by Sam Security (security)")
    assert "CORS allows too much" in state.message and "rolled back to revision" in state.message
    assert serving_versions(sandbox_env) == {deployed_good_release}
    assert "sign-off" in artifact_keys_of(state)
