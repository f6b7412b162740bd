"""The staging-deploy flow end to end on the Docker target, against the real sandbox."""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment

from sandbox import config
from tests.background_load import BackgroundLoad
from tests.conftest import GOOD, api_health, deploy, serving_versions

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


def slack_thread_of(messages: list[dict], state) -> tuple[list[dict], list[dict], list[dict]]:
    """The run's own Slack message (posts, updates) and the replies in its thread."""
    run_id = str(state.state_details.flow_run_id)
    posts = [m for m in messages if m["kind"] == "chat.postMessage" and not m.get("thread_ts") and run_id in m["text"]]
    timestamps = {m["ts"] for m in posts}
    updates = [m for m in messages if m["kind"] == "chat.update" and m["ts"] in timestamps]
    replies = [m for m in messages if m.get("thread_ts") in timestamps]
    return posts, updates, replies


def task_runs_of(state) -> list:
    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )


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


def test_good_release_deploys_without_a_failed_request(sandbox_env, slack_messages):
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
    ("git_ref", "version", "expected_reason"),
    [
        ("v3.2.1-crash", "3.2.1-crash", "exited with status"),
        ("v3.2.1-unhealthy", "3.2.1-unhealthy", "503"),
    ],
)
def test_bad_release_is_rolled_back_automatically(
    sandbox_env, deployed_good_release, slack_messages, git_ref, version, expected_reason
):
    with BackgroundLoad(rate=50) as load:
        state = deploy(git_ref, version)
    print(f"background load during deploy and rollback: {load.sent} requests, {len(load.failures)} failed")
    assert state.is_failed()
    assert state.message.startswith("deploy failed:")
    assert expected_reason in state.message
    assert f"rolled back to revision" in state.message and deployed_good_release in state.message
    assert serving_versions(sandbox_env) == {deployed_good_release}
    assert api_health()["status_code"] == 200
    assert load.failures == [] and load.sent > 50
    _, _, replies = slack_thread_of(slack_messages(), state)
    assert any("deploy failed" in m["text"] for m in replies)
    assert any("rolled back to revision" in m["text"] for m in replies)


def test_failing_go_test_never_touches_the_target(sandbox_env, deployed_good_release, app_repo_copy, environment_copy):
    failing = app_repo_copy / "cmd" / "architect" / "zz_release_gate_test.go"
    failing.write_text('package main\n\nimport "testing"\n\nfunc TestReleaseGate(t *testing.T) { t.Fatal("deliberately failing") }\n')
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


def test_a_dead_slack_does_not_change_the_outcome(sandbox_env, deployed_good_release):
    httpx.post(f"{config.SLACK_CONTROL_URL}/mode", json={"mode": "hang"}, timeout=5).raise_for_status()
    try:
        state = deploy(*GOOD)
    finally:
        httpx.post(f"{config.SLACK_CONTROL_URL}/mode", json={"mode": "ok"}, timeout=5)
    assert state.is_completed(), state.message
    assert serving_versions(sandbox_env) == {GOOD[1]}


def test_two_manual_triggers_never_deploy_at_the_same_time(sandbox_env, deployed_good_release, registered_deployments):
    parameters = {"git_ref": GOOD[0], "version": GOOD[1], "environment": "sandbox"}
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
