"""Backup, migration and restore through the whole flow, on the sandbox's real PostgreSQL."""

from __future__ import annotations

import pytest

from tasks.database.manifest import table_checksums
from tests.support.app_state import schema_version, serving_versions
from tests.support.deploys import deploy

pytestmark = pytest.mark.sandbox


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
