"""After every deploy of the session (good, rolled back, rejected): no secret anywhere a person
or another program can read. Named to run last, when the suite's runs have left their traces."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from sandbox import config

pytestmark = pytest.mark.sandbox


def secret_values() -> dict[str, str]:
    return {name: value for name, value in config.load_secrets().items() if len(value) >= 8}


def prefect_database_dump() -> bytes:
    """Every row of the Prefect server's database, as pg_dump writes it."""
    return subprocess.run([str(config.PG_BIN / "pg_dump"), "--dbname", config.prefect_conninfo()],
                          capture_output=True, check=True, timeout=300).stdout


def places() -> dict[str, bytes]:
    """Everything the runs wrote that people read: the Prefect database (logs, artifacts,
    parameters, states, results), its result storage, the Slack stand-in's record, and the
    logs of the sandbox's servers, of PostgreSQL and of the app's replicas."""
    found = {"prefect database (pg_dump)": prefect_database_dump()}
    for path in [*(config.PREFECT_HOME / "storage").glob("**/*"), *config.LOG_DIR.glob("*.log"),
                 *config.PG_DIR.glob("*.log"), config.SLACK_MESSAGES]:
        if Path(path).is_file():
            found[str(path)] = Path(path).read_bytes()
    found["slack stand-in (API)"] = httpx.get(f"{config.SLACK_CONTROL_URL}/messages", timeout=10).content
    return found


def find_leaks(haystacks: dict[str, bytes], secrets: dict[str, str]) -> list[str]:
    """Each secret, plain or base64 (as Kubernetes Secrets and HTTP basic auth carry it)."""
    return [
        f"{secret} in {where}"
        for where, data in haystacks.items()
        for secret, value in secrets.items()
        for form in (value.encode(), base64.b64encode(value.encode()))
        if form in data
    ]


def test_no_secret_value_appears_in_logs_artifacts_slack_or_the_prefect_database(sandbox_up):
    secrets = secret_values()
    assert {"architect_db_password", "slack_bot_token", "smoke_password", "jwt_secret"} <= set(secrets)
    haystacks = places()
    assert b"COPY public.flow_run " in haystacks["prefect database (pg_dump)"] and len(haystacks) > 5
    assert find_leaks(haystacks, secrets) == []


def test_no_secret_value_appears_on_any_command_line_seen_during_the_session(process_arguments):
    """Every argument list sampled from /proc while the suite's deploys ran (git, go, docker,
    pg_dump, the app's replicas, the worker's flow runs): no secret in any of them."""
    seen = process_arguments.seen
    assert any(b"architect-api" in argv for argv in seen), "no replica of the app was ever seen running"
    assert any(b"prefect" in argv for argv in seen)
    assert find_leaks({f"argv {argv[:200]!r}": argv for argv in seen}, secret_values()) == []


def test_the_argv_search_catches_a_secret_on_a_command_line(process_arguments):
    fake = {"planted": "not-a-real-secret-0f9e8d7c"}
    before = process_arguments.samples
    subprocess.run([sys.executable, "-c", "import time; time.sleep(1.5)", fake["planted"]], check=True)
    assert process_arguments.samples > before, "the recorder stopped sampling"
    leaks = find_leaks({f"argv {argv[:200]!r}": argv for argv in process_arguments.seen}, fake)
    assert len(leaks) == 1 and leaks[0].startswith("planted in argv"), leaks


def test_the_search_finds_a_planted_secret_plain_and_base64(sandbox_up):
    secrets = secret_values()
    value = secrets["smoke_password"]
    planted = {"plain.log": f"login with {value}".encode(), "b64.json": base64.b64encode(value.encode()), "clean": b"ok"}
    assert find_leaks(planted, secrets) == ["smoke_password in plain.log", "smoke_password in b64.json"]
