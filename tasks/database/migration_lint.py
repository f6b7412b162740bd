"""Migrations judged before they run: list a release's pending migrations, lint and classify each.

At build, from the checked-out source only: ``migrations/NNN_name.up.sql`` files newer than the
database's ``schema_migrations`` version are pending. Each is

- parsed by PostgreSQL's own parser (pglast, libpg_query) and classified statement by statement
  against the live schema (which tables and columns exist, how large each table is): **expand**,
  **contract** (removes or renames a table or column that exists now, so the previous release
  uses it; or changes a column's type) or **dangerous** (deletes rows, rewrites a table, locks a
  large table against traffic, or runs code no linter can see into);
- linted by squawk (``squawk-cli``), whose findings are shown beside the class.

A contract or dangerous migration needs the run's ``allow_migrations=[...]``; without it the build
fails, before the backup, naming the migration and the rule. The classification follows those
expand/contract pattern: a constraint that makes writers send more (``SET NOT NULL``, a required
column) breaks the previous release's writes, so it is contract (dangerous when its lock is on a
large table), and a rollback must restore the backup after it.

Nothing here runs the migrations, and the database is only read (one read-only snapshot). The
SQL is data: squawk reads it on stdin with its comments blanked (so ``-- squawk-ignore`` in the
code under review cannot silence it), from an empty directory, with our own empty config and no
environment, so neither the release's files nor the pipeline's secrets reach it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from shutil import which

import psycopg
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from blocks.database import PostgresDatabase
from blocks.database.errors import postgres_errors
from tasks.core.artifacts import in_task_run, markdown_artifact
from tasks.core.errors import PermanentError, one_line
from tasks.core.migration_review import (
    ClassReason,
    LintFinding,
    MigrationClass,
    MigrationEffect,
    MigrationReview,
    ReviewedMigration,
    TableDelta,
    TableStats,
)
from tasks.core.models import utcnow
from tasks.core.stages import Stage
from tasks.database.manifest import (
    SYSTEM_SCHEMAS,
    row_counts,
    schema_fingerprint,
    schema_version,
    snapshot_connection,
    table_key,
)

MIGRATIONS_DIR = "migrations"
UP_FILE = re.compile(r"^(\d+)_([a-z0-9_]+)\.up\.sql$")  # the app's own rule (internal/migrate)
# A lock or a rewrite matters when it holds traffic up for long: a scan of a million rows or a
# gigabyte takes seconds. Below that the lint finding is shown, and the class stays expand.
LARGE_TABLE_ROWS = 1_000_000
LARGE_TABLE_BYTES = 1 << 30
SQUAWK_TIMEOUT_S = 60
# Column defaults PostgreSQL must compute per row (a table rewrite); constants and now() are not.
VOLATILE_DEFAULTS = {
    "random",
    "clock_timestamp",
    "gen_random_uuid",
    "uuid_generate_v4",
    "uuid_generate_v1",
    "timeofday",
    "nextval",
    "txid_current",
}
SERIAL_TYPES = {"serial", "bigserial", "smallserial", "serial4", "serial8", "serial2"}

_STATS = f"""
    SELECT n.nspname, c.relname, pg_total_relation_size(c.oid),
           array(SELECT a.attname::text FROM pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum)
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind = 'r' AND {SYSTEM_SCHEMAS}
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')"""


class SourceMigration(BaseModel):
    version: int
    name: str
    file: str
    sql: str


def source_migrations(source_dir: str | Path) -> list[SourceMigration]:
    """Every ``NNN_name.up.sql`` of the release's source, in version order."""
    folder = Path(source_dir) / MIGRATIONS_DIR
    found = []
    for path in sorted(folder.glob("*.up.sql")) if folder.is_dir() else []:
        match = UP_FILE.match(path.name)
        if match and path.is_file() and not path.is_symlink():  # a symlink could point anywhere on the worker
            found.append(
                SourceMigration(
                    version=int(match.group(1)),
                    name=match.group(2),
                    file=path.name,
                    sql=path.read_text(errors="replace"),
                )
            )
    return sorted(found, key=lambda m: m.version)


def read_table_stats(conn: psycopg.Connection) -> dict[str, TableStats]:
    """Every user table's exact rows, total size (with indexes and TOAST) and columns."""
    counts = row_counts(conn)
    return {
        table_key(schema, name): TableStats(
            rows=counts.get(table_key(schema, name), 0), bytes=size, columns=list(columns)
        )
        for schema, name, size, columns in conn.execute(_STATS).fetchall()
    }


def read_database_state(database: PostgresDatabase) -> tuple[int, dict[str, TableStats]]:
    """(schema version, table stats) in one read-only snapshot."""
    with (
        postgres_errors("reading the schema for the migration review", database.identity()),
        snapshot_connection(database) as conn,
    ):
        return schema_version(conn), read_table_stats(conn)


# --- classification (pglast) ----------------------------------------------------------------


class _Schema:
    """What exists now (the previous release uses it) and what the pending migrations create."""

    def __init__(self, tables: dict[str, TableStats], large_rows: int, large_bytes: int):
        self.tables = tables
        self.large_rows, self.large_bytes = large_rows, large_bytes
        self.created: set[str] = set()

    @staticmethod
    def key(relation) -> str:
        return table_key(relation.schemaname or "public", relation.relname)

    def existing(self, relation) -> TableStats | None:
        key = self.key(relation)
        return None if key in self.created else self.tables.get(key)

    def large(self, stats: TableStats | None) -> bool:
        return stats is not None and (stats.rows >= self.large_rows or stats.bytes >= self.large_bytes)

    def size(self, stats: TableStats) -> str:
        return f"{stats.rows:,} rows, {stats.bytes / 1048576:,.1f} MB"


def _funcs(node) -> set[str]:
    """Names of every function called inside an expression."""
    from pglast import ast
    from pglast.visitors import Visitor

    names: set[str] = set()

    class Calls(Visitor):
        def visit_FuncCall(self, ancestors, call: ast.FuncCall) -> None:  # noqa: N802 (pglast's visitor naming)
            names.add(call.funcname[-1].sval.lower())

    if node is not None:
        Calls()(node)
    return names


def _alter_reasons(cmd, relation, stats: TableStats | None, schema: _Schema, n: int) -> list[ClassReason]:
    from pglast import ast, enums

    at, table = enums.AlterTableType, schema.key(relation)
    reason = lambda rule, cls, detail: ClassReason(rule=rule, classification=cls, detail=detail, statement=n)  # noqa: E731
    if stats is None:  # created by these migrations: the previous release does not use it
        return [reason("new-table", MigrationClass.EXPAND, f"changes {table}, created by these migrations")]
    large = schema.large(stats)
    kind = at(cmd.subtype)
    if kind is at.AT_AddColumn:
        column = cmd.def_
        constraints = list(column.constraints or ())
        default = next((c.raw_expr for c in constraints if c.contype == enums.ConstrType.CONSTR_DEFAULT), None)
        not_null = any(c.contype == enums.ConstrType.CONSTR_NOTNULL for c in constraints)
        type_name = column.typeName.names[-1].sval.lower()
        rewrites = type_name in SERIAL_TYPES or bool(_funcs(default) & VOLATILE_DEFAULTS)
        if rewrites and large:
            return [
                reason(
                    "rewrites-table",
                    MigrationClass.DANGEROUS,
                    f"adding {table}.{column.colname} with a per-row default rewrites {schema.size(stats)}",
                )
            ]
        if not_null and default is None:
            return [
                reason(
                    "adds-required-column",
                    MigrationClass.CONTRACT,
                    f"{table}.{column.colname} is NOT NULL without a default: writers that do not set it fail",
                )
            ]
        return [reason("adds-column", MigrationClass.EXPAND, f"adds {table}.{column.colname}")]
    if kind is at.AT_DropColumn:
        used = cmd.name in stats.columns
        return [
            reason(
                "drops-column",
                MigrationClass.CONTRACT if used else MigrationClass.EXPAND,
                f"drops {table}.{cmd.name}"
                + (", which the previous release reads" if used else " (not in the live schema)"),
            )
        ]
    if kind is at.AT_AlterColumnType:
        found = [
            reason(
                "changes-column-type",
                MigrationClass.CONTRACT,
                f"changes the type of {table}.{cmd.name}, which the previous release reads",
            )
        ]
        if large:
            found.append(
                reason(
                    "rewrites-table",
                    MigrationClass.DANGEROUS,
                    f"a type change rewrites {table} ({schema.size(stats)}) under an exclusive lock",
                )
            )
        return found
    if kind is at.AT_SetNotNull:
        if large:
            return [
                reason(
                    "locks-large-table",
                    MigrationClass.DANGEROUS,
                    f"SET NOT NULL scans {table} ({schema.size(stats)}) under an exclusive lock",
                )
            ]
        return [
            reason(
                "tightens-not-null",
                MigrationClass.CONTRACT,
                f"{table}.{cmd.name} becomes NOT NULL: writers that leave it empty fail",
            )
        ]
    if kind is at.AT_AddConstraint:
        constraint = cmd.def_
        validated = isinstance(constraint, ast.Constraint) and not constraint.skip_validation
        if validated and large:
            return [
                reason(
                    "locks-large-table",
                    MigrationClass.DANGEROUS,
                    f"a validated constraint scans {table} ({schema.size(stats)}) while blocking writes "
                    "(add it NOT VALID, then VALIDATE CONSTRAINT)",
                )
            ]
        return [reason("adds-constraint", MigrationClass.EXPAND, f"adds a constraint to {table}")]
    if kind in (at.AT_SetLogged, at.AT_SetUnLogged, at.AT_SetTableSpace):
        cls = MigrationClass.DANGEROUS if large else MigrationClass.EXPAND
        return [reason("rewrites-table", cls, f"rewrites {table} ({schema.size(stats)})")]
    if kind in (
        at.AT_DropConstraint,
        at.AT_DropNotNull,
        at.AT_ColumnDefault,
        at.AT_ValidateConstraint,
        at.AT_SetStatistics,
        at.AT_SetOptions,
        at.AT_ResetOptions,
        at.AT_SetStorage,
        at.AT_SetRelOptions,
        at.AT_ResetRelOptions,
        at.AT_ReplicaIdentity,
        at.AT_EnableTrig,
        at.AT_DisableTrig,
        at.AT_AddIndex,
    ):
        return [reason("relaxes-or-tunes", MigrationClass.EXPAND, f"{kind.name} on {table}")]
    return [
        reason(
            "unreviewed-alter",
            MigrationClass.DANGEROUS,
            f"{kind.name} on {table} is not a change the linter knows to be safe",
        )
    ]


def _statement_reasons(stmt, schema: _Schema, n: int) -> list[ClassReason]:
    from pglast import ast, enums

    reason = lambda rule, cls, detail: ClassReason(rule=rule, classification=cls, detail=detail, statement=n)  # noqa: E731
    objects, name = enums.ObjectType, type(stmt).__name__
    if isinstance(stmt, ast.CreateStmt):
        schema.created.add(schema.key(stmt.relation))
        return [reason("creates-table", MigrationClass.EXPAND, f"creates {schema.key(stmt.relation)}")]
    if isinstance(stmt, ast.AlterTableStmt):
        stats = schema.existing(stmt.relation)
        return [r for cmd in stmt.cmds for r in _alter_reasons(cmd, stmt.relation, stats, schema, n)]
    if isinstance(stmt, ast.IndexStmt):
        stats = schema.existing(stmt.relation)
        if schema.large(stats) and not stmt.concurrent:
            return [
                reason(
                    "locks-large-table",
                    MigrationClass.DANGEROUS,
                    f"CREATE INDEX blocks writes to {schema.key(stmt.relation)} ({schema.size(stats)}) while it builds",
                )
            ]
        return [reason("creates-index", MigrationClass.EXPAND, f"indexes {schema.key(stmt.relation)}")]
    if isinstance(stmt, ast.RenameStmt):
        kind = objects(stmt.renameType)
        if (
            kind in (objects.OBJECT_COLUMN, objects.OBJECT_TABLE, objects.OBJECT_VIEW, objects.OBJECT_MATVIEW)
            and stmt.relation is not None
        ):
            stats = schema.existing(stmt.relation)
            table = schema.key(stmt.relation)
            if kind is objects.OBJECT_COLUMN and stats is not None and stmt.subname in stats.columns:
                return [
                    reason(
                        "renames-column",
                        MigrationClass.CONTRACT,
                        f"renames {table}.{stmt.subname} to {stmt.newname}, which the previous release reads",
                    )
                ]
            if kind is not objects.OBJECT_COLUMN and (stats is not None or kind is not objects.OBJECT_TABLE):
                return [
                    reason(
                        "renames-table",
                        MigrationClass.CONTRACT,
                        f"renames {table} to {stmt.newname}, which the previous release uses",
                    )
                ]
        return [reason("renames", MigrationClass.EXPAND, f"renames a {kind.name.removeprefix('OBJECT_').lower()}")]
    if isinstance(stmt, ast.DropStmt):
        kind = objects(stmt.removeType)
        if kind is objects.OBJECT_TABLE:
            found = []
            for parts in stmt.objects:
                names = [p.sval for p in parts]
                key = table_key(names[-2] if len(names) > 1 else "public", names[-1])
                stats = None if key in schema.created else schema.tables.get(key)
                if stats is not None:
                    found += [
                        reason("drops-table", MigrationClass.CONTRACT, f"drops {key}, which the previous release uses"),
                        reason("deletes-rows", MigrationClass.DANGEROUS, f"drops {key} with its {stats.rows:,} rows"),
                    ]
            return found or [reason("drops-new-table", MigrationClass.EXPAND, "drops a table the live schema lacks")]
        if kind is objects.OBJECT_INDEX:
            return [reason("drops-index", MigrationClass.EXPAND, "drops an index (reads may slow down)")]
        return [
            reason(
                "drops-object",
                MigrationClass.CONTRACT,
                f"drops a {kind.name.removeprefix('OBJECT_').lower()} the previous release may use",
            )
        ]
    if isinstance(stmt, ast.DeleteStmt | ast.TruncateStmt):
        relations = [stmt.relation] if isinstance(stmt, ast.DeleteStmt) else list(stmt.relations)
        found = []
        for relation in relations:
            stats = schema.existing(relation)
            if stats is not None:
                whole = isinstance(stmt, ast.TruncateStmt) or stmt.whereClause is None
                which_rows = "every row" if whole else "rows"
                found.append(
                    reason(
                        "deletes-rows",
                        MigrationClass.DANGEROUS,
                        f"deletes {which_rows} of {schema.key(relation)} ({stats.rows:,} rows now)",
                    )
                )
        return found or [
            reason("deletes-new-rows", MigrationClass.EXPAND, "deletes from a table these migrations create")
        ]
    if isinstance(stmt, ast.UpdateStmt):
        stats = schema.existing(stmt.relation)
        table = schema.key(stmt.relation)
        if stats is not None and stmt.whereClause is None and schema.large(stats):
            return [
                reason(
                    "rewrites-table",
                    MigrationClass.DANGEROUS,
                    f"updates every row of {table} ({schema.size(stats)}) in one transaction",
                )
            ]
        return [reason("updates-rows", MigrationClass.EXPAND, f"updates rows of {table}")]
    if isinstance(stmt, ast.VacuumStmt | ast.ClusterStmt | ast.ReindexStmt):
        return [reason("rewrites-table", MigrationClass.DANGEROUS, f"{name} rewrites or locks tables")]
    if isinstance(stmt, ast.DoStmt | ast.CallStmt | ast.ExecuteStmt):
        return [
            reason(
                "runs-procedural-code", MigrationClass.DANGEROUS, f"{name}: what it does cannot be read from the SQL"
            )
        ]
    if isinstance(
        stmt,
        ast.InsertStmt
        | ast.SelectStmt
        | ast.VariableSetStmt
        | ast.CommentStmt
        | ast.GrantStmt
        | ast.ViewStmt
        | ast.CreateSeqStmt
        | ast.CreateFunctionStmt
        | ast.CreateEnumStmt
        | ast.CompositeTypeStmt
        | ast.CreateDomainStmt
        | ast.CreateExtensionStmt
        | ast.CreateSchemaStmt
        | ast.DefineStmt
        | ast.CreateTrigStmt
        | ast.CreateTableAsStmt
        | ast.AlterSeqStmt
        | ast.AlterEnumStmt
        | ast.TransactionStmt
        | ast.CreatePolicyStmt,
    ):
        return [reason("additive", MigrationClass.EXPAND, name.removesuffix("Stmt"))]
    return [reason("unknown-statement", MigrationClass.DANGEROUS, f"{name} is not a statement the linter knows")]


def classify(sql: str, schema: _Schema) -> tuple[MigrationClass, list[ClassReason]]:
    """One migration's class from its statements (the worst decides)."""
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        statements = parse_sql(sql)
    except ParseError as exc:
        return MigrationClass.DANGEROUS, [
            ClassReason(
                rule="does-not-parse",
                classification=MigrationClass.DANGEROUS,
                detail=f"PostgreSQL's parser refuses it: {exc}",
            )
        ]
    reasons = [r for n, raw in enumerate(statements, 1) for r in _statement_reasons(raw.stmt, schema, n)]
    order = [MigrationClass.EXPAND, MigrationClass.CONTRACT, MigrationClass.DANGEROUS]
    worst = max((r.classification for r in reasons), key=order.index, default=MigrationClass.EXPAND)
    return worst, reasons


# --- lint (squawk) --------------------------------------------------------------------------


def _without_comments(sql: str) -> str:
    """The SQL with every comment blanked (newlines kept, so line numbers stay right)."""
    from pglast.parser import ParseError, scan

    try:
        tokens = scan(sql)
    except ParseError:
        return sql
    data = sql.encode()
    out = bytearray(data)
    for token in tokens:
        if token.name in ("SQL_COMMENT", "C_COMMENT"):
            for i in range(token.start, token.end + 1):
                if out[i] not in (0x0A, 0x0D):
                    out[i] = 0x20
    return out.decode(errors="replace")


def squawk_binary() -> str:
    """The squawk that ``squawk-cli`` installed beside this Python, else the one on PATH."""
    found = which("squawk", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if not found:
        raise PermanentError("squawk is not installed (pip install squawk-cli)", stage=Stage.BUILD)
    return found


def lint(sql: str, file: str, pg_major: int | None = None) -> list[LintFinding]:
    """squawk's findings for one migration (each migration runs in its own transaction)."""
    with tempfile.TemporaryDirectory(prefix="squawk-") as empty:
        config = Path(empty) / "squawk.toml"
        config.write_text("")
        argv = [
            squawk_binary(),
            "--reporter",
            "json",
            "--assume-in-transaction",
            "--config",
            str(config),
            "--stdin-filepath",
            file,
        ] + (["--pg-version", f"{pg_major}.0"] if pg_major else [])
        done = subprocess.run(
            argv,
            input=_without_comments(sql),
            capture_output=True,
            text=True,
            cwd=empty,
            env={"PATH": os.defpath},
            timeout=SQUAWK_TIMEOUT_S,
            check=False,
        )
    if done.returncode not in (0, 1):
        return [
            LintFinding(
                rule="linter-failed",
                level="error",
                message=f"squawk exited {done.returncode}: {one_line(done.stderr)[-300:]}",
            )
        ]
    try:
        found = json.loads(done.stdout or "[]")
    except json.JSONDecodeError:
        return [LintFinding(rule="linter-failed", level="error", message=f"squawk said: {done.stdout[-300:]}")]
    return [
        LintFinding(
            rule=f.get("rule_name", "?"),
            level=str(f.get("level", "warning")).lower(),
            message=f.get("message", ""),
            line=(f["line"] + 1) if isinstance(f.get("line"), int) else None,
            help=f.get("help") or "",
        )
        for f in found
    ]


def linter_versions() -> str:
    names = []
    for package in ("squawk-cli", "pglast"):
        try:
            names.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            names.append(f"{package} (not installed)")
    return " and ".join(names)


# --- the review -----------------------------------------------------------------------------


def review(
    migrations: Sequence[SourceMigration],
    current_version: int,
    tables: dict[str, TableStats],
    allow: Sequence[str] = (),
    large_rows: int = LARGE_TABLE_ROWS,
    large_bytes: int = LARGE_TABLE_BYTES,
    pg_major: int | None = None,
) -> MigrationReview:
    """The pending migrations (newer than ``current_version``), each classified and linted."""
    schema = _Schema(tables, large_rows, large_bytes)
    allowed = set(allow)
    reviewed = []
    for m in migrations:
        if m.version <= current_version:
            continue
        cls, reasons = classify(m.sql, schema)
        entry = ReviewedMigration(
            version=m.version, name=m.name, classification=cls, reasons=reasons, findings=lint(m.sql, m.file, pg_major)
        )
        entry.allowed = entry.id in allowed
        reviewed.append(entry)
    return MigrationReview(
        current_version=current_version,
        target_version=max((m.version for m in migrations), default=current_version),
        pending=reviewed,
        allow=list(allow),
        linter=linter_versions(),
        tables_before=tables,
    )


@task(cache_policy=NO_CACHE)
def review_migrations(
    source_dir: str,
    database: PostgresDatabase,
    allow_migrations: Sequence[str] = (),
    large_table_rows: int = LARGE_TABLE_ROWS,
    large_table_bytes: int = LARGE_TABLE_BYTES,
) -> MigrationReview:
    """The build's migration review: pending migrations of ``source_dir`` against the database, read-only.

    Raises ``PermanentError`` (stage build) naming each contract or dangerous migration that
    ``allow_migrations`` does not name, and the rule that classified it. Nothing is changed.
    """
    logger = get_run_logger()
    migrations = source_migrations(source_dir)
    logger.info(
        "reading schema_migrations and table sizes on %s:%s/%s (read-only)",
        database.host,
        database.port,
        database.dbname,
    )
    current, tables = read_database_state(database)
    logger.info(
        "squawk + pglast on %d migration file(s) newer than schema %d",
        sum(m.version > current for m in migrations),
        current,
    )
    result = review(migrations, current, tables, allow_migrations, large_table_rows, large_table_bytes)
    unknown = sorted(set(allow_migrations) - {m.id for m in result.pending})
    logger.info(
        "migration review: %s%s",
        result.summary(),
        f"; allow_migrations names no pending migration: {unknown}" if unknown else "",
    )
    if in_task_run():
        markdown_artifact(
            key="migration-review",
            description=result.summary()[:500],
            markdown=f"# Migration review (before anything ran)\n\n{result.markdown()}\n",
        )
    if result.refused:
        raise PermanentError(result.refusal(), stage=Stage.BUILD, result=result)
    return result


@task(cache_policy=NO_CACHE)
def measure_migration_effect(database: PostgresDatabase, migrations: MigrationReview | None) -> MigrationReview | None:
    """After ``migrate --direction up``: every table's rows and size now beside the build's reading.

    Returns the review with ``effect`` filled (the migration report), and flags every table that lost rows.
    """
    if migrations is None:  # the build did not review them (no database given)
        return None
    logger = get_run_logger()
    logger.info("table row counts and sizes on %s:%s/%s (read-only)", database.host, database.port, database.dbname)
    with (
        postgres_errors("reading table sizes after the migrations", database.identity()),
        snapshot_connection(database) as conn,
    ):
        after = read_table_stats(conn)
    before = migrations.tables_before
    effect = MigrationEffect(
        measured_at=utcnow(),
        tables=[
            TableDelta(
                table=t,
                rows_before=before[t].rows if t in before else None,
                rows_after=after[t].rows if t in after else None,
                bytes_before=before[t].bytes if t in before else None,
                bytes_after=after[t].bytes if t in after else None,
            )
            for t in sorted(set(before) | set(after))
        ],
    )
    result = migrations.model_copy(update={"effect": effect})
    logger.info("migration effect: %s", effect.summary())
    if in_task_run():
        markdown_artifact(
            key="migration-effect",
            description=effect.summary()[:500],
            markdown=f"# Migrations: what they did to the data\n\n{result.markdown()}\n",
        )
    return result


def restore_needed(
    database: PostgresDatabase, backup_version: int, backup_fingerprint: str, migrations: MigrationReview
) -> tuple[bool, str]:
    """The rollback's "schema changed" test, decided by the build's classification of what was applied.

    Versions applied since the backup come from ``schema_migrations``; a schema that changed with no
    migration applied (by hand, by another tool) needs the backup back too.
    """
    with (
        postgres_errors("reading the migrations applied since the backup", database.identity()),
        snapshot_connection(database) as conn,
    ):
        applied = (
            []
            if schema_version(conn) == 0
            else [
                v
                for (v,) in conn.execute(
                    "SELECT version FROM schema_migrations WHERE version > %s ORDER BY version", (backup_version,)
                )
            ]
        )
        drifted = not applied and schema_fingerprint(conn) != backup_fingerprint
    if drifted:
        return True, "the schema changed without a migration being applied"
    return migrations.restore_needed(applied)
