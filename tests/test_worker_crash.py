"""The fault matrix (issue 8): the worker dies mid-deploy, taking its flow run with it.

That run can undo nothing: it is gone, and the server still shows it Running. The next run
to hold the environment's lock (which the dead run's lease loses by itself) finds the dead
run's journal, closes that run as Crashed, rolls the app back to the revision it replaced and
the database back to its pre-deployment backup, removes its leftovers, and only then deploys.
The worker is declared with ``broken_service``: started again and the sandbox checked whole.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from tasks.release.journal import read_journal, workspace_prefix
from tests.support.app_state import assert_only_good_replicas, replicas_of, schema_version
from tests.support.cancels import kill_worker_and_its_run
from tests.support.deploys import GOOD, GOOD_WITH_MIGRATION, deploy
from tests.support.faults import Trigger
from tests.support.run_records import slack_thread_of

pytestmark = pytest.mark.sandbox


def test_a_deploy_whose_worker_died_is_rolled_back_by_the_next_run(
    sandbox_env, database_at_schema_2, registered_deployments, slack_messages, broken_service
):
    """v3.2.0 (migration 003) is deployed through the worker; the worker and its run are killed
    once the first new replica runs. The next run (v3.1.0) reports the half-finished deploy,
    marks that run Crashed, rolls the app and the database back, and then completes."""
    database = sandbox_env.database
    new_version = GOOD_WITH_MIGRATION[1]
    dead = run_deployment(
        "staging-deploy/manual",
        timeout=0,
        parameters={
            "git_ref": GOOD_WITH_MIGRATION[0],
            "version": new_version,
            "skip_signoff": True,
            "load_duration_s": 4.0,
        },
    )
    dead_id = str(dead.id)
    broken_service("prefect-worker")
    with Trigger(
        lambda: bool(replicas_of(sandbox_env, new_version)), lambda: kill_worker_and_its_run(dead_id), poll_s=0.1
    ) as fault:
        fault.join(600)  # until the rollout of the worker's run has begun and both are killed
    broken_service.restore_now()
    fault.assert_fired("the worker's run never started its rollout")
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(dead_id).state.is_running(), "the server should still think it runs"
    half_done = read_journal("sandbox")
    assert half_done is not None and half_done.flow_run_id == dead_id and half_done.stage == "deploy", half_done
    assert half_done.slack_message is not None, "the journal does not say where the dead run's Slack message is"
    assert schema_version(database) == 3, "the dead run had migrated"

    state = deploy(*GOOD)
    print(f"final state: {state.type.value}: {state.message}")
    assert state.is_completed(), state.message
    assert f"after rolling back the half-finished deploy of {new_version}" in state.message, state.message
    assert "database restored from" in state.message, state.message
    with get_client(sync_client=True) as client:
        closed = client.read_flow_run(dead_id).state
    assert closed.is_crashed() and "found and rolled back by run" in closed.message, (closed.type, closed.message)
    assert read_journal("sandbox") is None
    assert schema_version(database) == 2
    assert_only_good_replicas(sandbox_env, GOOD[1])
    assert not list(Path(tempfile.gettempdir()).glob(workspace_prefix(dead_id) + "*")), (
        "the dead run's workspace is left"
    )
    _, _, replies = slack_thread_of(slack_messages(), state)
    assert any("found a half-finished deploy" in m["text"] and dead_id in m["text"] for m in replies), replies
    # The dead run's own message no longer says it is running: the recovering run closed it.
    dead_message = [m for m in slack_messages() if m["ts"] == half_done.slack_message.ts and not m.get("thread_ts")]
    with get_client(sync_client=True) as client:
        recovering_run = client.read_flow_run(state.state_details.flow_run_id).name
    assert dead_message and "💀" in dead_message[-1]["text"] and recovering_run in dead_message[-1]["text"], (
        dead_message
    )
