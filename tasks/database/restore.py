"""Putting the staging database back to a pre-deployment backup, and deciding whether to.

A restore drops what the restoring role owns and replays the dump in ONE transaction, then
checks the database against the backup's manifest (row counts, checksums, schema) inside that
same transaction: either the database equals the backup, or nothing changed.
"""

from __future__ import annotations

import time
from enum import StrEnum

import psycopg
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from blocks.database import PostgresDatabase
from blocks.database.errors import postgres_errors
from tasks.core.artifacts import markdown_artifact
from tasks.core.errors import retry_if_temporary
from tasks.core.migration_review import MigrationReview
from tasks.database import tools as pg_tools
from tasks.database.backup import BackupResult
from tasks.database.manifest import (
    major_version,
    row_counts,
    schema_fingerprint,
    schema_version,
    snapshot_connection,
    verify_sql,
)
from tasks.database.migration_lint import restore_needed


class TableDiscard(BaseModel):
    table: str
    rows_now: int | None = Field(None, description="None: the table is not there now")
    rows_in_backup: int | None = Field(None, description="None: the table is not in the backup")

    @property
    def rows_discarded(self) -> int:
        return max((self.rows_now or 0) - (self.rows_in_backup or 0), 0)


class RestoreResult(BaseModel):
    backup: str
    duration_s: float
    schema_version_before: int
    schema_version_after: int
    discarded: list[TableDiscard] = Field(default_factory=list)
    rows_discarded: int = Field(0, description="net rows added since the backup (updates in place not counted)")
    verified: bool = False
    mismatches: list[str] = Field(default_factory=list)


class RestorePolicy(StrEnum):
    IF_SCHEMA_CHANGED = "if-schema-changed"
    ALWAYS = "always"
    NEVER = "never"


class RestoreDecision(BaseModel):
    restore: bool
    reason: str

    def __bool__(self) -> bool:
        return self.restore


def _discards(conn: psycopg.Connection, backup: BackupResult) -> list[TableDiscard]:
    now = row_counts(conn)
    return [
        TableDiscard(table=t, rows_now=now.get(t), rows_in_backup=backup.tables[t].rows if t in backup.tables else None)
        for t in sorted(set(now) | set(backup.tables))
    ]


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_if_temporary)
def restore_database(database: PostgresDatabase, backup: BackupResult) -> RestoreResult:
    """Put the database back to ``backup``, atomically, and prove it: counts, checksums, schema.

    Restores into the same database (the role owns its objects; a fresh database plus rename
    would need CREATEDB and every app connection gone). Everything runs in one transaction:
    a failure leaves the database as it was. Raises PermanentError if verification fails, and
    TemporaryError (retried) when the database could not be reached or a lock was not granted.
    """
    logger = get_run_logger()
    store = database.backups()
    started = time.monotonic()
    where = database.identity()
    with (
        postgres_errors(f"reading the database before restoring {backup.name}", where),
        snapshot_connection(database) as conn,
    ):
        before, discarded = schema_version(conn), _discards(conn, backup)
        major = major_version(conn)
    lost = sum(d.rows_discarded for d in discarded)
    logger.info(
        "restore %s: schema %d -> %d, discarding %d rows written since the backup",
        backup.name,
        before,
        backup.schema_version,
        lost,
    )
    logger.info("pg_restore %s/%s | psql --single-transaction %s", store.describe(), backup.dump_file, database.dbname)
    script = verify_sql(backup.schema_version, backup.schema_fingerprint, backup.tables)
    failure = pg_tools.restore_in_one_transaction(database, store, backup.dump_file, major, script, logger)
    with (
        postgres_errors(f"reading the schema version after restoring {backup.name}", where),
        database.connect() as conn,
    ):
        after = schema_version(conn)
    result = RestoreResult(
        backup=backup.name,
        duration_s=round(time.monotonic() - started, 3),
        schema_version_before=before,
        schema_version_after=after,
        discarded=discarded,
        rows_discarded=lost if failure is None else 0,
        verified=failure is None,
        mismatches=[str(failure)] if failure else [],
    )
    logger.info("restore %s: %s in %.1fs", backup.name, "verified" if result.verified else "FAILED", result.duration_s)
    lines = "\n".join(
        f"| `{d.table}` | {'-' if d.rows_now is None else f'{d.rows_now:,}'} | "
        f"{'-' if d.rows_in_backup is None else f'{d.rows_in_backup:,}'} | {d.rows_discarded:,} |"
        + (" not in backup: dropped |" if d.rows_in_backup is None else " recreated |" if d.rows_now is None else " |")
        for d in discarded
    )
    headline = (
        f"**Restored and verified** (schema version {before} -> {after}, every table's rows and checksum equal the "
        f"backup's) in {result.duration_s:.1f}s.\n\n**{lost:,} rows written since the backup "
        f"({backup.created_at:%Y-%m-%d %H:%M:%S} UTC) were discarded**"
        if failure is None
        else f"**Restore FAILED; the transaction was rolled back and the database is unchanged** "
        f"(schema version {after}).\n\n```\n{failure}\n```\n\nThe restore would have discarded {lost:,} rows"
    )
    markdown_artifact(
        key="database-restore",
        description=f"Restore of {backup.name}",
        markdown=(
            f"# Database restore from `{backup.name}`\n\n{headline} (net rows added per table; rows updated in place "
            f"are not counted).\n\n| Table | Rows before restore | Rows in backup | Discarded | |\n"
            f"|---|---:|---:|---:|---|\n{lines}\n"
        ),
    )
    if failure is not None:
        raise failure.error(result=result)
    return result


def schema_changed_since(database: PostgresDatabase, backup: BackupResult) -> bool:
    """Whether the schema differs from the backup's: another version, or other columns/indexes/constraints."""
    with database.connect() as conn:
        return schema_version(conn) != backup.schema_version or schema_fingerprint(conn) != backup.schema_fingerprint


def should_restore(
    policy: RestorePolicy | str,
    database: PostgresDatabase,
    backup: BackupResult | None,
    migrations: MigrationReview | None = None,
) -> RestoreDecision:
    """The rollback's question: restore the pre-deployment backup, under ``policy``?

    With the build's ``migrations`` review, "schema changed" means a migration the previous release
    cannot live with (contract, dangerous, or never reviewed) was applied; expand-only keeps the data.
    """
    policy = RestorePolicy(policy)
    if backup is None:
        return RestoreDecision(restore=False, reason="no pre-deployment backup was taken")
    if policy is RestorePolicy.NEVER:
        return RestoreDecision(restore=False, reason="policy: never restore")
    if policy is RestorePolicy.ALWAYS:
        return RestoreDecision(restore=True, reason="policy: always restore")
    if migrations is not None:  # the classification decides, not a version comparison
        restore, why = restore_needed(database, backup.schema_version, backup.schema_fingerprint, migrations)
        return RestoreDecision(restore=restore, reason=f"{why} (since {backup.name})")
    changed = schema_changed_since(database, backup)
    return RestoreDecision(
        restore=changed, reason=f"schema {'changed' if changed else 'unchanged'} since {backup.name}"
    )
