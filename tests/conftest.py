"""Shared fixtures: the running sandbox, its Prefect server, and deploys of the reference app.

Tests talk to the real sandbox (`make sandbox-up`; `make test` brings it up first). Flows
called here report to the sandbox's Prefect server, like runs started from the UI.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sandbox import config
from tests._argv_recorder import ArgvRecorder

os.environ.setdefault("PREFECT_API_URL", config.PREFECT_API_URL)
os.environ.setdefault("PREFECT_HOME", str(config.PREFECT_HOME))

from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings  # noqa: E402

GOOD = ("v3.1.0", "3.1.0")
GOOD_WITH_MIGRATION = ("v3.2.0", "3.2.0")


@pytest.fixture(scope="session", autouse=True)
def _no_flow_heartbeats() -> Iterator[None]:
    # Each synchronous flow run otherwise waits ~1 s on its heartbeat thread when it ends.
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.fixture(scope="session", autouse=True)
def process_arguments() -> Iterator[ArgvRecorder]:
    """Every command line seen on the machine during the session, for the secret search."""
    recorder = ArgvRecorder()
    recorder.start()
    yield recorder
    recorder.stop()


@pytest.fixture(scope="session")
def sandbox_up() -> None:
    """Fail at once, with the fix, when the sandbox is not running."""
    try:
        httpx.get(f"{config.PREFECT_API_URL}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        pytest.fail(f"the sandbox is not up ({exc}); run `make sandbox-up` first")


@pytest.fixture(scope="session")
def sandbox_env(sandbox_up):
    from blocks.environment import StagingEnvironment

    return StagingEnvironment.load("sandbox")


def api_health(timeout: float = 5.0) -> dict:
    """What the load-balanced API answers on /health now (status code included)."""
    response = httpx.get(f"{config.API_URL}/health", verify=str(config.CA_CERT), timeout=timeout)
    return {"status_code": response.status_code, **response.json()}


def serving_versions(sandbox_env) -> set[str]:
    """The versions every replica reports, straight from each replica."""
    versions = set()
    for url in sandbox_env.target.replica_urls():
        versions.add(httpx.get(f"{url}/health", timeout=5).json().get("version"))
    return versions


def deploy(git_ref: str, version: str | None, environment: str = "sandbox", **parameters):
    """Run the staging-deploy flow in this process; returns its final State."""
    from flows.staging_deploy import staging_deploy

    parameters.setdefault("load_duration_s", 4.0)  # short profiles: the tests are about outcomes
    # One profile: 500 req/s (medium) on a busy 2-core machine is sometimes "generator saturated",
    # which fails the run for a reason the test is not about. The load gate's own tests cover it.
    parameters.setdefault("load_profiles", ["light"])
    parameters.setdefault("skip_signoff", True)  # the sign-off tests resume the pause themselves
    return staging_deploy(git_ref=git_ref, version=version, environment=environment, return_state=True, **parameters)


@pytest.fixture
def deployed_good_release(sandbox_env):
    """The good release v3.1.0 live in the sandbox (deployed only when something else is)."""
    if serving_versions(sandbox_env) != {GOOD[1]}:
        state = deploy(*GOOD)
        assert state.is_completed(), state.message
    return GOOD[1]


MIGRATION_003_DOWN = config.REPO_ROOT / "sandbox" / "architect-api" / "migrations" / "003_event_severity.down.sql"


def schema_version(database) -> int:
    with database.connect() as conn:
        return conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]


@pytest.fixture
def database_at_schema_2(sandbox_env, deployed_good_release):
    """The staging database as v3.1.0 left it: schema 2 (migration 003 reverted if present)."""
    database = sandbox_env.database
    if schema_version(database) > 2:
        with database.connect(autocommit=False) as conn:
            conn.execute(MIGRATION_003_DOWN.read_text())
            conn.execute("DELETE FROM schema_migrations WHERE version > 2")
            conn.commit()
    assert schema_version(database) == 2
    return database


@pytest.fixture(scope="session")
def registered_deployments(sandbox_up) -> None:
    """The manual and nightly deployments registered from prefect.yaml, as `make deployments` does."""
    subprocess.run(
        ["prefect", "--no-prompt", "deploy", "--all"],
        cwd=config.REPO_ROOT, check=True, capture_output=True, text=True, timeout=300,
        env={**os.environ, "ARCHITECT_NIGHTLY_TZ": os.environ.get("ARCHITECT_NIGHTLY_TZ", "UTC")},
    )


@pytest.fixture
def app_repo_copy(tmp_path) -> Path:
    """A private clone of the sandbox's app repository that a test may change freely."""
    dest = tmp_path / "app-repo"
    subprocess.run(["git", "clone", "--quiet", str(config.APP_REPO_DIR), str(dest)], check=True)
    return dest


@pytest.fixture
def environment_copy(sandbox_env):
    """Save a copy of the sandbox environment under a fresh name; a test may change it."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    saved: list[str] = []

    def make(**changes):
        env = sandbox_env.model_copy(update=changes)
        env._block_document_id = None
        env._block_document_name = None
        env.save(name, overwrite=True)
        saved.append(name)
        return name

    yield make
    if saved:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            for block_name in saved:
                doc = client.read_block_document_by_name(block_name, "architect-staging-environment")
                client.delete_block_document(doc.id)


@pytest.fixture
def slack_messages():
    """Clear the Slack stand-in before the test; return a reader of what it recorded."""
    httpx.delete(f"{config.SLACK_CONTROL_URL}/messages", timeout=5)

    def read() -> list[dict]:
        return httpx.get(f"{config.SLACK_CONTROL_URL}/messages", timeout=5).json()

    return read
