"""Backup, migration and restore through the whole flow, on the sandbox's real PostgreSQL."""

from __future__ import annotations

import pytest

from sandbox import config
from tasks.pg_manifest import table_checksums
from tests.conftest import deploy, serving_versions

pytestmark = pytest.mark.sandbox

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


def test_a_migration_that_fails_halfway_leaves_the_database_exactly_as_before(
    sandbox_env, database_at_schema_2, deployed_good_release
):
    before = table_checksums(database_at_schema_2)
    revisions_before = sandbox_env.target.history()

    state = deploy("v3.2.1-badmigration", "3.2.1-badmigration")

    assert state.is_failed()
    assert state.message.startswith("migrate failed:")
    assert "the app was not changed" in state.message and "database restored from pre-deployment-" in state.message
    assert sandbox_env.target.history() == revisions_before, "a failed migration must never reach deploy"
    assert schema_version(database_at_schema_2) == 2
    assert table_checksums(database_at_schema_2) == before
    assert serving_versions(sandbox_env) == {deployed_good_release}


def test_a_release_that_migrates_then_fails_health_gets_app_and_database_back(
    sandbox_env, database_at_schema_2, deployed_good_release
):
    before = table_checksums(database_at_schema_2)

    state = deploy("v3.2.1-unhealthy", "3.2.1-unhealthy")

    assert state.is_failed()
    assert state.message.startswith("deploy failed:")
    assert "rolled back to revision" in state.message and "database restored from pre-deployment-" in state.message
    assert schema_version(database_at_schema_2) == 2
    assert table_checksums(database_at_schema_2) == before
    assert serving_versions(sandbox_env) == {deployed_good_release}


def test_a_good_release_with_a_migration_deploys_and_its_schema_is_verified(sandbox_env, database_at_schema_2):
    state = deploy("v3.2.0", "3.2.0")

    assert state.is_completed(), state.message
    assert schema_version(database_at_schema_2) == 3
    assert serving_versions(sandbox_env) == {"3.2.0"}
