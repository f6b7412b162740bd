"""Migrations judged before they run: the release patches' migrations classified and linted, offline.

The schema below is the sandbox's at schema 3 (v3.2.0), with small tables; the classification
reads it as the live schema the previous release uses.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tasks.core.migration_review import MigrationClass, MigrationEffect, TableDelta, TableStats
from tasks.database.migration_lint import SourceMigration, lint, review, source_migrations
from tests.support.release_patches import RELEASES, added_files

pytestmark = pytest.mark.unit

APP = RELEASES.parent / "architect-api"
LIVE = {
    "public.events": TableStats(
        rows=3_300, bytes=850_000, columns=["id", "type", "source", "payload", "created_at", "severity"]
    ),
    "public.errors": TableStats(
        rows=3_100, bytes=750_000, columns=["id", "kind", "message", "stack", "resolved", "resolved_at", "created_at"]
    ),
    "public.users": TableStats(rows=1, bytes=49_152, columns=["id", "username", "password_hash"]),
    "public.schema_migrations": TableStats(rows=3, bytes=32_768, columns=["version", "name", "applied_at"]),
}


def release_migrations(patch: str) -> list[SourceMigration]:
    """The v3.2.0 tree's migrations plus the ones the release patch adds."""
    added = [
        SourceMigration(
            version=int(path.split("/")[1][:3]),
            name=path.split("/")[1][4 : -len(".up.sql")],
            file=path.split("/")[1],
            sql=sql,
        )
        for path, sql in added_files(patch).items()
        if path.endswith(".up.sql")
    ]
    return sorted(source_migrations(APP) + added, key=lambda m: m.version)


@pytest.mark.parametrize(
    ("patch", "expected", "rule"),
    [
        ("v3.2.1-purge.patch", {"004_purge_load_test_events": MigrationClass.DANGEROUS}, "deletes-rows"),
        ("v3.2.1-rename.patch", {"004_rename_error_stack": MigrationClass.CONTRACT}, "renames-column"),
        ("v3.3.0.patch", {"004_error_resolved_index": MigrationClass.EXPAND}, "creates-index"),
        # Its 005 fails at migrate (a missing column): the migrate stage catches it; it removes and renames nothing.
        (
            "v3.2.1-badmigration.patch",
            {"004_event_tags": MigrationClass.EXPAND, "005_error_fingerprint": MigrationClass.CONTRACT},
            "tightens-not-null",
        ),
    ],
)
def test_each_release_migration_is_classified_by_what_it_does_to_the_live_schema(patch, expected, rule):
    result = review(release_migrations(patch), current_version=3, tables=LIVE)
    assert {m.id: m.classification for m in result.pending} == expected
    assert rule in {r.rule for m in result.pending for r in m.reasons}
    refused = [m.id for m in result.refused]
    assert refused == [m for m, c in expected.items() if c is not MigrationClass.EXPAND]
    assert "squawk-cli 2." in result.linter and "pglast 8." in result.linter


def test_a_refusal_names_the_migration_the_rule_and_the_way_to_allow_it():
    rename = review(release_migrations("v3.2.1-rename.patch"), 3, LIVE)
    text = rename.refusal()
    assert text.startswith(
        "migration 004_rename_error_stack is contract (renames-column: renames "
        "public.errors.stack to stack_trace, which the previous release reads)"
    )
    assert text.endswith("; it runs only with allow_migrations=['004_rename_error_stack']")
    allowed = review(release_migrations("v3.2.1-rename.patch"), 3, LIVE, allow=["004_rename_error_stack"])
    assert allowed.refused == [] and "allowed by the run: 004_rename_error_stack" in allowed.summary()
    purge = review(release_migrations("v3.2.1-purge.patch"), 3, LIVE)
    assert "deletes-rows: deletes rows of public.events (3,300 rows now)" in purge.refusal()


def test_only_migrations_newer_than_the_database_are_pending():
    migrations = release_migrations("v3.3.0.patch")
    assert [m.version for m in migrations] == [1, 2, 3, 4]
    assert [m.id for m in review(migrations, 2, LIVE).pending] == ["003_event_severity", "004_error_resolved_index"]
    assert review(migrations, 4, LIVE).pending == []
    assert "no pending migrations (database at schema 4)" in review(migrations, 4, LIVE).summary()


def test_the_same_lock_is_dangerous_on_a_large_table():
    large = {**LIVE, "public.events": LIVE["public.events"].model_copy(update={"rows": 5_000_000})}
    severity = [m for m in release_migrations("v3.3.0.patch") if m.version == 3]
    [small] = review(severity, 2, LIVE).pending
    [big] = review(severity, 2, large).pending
    assert small.classification is MigrationClass.EXPAND
    assert big.classification is MigrationClass.DANGEROUS and big.why().startswith("locks-large-table")


@pytest.mark.parametrize(
    ("sql", "expected", "rule"),
    [
        ("ALTER TABLE events DROP COLUMN payload;", MigrationClass.CONTRACT, "drops-column"),
        ("DROP TABLE errors;", MigrationClass.DANGEROUS, "deletes-rows"),
        ("TRUNCATE errors;", MigrationClass.DANGEROUS, "deletes-rows"),
        ("ALTER TABLE errors ALTER COLUMN kind TYPE varchar(20);", MigrationClass.CONTRACT, "changes-column-type"),
        ("ALTER TABLE users RENAME TO accounts;", MigrationClass.CONTRACT, "renames-table"),
        ("DO $$ BEGIN DELETE FROM users; END $$;", MigrationClass.DANGEROUS, "runs-procedural-code"),
        ("DELETE FROM events WHERE id < 0", MigrationClass.DANGEROUS, "deletes-rows"),
        (
            "CREATE TABLE tags (id bigint); DELETE FROM tags; ALTER TABLE tags DROP COLUMN id;",
            MigrationClass.EXPAND,
            "new-table",
        ),
        ("ALTER TABLE events ADD COLUMN note text;", MigrationClass.EXPAND, "adds-column"),
        # The previous release's inserts leave these columns empty, so they fail: contract.
        ("ALTER TABLE events ALTER COLUMN payload SET NOT NULL;", MigrationClass.CONTRACT, "tightens-not-null"),
        ("ALTER TABLE events ADD COLUMN note text NOT NULL;", MigrationClass.CONTRACT, "adds-required-column"),
        ("SELEC 1;", MigrationClass.DANGEROUS, "does-not-parse"),
    ],
)
def test_statement_rules(sql, expected, rule):
    [m] = review([SourceMigration(version=4, name="x", file="004_x.up.sql", sql=sql)], 3, LIVE).pending
    assert m.classification is expected, m.reasons
    assert rule in {r.rule for r in m.reasons}


def test_squawk_lints_the_sql_and_comments_in_it_cannot_silence_it():
    sql = "-- squawk-ignore renaming-column\nALTER TABLE errors RENAME COLUMN stack TO stack_trace;\n"
    findings = lint(sql, "004_rename_error_stack.up.sql")
    assert [(f.rule, f.line) for f in findings if f.rule == "renaming-column"] == [("renaming-column", 2)]
    [expand] = review([m for m in release_migrations("v3.3.0.patch") if m.version == 4], 3, LIVE).pending
    assert "require-concurrent-index-creation" in {f.rule for f in expand.findings}


def test_migration_files_are_read_by_the_app_s_own_naming_rule(tmp_path: Path):
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "001_init.up.sql").write_text("CREATE TABLE a (id int);")
    (folder / "001_init.down.sql").write_text("DROP TABLE a;")
    (folder / "2_Bad-Name.up.sql").write_text("DROP TABLE a;")
    (folder / "003_link.up.sql").symlink_to("/etc/hostname")
    assert [(m.version, m.name) for m in source_migrations(tmp_path)] == [(1, "init")]
    assert source_migrations(tmp_path / "nowhere") == []


def test_the_rollback_restores_only_for_what_the_previous_release_cannot_live_with():
    expand = review(release_migrations("v3.3.0.patch"), 2, LIVE)
    assert expand.restore_needed([]) == (False, "no migration was applied since the backup")
    keep, why = expand.restore_needed([3, 4])
    assert not keep and "only expand migrations were applied (003_event_severity, 004_error_resolved_index)" in why
    purge = review(release_migrations("v3.2.1-purge.patch"), 3, LIVE, allow=["004_purge_load_test_events"])
    restore, why = purge.restore_needed([4])
    assert restore and why.startswith("004_purge_load_test_events is dangerous (deletes-rows")
    assert expand.restore_needed([3, 9]) == (
        True,
        "migration(s) [9] applied since the backup were not reviewed at build",
    )


def test_the_migration_report_flags_every_table_that_lost_rows():
    effect = MigrationEffect(
        measured_at=datetime(2026, 12, 1, tzinfo=UTC),
        tables=[
            TableDelta(
                table="public.events", rows_before=3300, rows_after=200, bytes_before=850_000, bytes_after=850_000
            ),
            TableDelta(table="public.errors", rows_before=10, rows_after=10, bytes_before=8192, bytes_after=8192),
            TableDelta(table="public.tags", rows_after=0, bytes_after=8192),
        ],
    )
    assert effect.summary() == "rows LOST: public.events -3,100"
    markdown = effect.markdown()
    assert "| `public\\.events` | 3,300 | 200 | -3,100 | 830.1 kB | 830.1 kB | **LOST ROWS** |" in markdown
    assert "| `public\\.tags` | - | 0 | +0 | - | 8.0 kB | new |" in markdown
