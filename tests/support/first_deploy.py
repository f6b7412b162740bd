"""Environments a test may deploy to for the first time, a throwaway database, and a deploy that
waits for its sign-off in the background.

``fresh_docker_environment`` saves a copy of the sandbox environment whose Docker target has
never deployed anything: its own app name, its own port slots (never the sandbox app's
18081-18084) and its own revision history. Whatever the test leaves of that app is removed
afterwards. ``throwaway_database`` is a database of its own on the sandbox's PostgreSQL, dropped
afterwards. Test modules import these fixtures by name.
"""

from __future__ import annotations

import contextvars
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentTaskRunId,
)
from prefect.flow_runs import resume_flow_run

from sandbox import config
from tests.support.blocks import unsaved
from tests.support.deploys import deploy
from tests.support.run_records import wait_for_paused_deploy

# Port slots of the first-deploy app: free on the sandbox, and none of its app's or the benchmarks'.
FRESH_PORTS = [18261, 18262, 18263, 18264]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((config.HOST, port)) == 0


def app_containers(target) -> list[str]:
    """Names of every container of ``target``'s app, running or not (what `docker ps -a` lists)."""
    client = target.get_client()
    try:
        found = client.containers.list(all=True, filters={"label": f"architect.app={target.app_name}"})
        return sorted(c.name for c in found)
    finally:
        client.close()


def _remove_app(target) -> None:
    client = target.get_client()
    try:
        for c in client.containers.list(all=True, filters={"label": f"architect.app={target.app_name}"}):
            c.remove(force=True)
    finally:
        client.close()


@pytest.fixture
def fresh_docker_environment(environment_copy, sandbox_env, tmp_path) -> Iterator[Callable[..., str]]:
    """``name = fresh_docker_environment(**changes)``: a saved copy of the sandbox environment
    whose Docker target has never deployed (another app name, other ports, an empty history)."""
    busy = [p for p in FRESH_PORTS if _listening(p)]
    assert not busy, f"the first-deploy port slots are taken: {busy}"
    # Saved inside its environment, never as a reference to the sandbox's target block.
    target = unsaved(
        sandbox_env.target,
        app_name=f"first-{uuid.uuid4().hex[:8]}",
        ports=FRESH_PORTS,
        history_file=str(tmp_path / "docker-history.json"),
    )
    assert target.current_revision() is None and app_containers(target) == []
    made: list[str] = []

    def make(**changes) -> str:
        name = environment_copy(target=target, **changes)
        made.append(name)
        return name

    make.target = target  # type: ignore[attr-defined]
    yield make
    _remove_app(target)
    assert not [p for p in FRESH_PORTS if _listening(p)], "a first-deploy replica is still listening"


@pytest.fixture
def throwaway_database(sandbox_env) -> Iterator:
    """A database of its own (owned by the app's role, one table with rows), dropped afterwards."""
    name = f"architect_throwaway_{uuid.uuid4().hex[:8]}"
    admin = config.pg_superuser_conninfo()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" OWNER "{sandbox_env.database.user}"')
    database = unsaved(sandbox_env.database, dbname=name)
    with database.connect() as conn:
        conn.execute("CREATE TABLE marker (id int PRIMARY KEY, note text NOT NULL)")
        conn.execute("INSERT INTO marker SELECT g, 'untouched ' || g FROM generate_series(1, 50) g")
    try:
        yield database
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class BackgroundDeploy:
    """A staging deploy run in a thread (in a copy of the test's context, so its Prefect settings
    hold) that pauses for the leads; the test signs, as a lead would, from the terminal."""

    def __init__(self, git_ref: str, version: str, environment: str, **parameters):
        self.started = datetime.now(UTC)
        self.outcome: dict = {}
        parameters = {"skip_signoff": False, "signoff_timeout_h": 0.25, **parameters}
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run,
            args=(lambda: self.outcome.update(state=deploy(git_ref, version, environment, **parameters)),),
            daemon=True,
        )
        self._thread.start()
        self.id = None

    def wait_paused(self, within_s: float = 600):
        ended = lambda: self.outcome["state"].message if "state" in self.outcome else None  # noqa: E731
        self.id = wait_for_paused_deploy(self.started, within_s, ended)
        return self.id

    def reject(self, role: str = "security", notes: str = "not this one", within_s: float = 300):
        from tests.support.signoff import signed_input  # heavy: only for the tests that sign

        resume_flow_run(self.id, run_input=signed_input(self.id, role, "reject", notes), _sync=True)
        self._thread.join(within_s)
        assert "state" in self.outcome, "the deploy did not end after the rejection"
        return self.outcome["state"]


def rollback_runs_of(flow_run_id) -> list:
    """The rollback subflow runs of a deploy run (their parameters as Prefect stored them)."""
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        )
        return client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["rollback"])),
            flow_run_filter=FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[t.id for t in tasks])),
        )


def artifacts_of_run(flow_run_id) -> dict[str, object]:
    """The keyed artifacts of one flow run, by key (the latest of each)."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in sorted(found, key=lambda a: a.created) if a.key}
