"""Shared fixtures, and the rule every test follows: it is marked ``unit`` or ``sandbox``.

``unit``: needs no sandbox and no server (`pytest -m unit`). ``sandbox``: needs the running sandbox
(`make sandbox-up`; `make test` brings it up first); flows called here report to its Prefect server,
like runs started from the UI. Collection fails for a test with neither marker, with both, or
marked ``unit`` while it requests a sandbox fixture: ``sandbox_up`` or anything built on it
(tests/support/marker_rule.py). A sandbox test gets ``sandbox_up`` in any case, so it fails at once
with the fix when the sandbox is down.

Every sandbox test gets the state it needs from fixtures, whatever ran before it:
``deployed_good_release`` and ``database_at_schema_2`` set it up and check it holds, and a test
that breaks a service does so through ``broken_service``, whose finaliser restores it and checks
that the whole sandbox is healthy again. Helpers live in tests/support/.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from sandbox import config
from sandbox.daemons import SKIP_SIGNOFF_ALLOWED

os.environ.setdefault("PREFECT_API_URL", config.PREFECT_API_URL)
os.environ.setdefault("PREFECT_HOME", str(config.PREFECT_HOME))
# Flows called here run in this process, as the sandbox's worker runs them: with its say on skipping sign-off.
os.environ.setdefault("ARCHITECT_ALLOW_SKIP_SIGNOFF", SKIP_SIGNOFF_ALLOWED)

from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings  # noqa: E402

from tests.support.argv_recorder import ArgvRecorder  # noqa: E402
from tests.support.blocks import delete_environment, unsaved  # noqa: E402
from tests.support.deploys import ensure_database_at_schema_2, ensure_good_release  # noqa: E402
from tests.support.faults import BrokenServices  # noqa: E402
from tests.support.first_deploy import fresh_docker_environment, throwaway_database  # noqa: E402, F401 (fixtures)
from tests.support.marker_rule import SANDBOX_FIXTURE, check_kinds  # noqa: E402
from tests.support.secret_search import command_lines, find_leaks, secret_values  # noqa: E402

# -- the rule: every test says whether it needs the sandbox, and a unit test never touches it ----


@pytest.hookimpl(tryfirst=True)  # before -m deselects: `pytest -m unit` checks the sandbox tests' marks too
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    check_kinds(items)


@pytest.fixture(autouse=True)
def _sandbox_tests_need_the_sandbox(request: pytest.FixtureRequest) -> None:
    # A sandbox test that asks for no sandbox fixture still fails at once, with the fix, when it is down.
    if request.node.get_closest_marker("sandbox"):
        request.getfixturevalue(SANDBOX_FIXTURE)


# -- the session ---------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _no_flow_heartbeats() -> Iterator[None]:
    # Each synchronous flow run otherwise waits ~1 s on its heartbeat thread when it ends.
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.fixture(scope="session", autouse=True)
def process_arguments(request: pytest.FixtureRequest) -> Iterator[ArgvRecorder | None]:
    """Every command line seen on the machine while the session's sandbox tests run.

    Searched for secrets twice, so that no test order matters: by tests/test_secret_leaks.py
    (all seen up to then, its own deploys included) and here, when the session ends (all of it,
    so tests after the search are covered too): a secret found then errors the last test.
    Not started in a session without sandbox tests.
    """
    if not any(item.get_closest_marker("sandbox") for item in request.session.items):
        yield None
        return
    recorder = ArgvRecorder()
    recorder.start()
    yield recorder
    sampled_to_the_end = recorder.is_alive()  # it stops by itself at its bounds (time, count)
    recorder.stop()
    if leaks := find_leaks(command_lines(recorder.seen), secret_values()):
        pytest.fail(f"a secret was on a command line during the session: {leaks}", pytrace=False)
    assert sampled_to_the_end, f"the command-line recorder stopped at its bounds after {recorder.samples} samples"


# -- the sandbox ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sandbox_up() -> None:
    """Fail at once, with the fix, when the sandbox is not running. Every sandbox fixture needs it."""
    try:
        httpx.get(f"{config.PREFECT_API_URL}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        pytest.fail(f"the sandbox is not up ({exc}); run `make sandbox-up` first")


@pytest.fixture(scope="session")
def sandbox_env(sandbox_up):
    from blocks.environment import StagingEnvironment

    return StagingEnvironment.load("sandbox")


@pytest.fixture
def deployed_good_release(sandbox_env) -> str:
    """The good release v3.1.0 serving alone and healthy (deployed unless that already holds; checked after)."""
    return ensure_good_release(sandbox_env)


@pytest.fixture
def database_at_schema_2(sandbox_env, deployed_good_release):
    """The staging database as v3.1.0 left it: schema 2 (migration 003 reverted if present), checked."""
    ensure_database_at_schema_2(sandbox_env.database)
    return sandbox_env.database


@pytest.fixture
def broken_service(request: pytest.FixtureRequest, sandbox_up) -> Iterator[BrokenServices]:
    """``service = broken_service("registry")``: the test may stop that service (``service.stop``,
    now or from a Trigger). Afterwards, however the test ended, each one is started again and the
    whole sandbox must be healthy (every `sandbox status` row, and the API through nginx unless the
    stop removed the app) within 150 s.
    If not, the test errors and the run stops: every test after it would fail for this one's reason.
    A ``Service`` of the test's own (name, stop, start) may be given instead of a name."""
    broken = BrokenServices()
    yield broken
    if problems := broken.restore():
        request.session.shouldstop = f"the sandbox did not recover after {request.node.nodeid} stopped {broken.names()}"
        pytest.fail(f"the sandbox did not recover after the test stopped {broken.names()}: {problems}", pytrace=False)


@pytest.fixture(scope="session")
def registered_deployments(sandbox_up) -> None:
    """The manual and nightly deployments registered from prefect.yaml, as `make deployments` does."""
    subprocess.run(
        ["prefect", "--no-prompt", "deploy", "--all"],
        cwd=config.REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ARCHITECT_NIGHTLY_TZ": os.environ.get("ARCHITECT_NIGHTLY_TZ", "UTC")},
    )


@pytest.fixture
def app_repo_copy(sandbox_up, tmp_path) -> Path:
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
        unsaved(sandbox_env, **changes).save(name, overwrite=True)
        saved.append(name)
        return name

    yield make
    for block_name in dict.fromkeys(saved):
        delete_environment(block_name)


@pytest.fixture
def slack_messages(sandbox_up):
    """Clear the Slack stand-in before the test; return a reader of what it recorded."""
    httpx.delete(f"{config.SLACK_CONTROL_URL}/messages", timeout=5)

    def read() -> list[dict]:
        return httpx.get(f"{config.SLACK_CONTROL_URL}/messages", timeout=5).json()

    return read


@pytest.fixture
def slack_mode(sandbox_up) -> Iterator[Callable[[str], None]]:
    """``slack_mode("hang" | "error" | "ok")`` sets how the Slack stand-in answers; when the test
    ends it answers normally again, checked (an outage left behind would fail later Slack checks)."""
    control = f"{config.SLACK_CONTROL_URL}/mode"

    def set_mode(mode: str) -> None:
        assert httpx.post(control, json={"mode": mode}, timeout=5).json()["mode"] == mode

    yield set_mode
    set_mode("ok")
