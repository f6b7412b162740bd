"""Backup, migration and restore through the whole flow, on the sandbox's real PostgreSQL."""

from __future__ import annotations

import pytest

from blocks.environment import PerformanceTargets
from tasks.database.manifest import table_checksums
from tests.support.app_state import schema_version, serving_versions
from tests.support.deploys import deploy

pytestmark = pytest.mark.sandbox


def rows_of(checksums: dict[str, str]) -> dict[str, str]:
    """Row counts by table, schema_migrations left out (a migration adds its row)."""
    return {t: v.split(":")[0] for t, v in checksums.items() if t != "public.schema_migrations"}


def test_a_migration_that_fails_halfway_keeps_what_only_expanded_the_schema(
    sandbox_env, database_at_schema_2, deployed_good_release
):
    """004 (a new table: expand) applies, 005 fails and its transaction undoes it. The previous
    release runs on the expanded schema, so the rollback keeps the database, every row in it."""
    before = table_checksums(database_at_schema_2)
    revisions_before = sandbox_env.target.history()

    state = deploy("v3.2.1-badmigration", "3.2.1-badmigration", allow_migrations=["005_error_fingerprint"])

    assert state.is_failed()
    assert state.message.startswith("migrate failed:")
    assert "the app was not changed" in state.message, state.message
    kept = "database kept (only expand migrations were applied (003_event_severity, 004_event_tags)"
    assert kept in state.message, state.message
    assert sandbox_env.target.history() == revisions_before, "a failed migration must never reach deploy"
    assert schema_version(database_at_schema_2) == 4
    after = rows_of(table_checksums(database_at_schema_2))
    assert after.pop("public.event_tags") == "0", "004's new table, empty"
    assert after == rows_of(before), "a row written before the migration was lost"
    assert serving_versions(sandbox_env) == {deployed_good_release}


def test_a_release_that_migrates_then_fails_health_gets_its_app_back_on_the_expanded_schema(
    sandbox_env, database_at_schema_2, deployed_good_release
):
    """003 adds a defaulted column (expand): the previous release reads the schema as before, so
    only the app is rolled back and no row written since the backup is lost."""
    before = table_checksums(database_at_schema_2)

    state = deploy("v3.2.1-unhealthy", "3.2.1-unhealthy")

    assert state.is_failed()
    assert state.message.startswith("deploy failed:")
    assert "rolled back to revision" in state.message, state.message
    assert "database kept (only expand migrations were applied (003_event_severity)" in state.message, state.message
    assert schema_version(database_at_schema_2) == 3
    assert rows_of(table_checksums(database_at_schema_2)) == rows_of(before), "no row was lost"
    assert serving_versions(sandbox_env) == {deployed_good_release}


def test_a_rollback_after_a_contract_migration_restores_the_backup(
    sandbox_env, database_at_schema_2, deployed_good_release, environment_copy
):
    """004 renames a column the previous release reads (contract, allowed by the run): a failed
    gate after it must give the database back as it was, or the previous release breaks."""
    before = table_checksums(database_at_schema_2)
    # Targets no release can meet: the load gate fails after migrate and deploy have run.
    impossible = PerformanceTargets(p50_ms=0.001, p95_ms=0.001, p99_ms=0.001, max_ms=0.001)
    name = environment_copy(performance=impossible)

    state = deploy("v3.2.1-rename", "3.2.1-rename", environment=name, allow_migrations=["004_rename_error_stack"])

    assert state.is_failed()
    assert state.message.startswith("load failed:"), state.message
    assert "rolled back to revision" in state.message, state.message
    assert "database restored from pre-deployment-" in state.message, state.message
    assert schema_version(database_at_schema_2) == 2
    assert table_checksums(database_at_schema_2) == before
    assert serving_versions(sandbox_env) == {deployed_good_release}


def test_a_good_release_with_a_migration_deploys_and_its_schema_is_verified(sandbox_env, database_at_schema_2):
    state = deploy("v3.2.0", "3.2.0")

    assert state.is_completed(), state.message
    assert schema_version(database_at_schema_2) == 3
    assert serving_versions(sandbox_env) == {"3.2.0"}
