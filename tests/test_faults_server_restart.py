"""A Prefect server restart keeps every concurrency lease: they live in the sandbox's Redis
(prefect_redis.lease_storage), not in the server's memory.

Before, a restart lost them: the holder's renewal got 410 and Prefect cancelled the run, while the
slots stayed taken, so every later deploy waited forever. Now the deploy lock's holder rides the
restart out (its check waits for the server), a second taker is still kept out, the slots are
free the moment the holder releases them, and a deployment's own concurrency slot keeps its lease.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from prefect.client.orchestration import get_client
from prefect.flow_runs import resume_flow_run
from prefect.states import Cancelled, Pending, Scheduled

from tasks.core.errors import DeployLocked
from tasks.release.identity import deploy_identity
from tasks.release.lock import deploy_lock
from tests.support.app_state import assert_only_good_replicas, serving_versions
from tests.support.deploy_locks import (
    PREFECT_SERVER,
    DeployInThread,
    active_slots,
    forget,
    lease_in_redis,
    new_identity,
    paused_deploy,
)
from tests.support.deploys import GOOD_WITH_MIGRATION
from tests.support.faults import Service, Trigger
from tests.support.run_records import task_started
from tests.support.signoff import signed_input

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(600)]


@pytest.fixture
def identity(sandbox_up):
    made = new_identity()
    yield made
    forget(made)


def test_a_held_deploy_lock_survives_a_server_restart(identity, broken_service):
    server = broken_service(PREFECT_SERVER)
    with deploy_lock(identity, wait=False) as lock:
        lease = lock.lease_id
        server.stop()
        checked: list[BaseException | None] = []
        checker = threading.Thread(target=lambda: checked.append(_check(lock)))
        checker.start()  # the check waits for the server rather than failing
        checker.join(3)
        assert checker.is_alive(), "check() answered while the server was down"
        assert lease_in_redis(lease), "the stopped server's lease is gone from Redis"
        server.start()
        checker.join(90)
        assert checked == [None], f"check() across the restart raised {checked}"
        assert lock.lease_id == lease and lease_in_redis(lease)
        assert [active_slots(name) for name in lock.names] == [1, 1]
        with pytest.raises(DeployLocked), deploy_lock(identity, wait=False):
            pytest.fail("took a lock held across a restart")
    assert not lease_in_redis(lease)
    with deploy_lock(identity, wait=False) as next_run:  # free at once: no leftover slot
        next_run.check()


def _check(lock) -> BaseException | None:
    try:
        lock.check()
    except BaseException as exc:  # handed to the test thread
        return exc
    return None


def test_a_deployments_concurrency_slot_keeps_its_lease_across_a_restart(registered_deployments, broken_service):
    server: Service = broken_service(PREFECT_SERVER)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("staging-deploy/manual")
        limit = deployment.global_concurrency_limit
        assert limit is not None, "the manual deployment has no concurrency limit"
        # A run the worker will not pick up (due tomorrow), made Pending by hand: the server then
        # takes the deployment's slot under a lease, as it does for a worker's run.
        run = client.create_flow_run_from_deployment(
            deployment.id, state=Scheduled(scheduled_time=datetime.now(UTC) + timedelta(days=1))
        )
        try:
            client.set_flow_run_state(run.id, Pending())
            pending = client.read_flow_run(run.id)
            lease = pending.state.state_details.deployment_concurrency_lease_id
            assert lease is not None, f"the run did not take the deployment's slot: {pending.state}"
            assert lease_in_redis(lease)
            slots_before = client.read_global_concurrency_limit_by_name(limit.name).active_slots
        except BaseException:
            client.set_flow_run_state(run.id, Cancelled(), force=True)
            client.delete_flow_run(run.id)
            raise
    try:
        server.stop()
        assert lease_in_redis(lease)
        server.start()
        with get_client(sync_client=True) as client:
            client.renew_concurrency_lease(lease, 300)  # what the run's engine does: the server still has it
            assert client.read_global_concurrency_limit_by_name(limit.name).active_slots == slots_before
    finally:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Cancelled(), force=True)  # gives the slot back
            client.delete_flow_run(run.id)
            assert not lease_in_redis(lease), "the cancelled run's deployment lease was not released"
            assert client.read_global_concurrency_limit_by_name(limit.name).active_slots == slots_before - 1


# -- whole deploys --------------------------------------------------------------------------------


def test_a_server_restart_during_the_sign_off_pause_leaves_the_run_paused_and_signable(
    sandbox_env, database_at_schema_2, deployed_good_release, broken_service
):
    """The whole flow up to the leads' pause; the server restarts. The run is still paused under
    the same key, still holds its lock; a lead's signed rejection is taken and rolls it back;
    the lock is free at once afterwards."""
    server = broken_service(PREFECT_SERVER)
    identity = deploy_identity(sandbox_env)
    started = datetime.now(UTC)
    run = DeployInThread(*GOOD_WITH_MIGRATION, skip_signoff=False, signoff_timeout_h=0.25)
    run.start()
    run_id = paused_deploy(started, run)
    with get_client(sync_client=True) as client:
        key = client.read_flow_run(run_id).state.state_details.pause_key
    server.stop()
    server.start()
    with get_client(sync_client=True) as client:
        after = client.read_flow_run(run_id).state
    assert after.is_paused() and after.state_details.pause_key == key, (after.type, after.message)
    assert run.is_alive()
    with pytest.raises(DeployLocked), deploy_lock(identity, wait=False):
        pytest.fail("took the paused run's lock after the restart")
    resume_flow_run(run_id, run_input=signed_input(run_id, "security", "reject", "after the restart"), _sync=True)
    run.join(300)
    assert run.error is None and run.state is not None, run.error
    print(f"final state: {run.state.type.value}: {run.state.message}")
    assert run.state.is_failed()
    assert run.state.message.startswith("sign-off failed: not signed off: rejected by"), run.state.message
    assert "after the restart" in run.state.message and "rolled back to revision" in run.state.message
    assert_only_good_replicas(sandbox_env, deployed_good_release)
    with deploy_lock(identity, wait=False) as next_run:  # the next run is not blocked
        next_run.check()


def test_a_server_restart_during_deploy_never_blocks_the_next_run(
    sandbox_env, database_at_schema_2, deployed_good_release, broken_service
):
    """The server restarts while the deploy task runs. The run either carries on to the end or
    rolls back; either way it ends, and the lock is free the moment it has."""
    server = broken_service(PREFECT_SERVER)
    identity = deploy_identity(sandbox_env)
    started = datetime.now(UTC)
    run = DeployInThread(*GOOD_WITH_MIGRATION)
    with Trigger(task_started("deploy_release", started), lambda: (server.stop(), server.start()), poll_s=0.2) as fault:
        run.start()
        run.join(900)
    fault.assert_fired("the deploy task never started")
    assert run.error is None and run.state is not None, run.error
    state = run.state
    print(f"final state: {state.type.value}: {state.message}")
    if state.is_completed():
        assert serving_versions(sandbox_env) == {GOOD_WITH_MIGRATION[1]}
    else:
        assert state.is_failed() and "rolled back to revision" in state.message, state.message
        assert_only_good_replicas(sandbox_env, deployed_good_release)
    with deploy_lock(identity, wait=False) as next_run:
        next_run.check()
