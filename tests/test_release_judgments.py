"""The releases that only a judgment against the live release, or of the migrations before they
run, can catch (sandbox/releases/RELEASES.md): each deployed through the whole flow."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from tasks.core.migration_review import MigrationClass
from tasks.core.models import BuildResult
from tests.support.app_state import schema_version, serving_versions
from tests.support.deploys import GOOD, deploy
from tests.support.schema_4 import back_to_schema_3

pytestmark = pytest.mark.sandbox

LOAD_EVENTS = "SELECT count(*) FROM events WHERE source = 'architect-deploy-load'"


def artifacts_of(state) -> dict:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    return {a.key: a for a in found if a.key}


def count(database, query: str) -> int:
    with database.connect() as conn:
        return conn.execute(query).fetchone()[0]


@pytest.fixture
def schema_4_reverted(sandbox_env):
    """Whatever a test left, the database goes back to schema 3 (the 004 of the patch it names)."""
    patches: list[str] = []
    yield patches.append
    for patch in patches:
        back_to_schema_3(sandbox_env.database, patch)


def test_a_release_slower_than_the_live_one_is_caught_by_the_baseline(sandbox_env, deployed_good_release):
    live = deploy(*GOOD)  # its load report, in the run history, is the baseline
    assert live.is_completed(), live.message
    assert "load-test-data" in artifacts_of(live)
    state = deploy("v3.2.1-sluggish", "3.2.1-sluggish")
    assert state.is_failed()
    assert state.message.startswith("load failed:"), state.message
    # Inside every guide target: only the comparison with the live release's last load report catches it.
    assert "for the live release" in state.message and "p95" in state.message, state.message
    assert ">= 500 ms limit" not in state.message and ">= 100 ms limit" not in state.message
    data = artifacts_of(state)["load-test-report"].data
    assert "Against the live release" in data and "REGRESSION" in data
    assert "rolled back to revision" in state.message
    assert serving_versions(sandbox_env) == {deployed_good_release}


def test_a_migration_renaming_a_column_the_live_release_reads_is_refused_at_build(sandbox_env, deployed_good_release):
    revisions, schema = sandbox_env.target.history(), schema_version(sandbox_env.database)
    state = deploy("v3.2.1-rename", "3.2.1-rename")
    assert state.is_failed()
    assert state.message.startswith(
        "build failed: migration 004_rename_error_stack is contract (renames-column: "
        "renames public.errors.stack to stack_trace"
    ), state.message
    assert "allow_migrations=['004_rename_error_stack']" in state.message and "nothing was changed" in state.message
    assert "build-tests" not in artifacts_of(state), "refused before the tests ran"
    assert sandbox_env.target.history() == revisions and schema_version(sandbox_env.database) == schema
    assert serving_versions(sandbox_env) == {deployed_good_release}


def test_a_migration_deleting_rows_needs_the_run_s_permission(sandbox_env, deployed_good_release, schema_4_reverted):
    database = sandbox_env.database
    load_events = count(database, LOAD_EVENTS)
    assert load_events > 0, "the good release's load test left no events to delete"
    refused = deploy("v3.2.1-purge", "3.2.1-purge")
    assert refused.is_failed()
    assert refused.message.startswith(
        "build failed: migration 004_purge_load_test_events is dangerous (deletes-rows: deletes rows of public.events"
    ), refused.message
    assert count(database, LOAD_EVENTS) >= load_events, "nothing was deleted"

    schema_4_reverted("v3.2.1-purge.patch")
    allowed = deploy("v3.2.1-purge", "3.2.1-purge", allow_migrations=["004_purge_load_test_events"])
    assert allowed.is_completed(), allowed.message
    build: BuildResult = allowed.result()
    [purge] = build.migrations.pending
    assert (purge.id, purge.classification, purge.allowed) == (
        "004_purge_load_test_events",
        MigrationClass.DANGEROUS,
        True,
    )
    assert build.migrations.tables_before["public.events"].rows >= load_events
    review = artifacts_of(allowed)["migration-review"].data
    assert "dangerous (allowed by the run)" in review and "deletes\\-rows" in review
    assert serving_versions(sandbox_env) == {"3.2.1-purge"}


def test_a_good_release_with_an_expand_only_migration_passes(sandbox_env, deployed_good_release, schema_4_reverted):
    schema_4_reverted("v3.3.0.patch")
    state = deploy("v3.3.0", "3.3.0")
    assert state.is_completed(), state.message
    build: BuildResult = state.result()
    assert build.migrations.classification is MigrationClass.EXPAND
    assert "004_error_resolved_index" in [m.id for m in build.migrations.pending]
    assert schema_version(sandbox_env.database) == 4
    assert "require\\-concurrent\\-index\\-creation" in artifacts_of(state)["migration-review"].data
    assert serving_versions(sandbox_env) == {"3.3.0"}


def test_the_rollback_s_schema_test_asks_the_classification_of_what_was_applied(sandbox_env):
    from tasks.database.manifest import schema_fingerprint, snapshot_connection
    from tasks.database.migration_lint import read_database_state, restore_needed, review, source_migrations
    from tests.support.release_patches import RELEASES

    database = sandbox_env.database
    current, tables = read_database_state(database)
    assert current in (2, 3), f"schema {current}"
    with snapshot_connection(database) as conn:
        fingerprint = schema_fingerprint(conn)
    reviewed = review(source_migrations(RELEASES.parent / "architect-api"), current - 1, tables)
    # As if the backup was taken one migration ago: that migration (001..003, all expand) keeps the data.
    keep, why = restore_needed(database, current - 1, fingerprint, reviewed)
    assert not keep and why.startswith("only expand migrations were applied"), why
    drifted, why = restore_needed(database, current, "another fingerprint", reviewed)
    assert drifted and why == "the schema changed without a migration being applied"
