"""The fault matrix (issue 15): two environments that share one database, deployed at once.

``sandbox`` names the database as ``127.0.0.1``, its copy as ``localhost``; both name the same
Docker target. They are one deploy identity, so one lock and one journal: started together,
the two runs never overlap (one waits for the other's lock), and a half-finished deploy left
by either environment is rolled back by the first run to hold the lock, before it changes
anything, never later under the other's running release.
"""

from __future__ import annotations

import uuid

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)

from tasks.core.models import utcnow
from tasks.core.stages import Stage
from tasks.database import retention
from tasks.release.identity import deploy_identity
from tasks.release.journal import (
    DeployJournal,
    RunJournal,
    clear_journal,
    journal_key,
    legacy_journal_key,
    read_journal,
    write_journal,
)
from tests.support.app_state import assert_only_good_replicas
from tests.support.blocks import unsaved
from tests.support.deploys import GOOD
from tests.support.parallel_deploys import deploy_together

pytestmark = pytest.mark.sandbox


def same_database_via_localhost(sandbox_env):
    """The sandbox's database block spelt ``localhost``, saved inline with its environment copy."""
    assert sandbox_env.database.host == "127.0.0.1", sandbox_env.database.host
    return unsaved(sandbox_env.database, host="localhost")


def dead_run_journal(environment: str, identity) -> DeployJournal:
    """What a run of ``environment`` that died during its deploy left open (it changed nothing
    this test would have to set right, so its rollback is quick)."""
    return DeployJournal(
        environment=environment,
        flow_run_id=str(uuid.uuid4()),  # its run is gone from the server too
        flow_run_name=f"dead-run-{uuid.uuid4().hex[:6]}",
        version="9.9.9-dead",
        stage=Stage.DEPLOY,
        changed=[],
        previous=None,
        started_at=utcnow(),
        identity=identity,
    )


@flow(name="test-leave-a-journal-open")
def leave_open(journal: DeployJournal) -> None:
    write_journal(journal)


@flow(name="test-write-a-legacy-journal")
def leave_open_under_the_old_key(journal: DeployJournal) -> None:
    """As an earlier release wrote it: keyed by the environment, without an identity."""
    from prefect.artifacts import create_markdown_artifact

    legacy = journal.model_copy(update={"identity": None})
    create_markdown_artifact(
        key=legacy_journal_key(journal.environment),
        markdown=f"## Deploy journal of `{journal.environment}`: OPEN\n\n```json\n{legacy.model_dump_json()}\n```\n",
    )


@flow(name="test-close-journal")
def close(environment: str) -> None:
    clear_journal(environment)


def backup_of(flow_run_id: str) -> str:
    """The backup a run took, as its backup report names it."""
    with get_client(sync_client=True) as client:
        reports = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[retention.BACKUP_ARTIFACT_KEY]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
    names = [retention.backup_named_by(r.key, r.description, r.data) for r in reports]
    assert len(names) == 1 and names[0], names
    return names[0]


def task_window(flow_run_id: str) -> tuple:
    """From the run's backup (the first thing it does under the lock that changes anything) to its last task's end."""
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    backups = [t.start_time for t in tasks if t.name.startswith("backup_database") and t.start_time]
    assert backups, f"run {flow_run_id} took no backup: {sorted(t.name for t in tasks)}"
    return min(backups), max(t.end_time for t in tasks if t.end_time)


def test_two_spellings_of_one_database_read_one_journal(sandbox_env, environment_copy):
    """A journal written by the ``localhost`` copy is the sandbox's journal, and one an earlier
    release left under the per-environment key is still found and closed."""
    copy = environment_copy(database=same_database_via_localhost(sandbox_env))
    from blocks.environment import StagingEnvironment

    identity = deploy_identity(StagingEnvironment.load(copy))
    assert identity == deploy_identity(sandbox_env)
    assert read_journal("sandbox") is None, "a half-finished deploy is already on record"
    journal = dead_run_journal(copy, identity)
    leave_open(journal)
    try:
        found = read_journal("sandbox")
        assert found is not None and found.flow_run_id == journal.flow_run_id and found.environment == copy
        assert RunJournal("sandbox", "r", "n", sandbox_env.database, identity=deploy_identity(sandbox_env)).read()
    finally:
        close(copy)
    assert read_journal("sandbox") is None and read_journal(copy) is None

    legacy = dead_run_journal(copy, None)
    leave_open_under_the_old_key(legacy)
    try:
        found = read_journal(copy)
        assert found is not None and found.flow_run_id == legacy.flow_run_id, "the old key's journal was not found"
    finally:
        close(copy)
    assert read_journal(copy) is None, "closing left the per-environment journal open"
    assert journal_key(identity) != legacy_journal_key(copy)


def test_two_environments_sharing_a_database_deploy_one_after_the_other(
    sandbox_env, deployed_good_release, environment_copy, tmp_path
):
    """Both deploy the good release at once. A half-finished deploy of the copy is on record:
    the first run to hold the lock rolls it back before its backup; the second finds nothing
    left to roll back and starts its backup only after the first has finished."""
    copy = environment_copy(database=same_database_via_localhost(sandbox_env))
    identity = deploy_identity(sandbox_env)
    assert read_journal("sandbox") is None, "a half-finished deploy is already on record"
    dead = dead_run_journal(copy, identity)
    leave_open(dead)
    try:
        outcomes = deploy_together(*GOOD, ["sandbox", copy], logs=tmp_path)
    finally:
        if read_journal("sandbox") is not None:
            close("sandbox")
    for outcome in outcomes:
        print(f"{outcome.environment}: {outcome.type}: {outcome.message}")
        assert outcome.type == "COMPLETED", (outcome.environment, outcome.message)

    windows = {o.environment: task_window(o.flow_run_id) for o in outcomes}
    first, second = sorted(outcomes, key=lambda o: windows[o.environment][0])
    assert windows[first.environment][1] <= windows[second.environment][0], f"the two deploys overlapped: {windows}"
    recovered = [o for o in outcomes if f"rolling back the half-finished deploy of {dead.version}" in o.message]
    assert [o.environment for o in recovered] == [first.environment], [o.message for o in outcomes]
    assert read_journal("sandbox") is None and read_journal(copy) is None
    assert_only_good_replicas(sandbox_env, GOOD[1])
    # Both backups are in the one namespace of the database, whichever spelling took them.
    stored = {f.name for f in sandbox_env.database.backups().list()}
    for outcome in outcomes:
        name = backup_of(outcome.flow_run_id)
        assert {f"{name}.dump", f"{name}.manifest.json"} <= stored, (outcome.environment, name)
