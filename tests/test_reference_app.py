"""The reference app's own Go tests, database tests included, against the sandbox's PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import psycopg
import pytest

from sandbox import config

pytestmark = pytest.mark.sandbox

APP = config.REPO_ROOT / "sandbox" / "architect-api"
GO_ENV = {"CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOPROXY": "off"}


@pytest.fixture
def scratch_database_url(sandbox_up):
    """A database of its own, owned by the app's role, dropped afterwards."""
    name = f"architect_gotest_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(config.pg_superuser_conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" OWNER {config.PG_USER}')
    yield config.database_url().replace(f"/{config.PG_DATABASE}?", f"/{name}?")
    with psycopg.connect(config.pg_superuser_conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_go_tests_pass_with_the_database_tests_included(scratch_database_url):
    result = subprocess.run(
        ["go", "test", "-json", "-count=1", "-cover", "./..."],
        cwd=APP,
        env={**os.environ, **GO_ENV, "TEST_DATABASE_URL": scratch_database_url},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    failed = sorted({f"{e['Package']} {e.get('Test', '')}" for e in events if e.get("Action") == "fail"})
    skipped = sorted({f"{e['Package']} {e['Test']}" for e in events if e.get("Action") == "skip" and e.get("Test")})
    passed = [e for e in events if e.get("Action") == "pass" and e.get("Test")]
    assert result.returncode == 0 and not failed, failed or result.stderr[-2000:]
    assert not skipped, f"with a database every test runs; skipped: {skipped}"
    assert len(passed) > 50
    covered = {
        e["Package"] for e in events if "coverage:" in e.get("Output", "") and "[no statements]" not in e["Output"]
    }
    assert any(p.endswith("internal/store") for p in covered) and any(p.endswith("internal/migrate") for p in covered)
