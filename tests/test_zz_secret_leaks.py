"""After every deploy of the session (good, rolled back, rejected): no secret anywhere a person
or another program can read. Named to run last, when the suite's runs have left their traces."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from sandbox import config

pytestmark = pytest.mark.sandbox


def secret_values() -> dict[str, str]:
    return {name: value for name, value in config.load_secrets().items() if len(value) >= 8}


def places() -> dict[str, bytes]:
    """Everything the runs wrote that people read: the Prefect database (logs, artifacts,
    parameters, states, results), its result storage, the Slack stand-in's record, and the
    logs of the sandbox's servers and of the app's replicas."""
    found = {}
    for path in [*config.PREFECT_HOME.glob("prefect.db*"), *(config.PREFECT_HOME / "storage").glob("**/*"),
                 *config.LOG_DIR.glob("*.log"), config.SLACK_MESSAGES]:
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
    assert any(name.endswith("prefect.db") for name in haystacks) and len(haystacks) > 5
    assert find_leaks(haystacks, secrets) == []


def test_the_search_finds_a_planted_secret_plain_and_base64(sandbox_up):
    secrets = secret_values()
    value = secrets["smoke_password"]
    planted = {"plain.log": f"login with {value}".encode(), "b64.json": base64.b64encode(value.encode()), "clean": b"ok"}
    assert find_leaks(planted, secrets) == ["smoke_password in plain.log", "smoke_password in b64.json"]
