"""No secret anywhere a person or another program can read, after the pipeline's leak-prone paths.

Stands alone, in any order: ``leak_prone_run`` first makes the traces it searches. It deploys
v3.2.1-brokensmoke from schema 2: the release is built and pushed, the database backed up and
migrated, replicas started with the app's secrets, the smoke suite logs in and fails, and the run
rolls back with the database restored, telling Slack all along: every stage that handles a secret.
The search then reads every place runs write to (runs of tests before this one left their traces
there too, the worker's runs among them, and are searched with it).

``leaky_run`` deploys v3.2.1-leaky, whose replicas print DATABASE_URL, the JWT secret, the smoke
password and the database password (as they are, URL-encoded and base64) at start and crash: the
rollout fails, the run rolls back, and what the replicas printed must reach no artifact, log line,
state message or Slack text unredacted. ``docker inspect`` of every container the engine made
while this module ran (replicas, exited ones, the one-off migrations) is searched too: secrets
reach the app's containers as files on a tmpfs, never as their environment.

Command lines are sampled for the whole session (``process_arguments``, tests/conftest.py) and
searched twice: here, and again when the session ends, which covers the tests after this module.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from sandbox import config
from tasks.core.redaction import MASK
from tests.support.deploys import deploy, ensure_database_at_schema_2, ensure_good_release
from tests.support.own_release import environment_for_release
from tests.support.secret_search import ContainerInspections, command_lines, find_leaks, secret_values

LEAK_PRONE = ("v3.2.1-brokensmoke", "3.2.1-brokensmoke")
LEAKY = ("v3.2.1-leaky", "3.2.1-leaky")


@pytest.fixture(scope="module")
def container_inspections(sandbox_up):
    """``docker inspect`` of every container made while this module's deploys run."""
    recorder = ContainerInspections()
    yield recorder
    recorder.stop()


def _replace_replicas_started_with_plain_secrets(sandbox_env, inspections: ContainerInspections) -> None:
    """Replicas started before the Docker target handed secrets over as files still hold them in
    their environment: remove them, so the good release is deployed again the way it is now."""
    leaking = {where for where in find_leaks(inspections.haystacks(), secret_values())}
    if not leaking:
        return
    client = sandbox_env.target.get_client()
    try:
        for container in client.containers.list(all=True, filters={"label": "architect.app=architect-api"}):
            if any(f"({container.id[:12]})" in where for where in leaking):
                container.remove(force=True)
    finally:
        client.close()
    inspections.inspected.clear()  # what those containers held is gone with them


@pytest.fixture(scope="module")
def leak_prone_run(sandbox_env, process_arguments, container_inspections) -> str:
    """The id of a deploy's flow run that passed every secret-handling stage, then failed smoke and was rolled back."""
    ensure_good_release(sandbox_env)
    ensure_database_at_schema_2(sandbox_env.database)  # so the release migrates, and the rollback restores
    state = deploy(*LEAK_PRONE, restore_policy="always")  # the restore handles the password too
    message = state.message or ""
    assert state.is_failed() and message.startswith("smoke failed:"), (state.type, message)
    assert "rolled back to revision" in message and "database restored from" in message, message
    return str(state.state_details.flow_run_id)


@pytest.fixture(scope="module")
def leaky_run(sandbox_env, container_inspections, tmp_path_factory) -> str:
    """The id of a deploy of v3.2.1-leaky (migrated, rolled out, crashed printing its secrets, rolled back)."""
    _replace_replicas_started_with_plain_secrets(sandbox_env, container_inspections)
    ensure_good_release(sandbox_env)
    ensure_database_at_schema_2(sandbox_env.database)  # so its one-off migrations run too
    with environment_for_release(sandbox_env, LEAKY[0], tmp_path_factory.mktemp("leaky")) as environment:
        state = deploy(*LEAKY, environment=environment)
    message = state.message or ""
    assert state.is_failed() and message.startswith("deploy failed:"), (state.type, message)
    assert "rolled back to revision" in message, message
    return str(state.state_details.flow_run_id)


def _artifact(flow_run_id: str, key: str) -> str:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[key])
            )
        )
    return "\n".join(str(a.data) for a in found)


def prefect_database_dump() -> bytes:
    """Every row of the Prefect server's database, as pg_dump writes it."""
    return subprocess.run(
        [str(config.PG_BIN / "pg_dump"), "--dbname", config.prefect_conninfo()],
        capture_output=True,
        check=True,
        timeout=300,
    ).stdout


def places() -> dict[str, bytes]:
    """Everything the runs wrote that people read: the Prefect database (logs, artifacts,
    parameters, states, results), its result storage, the Slack stand-in's record, and the
    logs of the sandbox's servers, of PostgreSQL and of the app's replicas."""
    found = {"prefect database (pg_dump)": prefect_database_dump()}
    for path in [
        *(config.PREFECT_HOME / "storage").glob("**/*"),
        *config.LOG_DIR.glob("*.log"),
        *config.PG_DIR.glob("*.log"),
        config.SLACK_MESSAGES,
    ]:
        if Path(path).is_file():
            found[str(path)] = Path(path).read_bytes()
    found["slack stand-in (API)"] = httpx.get(f"{config.SLACK_CONTROL_URL}/messages", timeout=10).content
    return found


@pytest.mark.sandbox
def test_no_secret_value_appears_in_logs_artifacts_slack_or_the_prefect_database(leak_prone_run):
    secrets = secret_values()
    assert {"architect_db_password", "slack_bot_token", "smoke_password", "jwt_secret"} <= set(secrets)
    haystacks = places()
    dump = haystacks["prefect database (pg_dump)"]
    assert b"COPY public.flow_run " in dump and len(haystacks) > 5
    assert leak_prone_run.encode() in dump, "the search does not see the run it made"
    assert find_leaks(haystacks, secrets) == []


@pytest.mark.sandbox
def test_a_release_that_prints_its_secrets_and_crashes_leaks_none_of_them(leaky_run, container_inspections):
    """What the crashing replicas printed reached the rollout report redacted, and no secret is in
    the Prefect database, the Slack record, the logs, or docker inspect of any container made."""
    secrets = secret_values()
    haystacks = places()
    inspected = container_inspections.haystacks()
    assert find_leaks({**haystacks, **inspected}, secrets) == []
    assert leaky_run.encode() in haystacks["prefect database (pg_dump)"], "the search does not see the run"
    # The search saw what it had to: the replicas' printed secrets (masked), a one-off and a replica.
    logs = _artifact(leaky_run, "rollout-logs")
    assert "effective configuration" in logs, "the replicas' logs never reached the rollout report"
    assert logs.count(MASK) >= 8, logs[:2000]  # each of 4 values, plain and in its other forms
    assert any("-oneoff-" in where for where in inspected), "no one-off migration container was inspected"
    assert any("-r" in where and "oneoff" not in where for where in inspected), "no replica was inspected"
    assert container_inspections.missed_of("architect-api") == [], "app containers gone before they were inspected"


@pytest.mark.sandbox
def test_no_secret_value_appears_on_any_command_line_seen_during_the_session(leak_prone_run, process_arguments):
    """Every argument list sampled from /proc while the session's deploys ran, this module's own
    included (git, go, docker, pg_dump, the app's replicas, the worker's flow runs): no secret."""
    seen = process_arguments.seen
    assert any(b"architect-api" in argv for argv in seen), "no replica of the app was ever seen running"
    assert any(b"prefect" in argv for argv in seen)
    assert find_leaks(command_lines(seen), secret_values()) == []


@pytest.mark.sandbox
def test_the_argv_search_catches_a_secret_on_a_command_line(process_arguments):
    """The session's recorder is still sampling, and a secret on a command line is found by it."""
    fake = {"planted": "not-a-real-secret-0f9e8d7c"}
    before = process_arguments.samples
    subprocess.run([sys.executable, "-c", "import time; time.sleep(1.5)", fake["planted"]], check=True)
    assert process_arguments.samples > before, "the recorder stopped sampling"
    leaks = find_leaks(command_lines(process_arguments.seen), fake)
    assert len(leaks) == 1 and leaks[0].startswith("planted in argv"), leaks


@pytest.mark.sandbox
def test_the_search_finds_a_planted_secret_plain_and_base64(sandbox_up):
    secrets = secret_values()
    value = secrets["smoke_password"]
    planted = {
        "plain.log": f"login with {value}".encode(),
        "b64.json": base64.b64encode(value.encode()),
        "clean": b"ok",
    }
    assert find_leaks(planted, secrets) == ["smoke_password in plain.log", "smoke_password in b64.json"]


@pytest.mark.unit
def test_a_secret_on_a_command_line_is_reported_by_program_never_by_its_arguments():
    value = "stand-in-secret-5d1c"
    seen = {b"/usr/bin/tool\0--password\0" + value.encode(), b"/usr/bin/other\0--quiet"}
    leaks = find_leaks(command_lines(seen), {"password": value})
    assert len(leaks) == 1 and leaks[0].startswith("password in argv #") and "/usr/bin/tool" in leaks[0], leaks
    assert value not in leaks[0]
