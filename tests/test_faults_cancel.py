"""The fault matrix (issue 15): a deploy cancelled at any stage is rolled back.

Each test starts v3.2.0 (migration 003: schema 2 → 3) through the sandbox's worker, as the
UI would, over v3.1.0, and cancels it during one stage: from the UI (its Cancel posts the state
Cancelling to the API) or with `prefect flow-run cancel`. The run must end Cancelled with a
message saying what was undone (kept over the worker's generic "Flow run was cancelled
successfully."), v3.1.0 serving alone through nginx, the database as the backup took it (every
table's checksum) or as the restore policy keeps it, the deploy journal closed, and the run's
Slack message saying the same.

SIGTERM of the sandbox's worker (our wrapper, deployments/worker.py) cancels its runs the same
way and waits for them to roll back before it stops Prefect's worker. A run whose process is lost
before it could finish undoing (killed while it rolls back; a SIGKILLed worker is
tests/test_worker_crash.py) leaves its journal open, and the next run rolls the rest back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from datetime import UTC, datetime

import pytest
from prefect.deployments import run_deployment

from sandbox import daemons
from tasks.database.manifest import table_checksums
from tasks.release.cancellation import ROLLING_BACK
from tasks.release.journal import read_journal
from tests.support.app_state import (
    ONE_OFF_LABEL,
    api_health,
    app_containers,
    assert_only_good_replicas,
    replicas_of,
    schema_version,
)
from tests.support.cancels import (
    cancel,
    children_of,
    processes_of_flow_run,
    run_processes_but_its_keeper,
    state_of,
    wait_for_exit,
    wait_for_message,
    wait_until_final,
)
from tests.support.deploys import GOOD, GOOD_WITH_MIGRATION, deploy
from tests.support.faults import Trigger
from tests.support.run_records import slack_thread_of, task_runs_named

pytestmark = pytest.mark.sandbox

NEW_REF, NEW = GOOD_WITH_MIGRATION
PREVIOUS = GOOD[1]


def start_deploy(**parameters) -> str:
    """v3.2.0 through the manual deployment and the worker; returns the run's id."""
    parameters = {
        "git_ref": NEW_REF,
        "version": NEW,
        "skip_signoff": True,
        "load_duration_s": 4.0,
        "load_profiles": ["light"],
        **parameters,
    }
    return str(run_deployment("staging-deploy/manual", timeout=0, parameters=parameters).id)


def migration_waiting_on_a_lock(database) -> bool:
    with database.connect() as conn:
        waiting = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE '%severity%'"
        ).fetchone()[0]
    return waiting > 0


@contextlib.contextmanager
def events_table_held(database):
    """An open transaction holding ACCESS SHARE on ``events``: migration 003's ALTER TABLE waits
    behind it (so a cancel lands during migrate for sure); reads and pg_dump do not."""
    conn = database.connect(autocommit=False)
    try:
        conn.execute("LOCK TABLE events IN ACCESS SHARE MODE")
        yield conn
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()
        conn.close()


def started(task: str, since: datetime):
    return lambda: bool(task_runs_named(f"{task}%", since))


CASES = [  # (stage, how, what the message says was undone)
    ("build", "cli", "nothing was changed"),
    ("migrate", "ui", "the app was not changed, healthy; database "),
    ("load", "ui", "rolled back to revision"),
    ("sign-off", "cli", "rolled back to revision"),
]


@pytest.mark.parametrize(("stage", "how", "undone"), CASES, ids=[f"{s}-{h}" for s, h, _ in CASES])
def test_a_cancelled_deploy_is_rolled_back_and_ends_cancelled_saying_so(
    stage, how, undone, sandbox_env, database_at_schema_2, registered_deployments, slack_messages
):
    database = sandbox_env.database
    checksums_before = table_checksums(database)
    since = datetime.now(UTC)
    held = events_table_held(database) if stage == "migrate" else contextlib.nullcontext()
    with held as lock:
        run_id = start_deploy(
            load_duration_s=25.0 if stage == "load" else 4.0,
            skip_signoff=stage != "sign-off",
        )
        when = {
            "build": started("run_go_tests", since),
            "migrate": lambda: migration_waiting_on_a_lock(database),
            "deploy": lambda: bool(replicas_of(sandbox_env, NEW)),
            "load": started("run_load_test", since),
            "sign-off": lambda: state_of(run_id).is_paused(),
        }[stage]
        with Trigger(when, lambda: cancel(run_id, how), timeout_s=600, poll_s=0.2) as fault:
            fault.join(600)
        fault.assert_fired(f"the run never reached {stage}")
        if lock is not None:  # the cancelled migration's container is gone: the restore may take its locks
            gone = Trigger(lambda: not app_containers(sandbox_env, ONE_OFF_LABEL), lambda: None, timeout_s=60)
            with gone:
                gone.join(60)
            gone.assert_fired("the migration's one-off container was not removed")
            lock.rollback()

        state = wait_for_message(run_id, f"cancelled during {stage}; ")
    print(f"final state: {state.type.value}: {state.message}")

    assert state.is_cancelled(), (state.type, state.message)
    assert state.message.startswith(f"cancelled during {stage}; {undone}"), state.message
    if undone.startswith("rolled back"):
        assert f"({PREVIOUS}), healthy; database " in state.message, state.message
    time.sleep(3)  # the worker's own "cancelled successfully" comes once, right after the process exits
    assert state_of(run_id).message == state.message, "the run's message was overwritten after it was kept"
    assert_only_good_replicas(sandbox_env, PREVIOUS)
    assert api_health()["status_code"] == 200 and api_health().get("version") == PREVIOUS
    # The restore policy decides: the backup back (the database exactly as before the run), or
    # kept as the migration left it (003 is expand-only: v3.1.0 reads schema 3 as it reads 2).
    migrated = stage not in ("build", "migrate")  # the migrate cancel lands while 003 waits for its lock
    if "database restored from pre-deployment-" in state.message:
        assert schema_version(database) == 2
        assert table_checksums(database) == checksums_before, "the database is not as the backup took it"
    else:
        assert stage == "build" or "database kept (" in state.message, state.message
        assert schema_version(database) == (3 if migrated else 2)
        if not migrated:
            assert table_checksums(database) == checksums_before, "the database changed though nothing ran"
    assert read_journal("sandbox") is None, "the journal should be closed: everything was undone"

    posts, updates, replies = slack_thread_of(slack_messages(), state)
    assert len(posts) == 1, posts
    final = (updates or posts)[-1]["text"]
    assert f"cancelled during {stage}; {undone}" in final, final
    if undone.startswith("rolled back"):
        assert any("Rolling back" in m["text"] for m in replies), replies


def test_sigterm_of_the_worker_during_deploy_rolls_the_run_back_before_the_worker_stops(
    sandbox_env, database_at_schema_2, registered_deployments, slack_messages, broken_service
):
    """SIGTERM of the worker (the PID in the sandbox's PID file: our wrapper) once the first new
    replica runs. The wrapper sets the run Cancelling as the UI's Cancel does, the run rolls itself
    back and ends Cancelled saying so, and only then does the wrapper stop Prefect's worker (whose
    own SIGTERM would SIGKILL the run at once)."""
    run_id = start_deploy()
    broken_service("prefect-worker")  # started again below, the sandbox checked whole
    worker = daemons.WORKER.running()
    assert worker is not None, "the sandbox's worker is not running"
    prefect_workers = children_of(worker)
    assert len(prefect_workers) == 1, f"the wrapper should run one Prefect worker: {prefect_workers}"
    with Trigger(lambda: bool(replicas_of(sandbox_env, NEW)), lambda: cancel(run_id, "sigterm"), poll_s=0.2) as fault:
        fault.join(600)
    fault.assert_fired("the run never reached deploy")

    state = wait_for_message(run_id, "cancelled during deploy; ")
    print(f"final state: {state.type.value}: {state.message}")
    assert state.is_cancelled(), (state.type, state.message)
    assert state.message.startswith("cancelled during deploy; rolled back to revision"), state.message
    assert f"({PREVIOUS}), healthy; database " in state.message, state.message
    assert wait_for_exit(worker, timeout_s=90), "the worker did not stop after its runs ended"
    assert wait_for_exit(prefect_workers[0], timeout_s=5), "Prefect's worker outlived the wrapper"
    assert not run_processes_but_its_keeper(run_id), "the run's process outlived its worker"
    assert state_of(run_id).message == state.message, "the run's message was overwritten after it was kept"
    assert_only_good_replicas(sandbox_env, PREVIOUS)
    assert api_health()["status_code"] == 200 and api_health().get("version") == PREVIOUS
    assert read_journal("sandbox") is None, "the journal should be closed: the run undid everything"
    posts, updates, _ = slack_thread_of(slack_messages(), state)
    assert len(posts) == 1, posts
    assert "cancelled during deploy; rolled back" in (updates or posts)[-1]["text"], (updates or posts)[-1]["text"]
    broken_service.restore_now()
    assert daemons.WORKER.healthy(), "the sandbox's worker was not brought back"


def test_a_deploy_whose_process_is_lost_to_a_cancel_is_rolled_back_by_the_next_run(
    sandbox_env, database_at_schema_2, registered_deployments, slack_messages
):
    """The run's own process goes before it could finish undoing, so its journal stays open and the
    next run rolls the half-finished deploy back before it deploys v3.1.0 itself: cancelled during
    deploy from the UI; once the run is rolling back, its process is SIGKILLed (what the worker
    does when a rollback overruns its 30 s grace)."""
    database = sandbox_env.database
    run_id = start_deploy()
    with Trigger(lambda: bool(replicas_of(sandbox_env, NEW)), lambda: cancel(run_id, "ui"), poll_s=0.2) as fault:
        fault.join(600)
    fault.assert_fired("the run never reached deploy")

    def kill_the_run() -> None:
        for pid in processes_of_flow_run(run_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    with Trigger(lambda: state_of(run_id).name == ROLLING_BACK, kill_the_run, timeout_s=60, poll_s=0.1) as killed:
        killed.join(60)
    killed.assert_fired("the run never started rolling back")
    assert wait_until_final(run_id, timeout_s=90).is_final()
    half_done = read_journal("sandbox")
    assert half_done is not None and half_done.flow_run_id == run_id and half_done.stage == "deploy", half_done

    state = deploy(*GOOD)
    print(f"final state: {state.type.value}: {state.message}")
    assert state.is_completed(), state.message
    assert f"after rolling back the half-finished deploy of {NEW}" in state.message, state.message
    assert read_journal("sandbox") is None
    assert state_of(run_id).is_final(), "the lost run is left looking alive"
    # The dead run had migrated; the recovery restores the backup or keeps 003 (expand-only), as the policy says.
    assert schema_version(database) == (2 if "database restored from" in state.message else 3), state.message
    assert_only_good_replicas(sandbox_env, PREVIOUS)
    _, _, replies = slack_thread_of(slack_messages(), state)
    assert any("found a half-finished deploy" in m["text"] and run_id in m["text"] for m in replies), replies
