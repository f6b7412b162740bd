"""The fault matrix (issue 15): a replica that dies after the health gate. The release is watched
from its rollout until the run ends (tasks/release/watch.py), so a replica that crashes during
the load test, or is killed while the leads look at the release, fails the run naming it, and
the rollback puts the good release back. First, the Docker target's side of it on a throwaway
app of its own: what ``replica_states()`` reports, and the restart policy that turns a crash
into a restart.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import docker
import pytest

from tasks.core.errors import ReleaseUnhealthy
from tasks.release.watch import ReleaseWatch
from tests.support.app_state import assert_only_good_replicas, replicas_of
from tests.support.background_load import BackgroundLoad
from tests.support.deploys import GOOD_WITH_MIGRATION, deploy
from tests.support.faults import Trigger
from tests.support.release_watch import (
    BackgroundDeploy,
    artifacts_of,
    crash,
    remove_app_containers,
    wait_for_paused_deploy,
)
from tests.support.run_records import assert_slack_told, task_started

pytestmark = pytest.mark.sandbox

WATCH_TEST_APP = "architect-watch-test"  # its own label and ports: the sandbox's app is untouched


def wait_for(condition, timeout_s: float = 30, what: str = "", seen=lambda: ""):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.2)
    raise AssertionError(f"never happened: {what}; {seen()}")


@pytest.fixture
def watch_test_target(sandbox_env, deployed_good_release, tmp_path):
    """A Docker target for one replica of the good release's image under another app name and
    ports (18991, 18992), with its own history; its containers removed afterwards."""
    target = sandbox_env.target.model_copy(
        update={
            "app_name": WATCH_TEST_APP,
            "replicas": 1,
            "ports": [18991, 18992],
            "history_file": str(tmp_path / "history.json"),
        }
    )
    remove_app_containers(target.docker_host, WATCH_TEST_APP)
    yield target
    remove_app_containers(target.docker_host, WATCH_TEST_APP)


def test_the_docker_target_reports_its_replicas_and_brings_a_crashed_one_back(sandbox_env, watch_test_target):
    """One replica, healthy: running, ready (its /health answers 200), no restarts. Its process
    SIGKILLed from the host (a crash): the restart policy starts it again, RestartCount says so,
    and the watch fails naming it. ``docker kill`` (a stop the engine was asked for) is not
    restarted: the replica shows exited with status 137."""
    target, image = watch_test_target, sandbox_env.target.current_revision().image
    rollout = target.deploy(image, "watch-test", sandbox_env.app_environment(), 90)
    assert rollout.complete, rollout.reason
    [state] = target.replica_states()
    assert (state.running, state.ready, state.restarts) == (True, True, 0), state
    assert state.name.endswith("-18991")
    client = docker.DockerClient(base_url=target.docker_host, timeout=30)
    try:
        container = client.containers.get(state.name)
        assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "on-failure"
        with ReleaseWatch(target, len(rollout.replicas), interval_s=0.5) as watch:
            watch.check()
            crash(container)
            back = wait_for(
                lambda: [s for s in target.replica_states() if s.restarts == 1 and s.running],
                what="the crashed replica restarted",
                seen=lambda: f"replicas: {target.replica_states()}; logs: {target.fetch_logs(20)}",
            )
            assert back[0].name == state.name  # the same container, restarted
            wait_for(lambda: watch.problem, what="the watch's own thread seeing the crash")
            with pytest.raises(ReleaseUnhealthy, match=rf"replica {state.name} (restarted|stopped running)") as seen:
                watch.check()
            print(f"the watch said: {seen.value}")
        container.kill()
        stopped = wait_for(lambda: [s for s in target.replica_states() if not s.running], what="the killed replica")
        assert stopped[0].detail == "exited with status 137", stopped
        time.sleep(2)  # the restart policy's first retry would be after 0.1 s
        assert not target.replica_states()[0].running, "a replica stopped by request was restarted"
    finally:
        client.close()


def test_a_replica_that_crashes_during_the_load_test_fails_the_run_and_it_rolls_back(
    sandbox_env, database_at_schema_2, deployed_good_release, slack_messages
):
    """v3.2.0 passes the health gate and smoke; while the load test runs, one of its replicas
    crashes (SIGKILL from the host). The restart policy brings it back at once, so every later
    gate might pass; the watch saw the restart, so the run fails naming the replica, and the
    good release is back (the database as the restore policy says)."""
    started = datetime.now(UTC)
    crashed: list[str] = []

    def crash_one_replica() -> None:
        victim = replicas_of(sandbox_env, GOOD_WITH_MIGRATION[1])[0]
        crashed.append(victim.name)
        crash(victim)

    with (
        BackgroundLoad(rate=20) as load,
        Trigger(task_started("run_load_test", started), crash_one_replica, poll_s=0.2) as fault,
    ):
        state = deploy(*GOOD_WITH_MIGRATION)
    print(f"final state: {state.type.value}: {state.message}")
    print(f"background load: {load.sent} requests, {len(load.failures)} failed")
    fault.assert_fired("no replica crashed: the load stage was not seen")
    assert state.is_failed()
    reason = state.message.split("; rolled back")[0]
    assert f"replica {crashed[0]} " in reason, state.message
    assert "restarted" in reason or "restarting after it exited with status 137" in reason, state.message
    assert state.message.split(" failed:")[0] in ("load", "metrics"), state.message  # after the gates it passed
    assert "rolled back to revision" in state.message and deployed_good_release in state.message, state.message
    assert ", healthy; database " in state.message, state.message  # restored or kept, as the restore policy says
    assert_only_good_replicas(sandbox_env, deployed_good_release)
    assert_slack_told(slack_messages(), state, crashed[0], "rolled back to revision")


def test_a_replica_killed_during_the_sign_off_pause_ends_the_wait_and_rolls_back(
    sandbox_env, database_at_schema_2, deployed_good_release, slack_messages
):
    """The whole flow up to the leads' pause (a timeout of 15 minutes); then one replica of
    v3.2.0 is killed. The wait does not last until the timeout: the watch ends it, the sign-off
    document says why, the run fails at sign-off naming the replica and is never left Paused;
    the good release is back (the database as the restore policy says)."""
    started = datetime.now(UTC)
    run = BackgroundDeploy(*GOOD_WITH_MIGRATION, skip_signoff=False, signoff_timeout_h=0.25)
    run.start()
    wait_for_paused_deploy(started, ended=lambda: None if run.is_alive() else repr(run.state))
    victim = replicas_of(sandbox_env, GOOD_WITH_MIGRATION[1])[0]
    victim.kill()
    run.join(300)  # far less than the 15-minute sign-off timeout: only the watch ends the wait this soon
    assert not run.is_alive(), "the run still waits for sign-off after its replica was killed"
    state = run.state
    print(f"final state: {state.type.value}: {state.message}")
    assert state.is_failed()
    assert state.message.startswith(
        f"sign-off failed: not signed off: the release went bad while waiting for sign-off: replica {victim.name} "
        "stopped running"
    ), state.message
    assert "exited with status 137" in state.message, state.message
    assert "rolled back to revision" in state.message and deployed_good_release in state.message, state.message
    assert ", healthy; database " in state.message, state.message
    document = artifacts_of(state.state_details.flow_run_id)["sign-off"].data
    assert "Outcome: ABORTED" in document and victim.name in document, document[:2000]
    assert_only_good_replicas(sandbox_env, deployed_good_release)
    assert_slack_told(slack_messages(), state, "sign-off failed", victim.name, "rolled back to revision")
