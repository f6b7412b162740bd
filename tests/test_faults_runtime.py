"""The fault matrix (issue 8), while the release runs: a replica killed during the health gate,
the Docker engine restarted mid-rollout, nginx reloaded during the load test. A background
load through nginx counts every request that failed meanwhile: users must not see the fault.
Each starts from the good release serving (``deployed_good_release``); the engine's restart is
declared with ``broken_service``, whose finaliser checks that the sandbox is whole again.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import docker
import pytest

from sandbox import daemons
from tests.support.app_state import assert_only_good_replicas, replicas_of, serving_versions
from tests.support.background_load import BackgroundLoad
from tests.support.deploys import GOOD_WITH_MIGRATION, deploy
from tests.support.faults import Trigger
from tests.support.run_records import assert_slack_told, task_started

pytestmark = pytest.mark.sandbox


def test_a_replica_killed_during_the_health_gate_fails_it_and_rolls_back(
    sandbox_env, deployed_good_release, slack_messages
):
    """One replica of the new release is SIGKILLed as the health gate starts. The gate wants
    every replica healthy three times in a row, so it fails naming that replica; the rollback
    puts the good release back (the killed container removed), and the
    load balancer routes around the dead replica: no request fails."""
    started = datetime.now(UTC)
    killed: list[str] = []

    def kill_one_replica() -> None:
        victim = replicas_of(sandbox_env, GOOD_WITH_MIGRATION[1])[0]
        killed.append(victim.labels["architect.port"])
        victim.kill()

    with (
        BackgroundLoad(rate=50) as load,
        Trigger(task_started("check_health", started), kill_one_replica, poll_s=0.1) as fault,
    ):
        state = deploy(*GOOD_WITH_MIGRATION)
    print(f"final state: {state.type.value}: {state.message}")
    print(f"background load: {load.sent} requests, {len(load.failures)} failed")
    fault.assert_fired("no replica was killed: the health gate was not seen")
    assert state.is_failed()
    assert state.message.startswith("health failed:"), state.message
    assert f"127.0.0.1:{killed[0]}" in state.message.split(";")[0], state.message
    assert "rolled back to revision" in state.message and deployed_good_release in state.message, state.message
    assert ", healthy; database " in state.message, state.message
    assert_only_good_replicas(sandbox_env, deployed_good_release)
    assert load.sent > 50 and load.failures == [], load.failures[:5]
    assert_slack_told(slack_messages(), state, "health failed", "rolled back to revision")


def restart_engine(down_s: float = 3.0) -> None:
    """Stop dockerd (live-restore keeps its containers running), stay down a moment, start it."""
    daemons.DOCKER.stop()
    time.sleep(down_s)
    daemons.DOCKER.ensure()


def test_the_docker_engine_restarting_mid_rollout_rolls_back_without_downtime(
    sandbox_env, deployed_good_release, slack_messages, broken_service
):
    """dockerd restarts while the first replica of the new release is starting. The rollout
    cannot tell what happened (the engine did not answer), so the deploy stage fails and the
    rollback, retried until the engine answers again, puts the good release back. The old
    replicas never stop (the engine runs with live-restore), so no request fails."""
    client = docker.DockerClient(base_url=sandbox_env.target.docker_host, timeout=10)
    assert client.info().get("LiveRestoreEnabled"), "dockerd runs without --live-restore: restart the sandbox"
    client.close()
    new_version = GOOD_WITH_MIGRATION[1]
    broken_service("dockerd")  # restart_engine starts it again itself; the finaliser makes sure
    with (
        BackgroundLoad(rate=50) as load,
        Trigger(lambda: bool(replicas_of(sandbox_env, new_version)), restart_engine, poll_s=0.1) as fault,
    ):
        state = deploy(*GOOD_WITH_MIGRATION)
    broken_service.restore_now()
    print(f"final state: {state.type.value}: {state.message}")
    print(f"background load: {load.sent} requests, {len(load.failures)} failed")
    fault.assert_fired("the engine was not restarted: no replica of the new release was seen")
    assert state.is_failed()
    assert state.message.startswith("deploy failed: Docker engine at"), state.message
    assert "did not answer while rolling out" in state.message, state.message
    assert "rolled back to revision" in state.message and deployed_good_release in state.message, state.message
    assert ", healthy;" in state.message, state.message
    assert_only_good_replicas(sandbox_env, deployed_good_release)
    assert load.sent > 50 and load.failures == [], load.failures[:5]
    assert_slack_told(slack_messages(), state, "deploy failed", "rolled back to revision")


def reload_nginx_three_times() -> None:
    for _ in range(3):
        daemons.reload_nginx()
        time.sleep(1)


def test_nginx_reloaded_during_the_load_test_changes_nothing(sandbox_env, deployed_good_release, slack_messages):
    """nginx re-reads its configuration three times while the load test runs (what a
    certificate rotation does). Reloads are graceful, so the load gate passes, the release goes
    live, and the background load sees no failed request."""
    started = datetime.now(UTC)
    with (
        BackgroundLoad(rate=50) as load,
        Trigger(task_started("run_load_test", started), reload_nginx_three_times) as fault,
    ):
        state = deploy(*GOOD_WITH_MIGRATION)
    print(f"final state: {state.type.value}: {state.message}")
    print(f"background load: {load.sent} requests, {len(load.failures)} failed, {load.retried} sent again")
    fault.assert_fired("nginx was not reloaded: the load stage was not seen")
    assert state.is_completed(), state.message
    assert serving_versions(sandbox_env) == {GOOD_WITH_MIGRATION[1]}
    assert load.sent > 50 and load.failures == [], load.failures[:5]
