"""The staging database: preflight checks, pre-deployment backup, schema verification, restore.

A backup is ``pg_dump -Fc`` taken in a snapshot this module exports and keeps open, so the
manifest it writes beside the dump (exact row counts and a checksum per table, the schema
version and a schema fingerprint) describes exactly the rows in the dump. A restore drops
what the restoring role owns and replays the dump in ONE transaction, then checks the
database against that manifest: either the database equals the backup, or nothing changed.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from enum import StrEnum

import psycopg
from psycopg import sql
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from blocks.database import BackupStorage, PostgresDatabase
from tasks.errors import PermanentError, TemporaryError
from tasks.models import CheckResult, GateReport, Verdict, utcnow

PREFIX = "pre-deployment-"
_NAME = re.compile(rf"^({PREFIX}(\d+)(?:-\d+)?)\.(dump|manifest\.json)(\.partial)?$")
_SYSTEM_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp)'"
# Row output depends on these settings; pin them so a checksum means the same in every session.
_PINNED = ("SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres';"
           " SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'")


class TableManifest(BaseModel):
    rows: int
    checksum: str = Field(description="'<method>:<sum of 64-bit row hashes>'; order-independent, no 1 GB limit")


class BackupResult(BaseModel):
    """A pre-deployment backup; also the manifest stored as ``<name>.manifest.json``."""

    name: str
    dump_file: str
    manifest_file: str
    storage: str
    created_at: datetime
    run_label: str = ""
    size_bytes: int
    duration_s: float
    schema_version: int
    schema_fingerprint: str
    server_version: str
    tables: dict[str, TableManifest] = Field(default_factory=dict)
    pruned: list[str] = Field(default_factory=list)


class AppliedMigration(BaseModel):
    version: int
    name: str = ""
    applied_at: datetime | None = None


class MigrationResult(BaseModel):
    expected_version: int
    current_version: int
    applied: list[AppliedMigration] = Field(default_factory=list)
    missing: list[int] = Field(default_factory=list, description="versions <= expected not applied")
    unknown: list[int] = Field(default_factory=list, description="applied versions the image does not know")
    verdict: Verdict
    detail: str = ""


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


# --- SQL helpers ---------------------------------------------------------------


def _schema_version(conn: psycopg.Connection) -> int:
    if conn.execute("SELECT to_regclass('schema_migrations') IS NULL").fetchone()[0]:
        return 0
    return conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]


def _schema_fingerprint(conn: psycopg.Connection) -> str:
    """md5 of the columns, indexes and constraints of every user table: catches unversioned changes too."""
    return conn.execute(f"""
        SELECT md5(coalesce(string_agg(line, E'\\n' ORDER BY line), '')) FROM (
          SELECT format('col %s.%s.%s %s %s %s', n.nspname, c.relname, a.attname,
                        format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid))
            FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
           WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped AND {_SYSTEM_SCHEMAS}
          UNION ALL
          SELECT format('idx %s', pg_get_indexdef(i.indexrelid)) FROM pg_index i
            JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_SYSTEM_SCHEMAS}
          UNION ALL
          SELECT format('con %s.%s %s', c.relname, k.conname, pg_get_constraintdef(k.oid)) FROM pg_constraint k
            JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_SYSTEM_SCHEMAS}
        ) s(line)""").fetchone()[0]


def _tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """User tables holding rows (partitions, not their parents, so nothing is counted twice)."""
    return conn.execute(f"""
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND {_SYSTEM_SCHEMAS}
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
         ORDER BY 1, 2""").fetchall()


def _key(schema: str, name: str) -> str:
    return f"{schema}.{name}"


def _checksum_table(conn: psycopg.Connection, schema: str, name: str, method: str | None = None) -> TableManifest:
    """Exact count and a checksum in one scan. Must run inside a transaction (savepoints)."""
    table = sql.Identifier(schema, name)
    # hash_record_extended skips the text output (2x faster) but needs a hash opclass for every
    # column type (point, json have none): those tables fall back to hashing the row's text.
    for candidate in [method] if method else ["record", "text"]:
        expr = "hash_record_extended(t.*, 0)" if candidate == "record" else "hashtextextended(t::text, 0)"
        query = sql.SQL("SELECT count(*), coalesce(sum({}), 0)::text FROM {} t").format(sql.SQL(expr), table)
        try:
            with conn.transaction():
                rows, total = conn.execute(query).fetchone()
            return TableManifest(rows=rows, checksum=f"{candidate}:{total}")
        except psycopg.errors.UndefinedFunction:
            if method:
                raise
    raise AssertionError("unreachable")


def _manifest(conn: psycopg.Connection, methods: dict[str, str] | None = None) -> dict[str, TableManifest]:
    conn.execute(_PINNED)
    methods = methods or {}
    return {
        _key(s, n): _checksum_table(conn, s, n, (methods.get(_key(s, n)) or "").split(":")[0] or None)
        for s, n in _tables(conn)
    }


def _snapshot_connection(database: PostgresDatabase) -> psycopg.Connection:
    conn = database.connect(autocommit=False)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    return conn


def table_checksums(database: PostgresDatabase) -> dict[str, str]:
    """``schema.table -> '<rows>:<checksum>'`` for every user table, in one consistent snapshot."""
    with _snapshot_connection(database) as conn:
        return {k: f"{m.rows}:{m.checksum}" for k, m in _manifest(conn).items()}


def _replication_lag(database: PostgresDatabase) -> tuple[float | None, str]:
    """Seconds the replica is behind (0 when it replayed everything the primary had written)."""
    with database.connect() as primary:
        primary_lsn = primary.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    with database.connect(replica=True) as replica:
        in_recovery, caught_up, lag = replica.execute(
            "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn() >= %s::pg_lsn,"
            " extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8",
            (primary_lsn,),
        ).fetchone()
    if not in_recovery:
        return None, "the replica is not in recovery: it is not replicating"
    if caught_up:
        return 0.0, f"replayed up to the primary's {primary_lsn}"
    if lag is None:
        return None, "the replica has not replayed any transaction yet"
    return lag, f"last replayed transaction {lag:.1f}s ago"


def _storage_files(store: BackupStorage) -> dict[str, dict]:
    """Backups in storage by name: {'ts': unix time, 'files': [...], 'complete': dump+manifest}."""
    found: dict[str, dict] = {}
    for f in store.list():
        match = _NAME.match(f.name)
        if not match:
            continue  # never touch files this module did not write
        entry = found.setdefault(match.group(1), {"ts": int(match.group(2)), "files": [], "parts": set()})
        entry["files"].append(f.name)
        if not match.group(4):
            entry["parts"].add(match.group(3))
    for entry in found.values():
        entry["complete"] = entry.pop("parts") == {"dump", "manifest.json"}
    return found


def prune_backups(database: PostgresDatabase, keep: set[str] = frozenset()) -> list[str]:
    """Delete backups older than the retention, judged by the unix time in their name.

    Never the ones in ``keep`` and never the newest complete backup, whatever its age.
    """
    store = database.backups()
    found = _storage_files(store)
    complete = [n for n, e in found.items() if e["complete"]]
    newest = max(complete, key=lambda n: (found[n]["ts"], n), default=None)
    cutoff = (utcnow() - timedelta(hours=database.retention_hours)).timestamp()
    pruned = []
    for name, entry in sorted(found.items()):
        if name in keep or name == newest or entry["ts"] >= cutoff:
            continue
        for file in entry["files"]:
            store.delete(file)
        pruned.append(name)
    return pruned


def _run(argv: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    # Argument lists only; the password travels in env (PGPASSWORD), never in argv.
    return subprocess.Popen(argv, env=env, **kwargs)


def _failure(tool: str, code: int, stderr: str) -> Exception:
    tail = stderr.strip()[-1500:]
    message = f"{tool} exited {code}: {tail}"
    transient = re.search(r"lock timeout|could not connect|connection to server|timeout expired", stderr, re.I)
    return TemporaryError(message) if transient else PermanentError(message)


def _retry_temporary(task, task_run, state) -> bool:
    try:
        state.result()
    except TemporaryError:
        return True
    except Exception:
        return False
    return False


# --- preflight -------------------------------------------------------------------


@task
def check_database(database: PostgresDatabase) -> GateReport:
    """Preflight: primary and replica answer, schema version, pool use, replication lag, backup space."""
    logger = get_run_logger()
    report = GateReport(stage="preflight: database")
    add = lambda name, ok, detail: report.checks.append(  # noqa: E731
        CheckResult(name=name, verdict=Verdict.PASS if ok else Verdict.FAIL, detail=detail))
    try:
        with database.connect() as conn:
            logger.info("SELECT 1 on primary %s:%s/%s", database.host, database.port, database.dbname)
            conn.execute("SELECT 1")
            recovery, size, server = conn.execute(
                "SELECT pg_is_in_recovery(), pg_database_size(current_database()), current_setting('server_version')"
            ).fetchone()
            add("database primary", not recovery, f"PostgreSQL {server}" + (", but read-only (in recovery)" if recovery else ""))
            add("schema version", True, f"version {_schema_version(conn)}")
            in_use = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()").fetchone()[0]
            limit = 0.8 * database.pool_max
            add("database connections", in_use < limit, f"{in_use} in use, pool {database.pool_max} (must be < {limit:g})")
            major = conn.info.server_version // 10000
    except psycopg.Error as exc:
        add("database primary", False, f"{type(exc).__name__}: {str(exc).strip()}")
        return report
    try:
        database.pg_tool("pg_dump", major)
        database.pg_tool("pg_restore", major)
        database.pg_tool("psql", major)
        add("backup tools", True, f"pg_dump/pg_restore/psql for PostgreSQL {major}")
    except FileNotFoundError as exc:
        add("backup tools", False, str(exc))
    if database.replica_host:
        try:
            logger.info("replication lag on replica %s:%s", database.replica_host, database.replica_port)
            lag, detail = _replication_lag(database)
            add("database replica", lag is not None, detail if lag is None else "hot standby answers")
            if lag is not None:
                add("replication lag", lag <= database.max_replication_lag_s,
                    f"{lag:.1f}s (max {database.max_replication_lag_s:g}s): {detail}")
        except psycopg.Error as exc:
            add("database replica", False, f"{type(exc).__name__}: {str(exc).strip()}")
    free = database.backups().free_bytes()
    need = int(size * database.backup_size_ratio)
    if free is None:
        report.checks.append(CheckResult(name="backup space", verdict=Verdict.INCONCLUSIVE,
                                         detail=f"{database.backups().describe()} cannot report free space"))
    else:
        add("backup space", free >= need, f"{free / 2**20:,.0f} MiB free, backup needs about {need / 2**20:,.0f} MiB "
            f"(database {size / 2**20:,.0f} MiB x {database.backup_size_ratio:g})")
    return report


# --- backup ----------------------------------------------------------------------


def _free_name(store: BackupStorage, now: datetime) -> str:
    taken = set(_storage_files(store))
    name, n = f"{PREFIX}{int(now.timestamp())}", 1
    while name in taken:  # two backups within one second
        n += 1
        name = f"{PREFIX}{int(now.timestamp())}-{n}"
    return name


def _pump(src, dst, counter: list[int]) -> None:
    with dst:
        while chunk := src.read(BackupStorage.CHUNK):
            dst.write(chunk)
            counter[0] += len(chunk)


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10, retry_condition_fn=_retry_temporary)
def backup_database(database: PostgresDatabase, run_label: str = "") -> BackupResult:
    """``pg_dump -Fc`` as ``pre-deployment-<unix time>`` plus a manifest taken in the dump's own snapshot."""
    logger = get_run_logger()
    store = database.backups()
    created = utcnow()
    started = time.monotonic()
    name = _free_name(store, created)
    dump_file, manifest_file = f"{name}.dump", f"{name}.manifest.json"
    partial = dump_file + ".partial"
    with _snapshot_connection(database) as conn, tempfile.TemporaryFile() as stderr:
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        major = conn.info.server_version // 10000
        argv = [database.pg_tool("pg_dump", major), "--format=custom", "--no-password",
                f"--snapshot={snapshot}", f"--lock-wait-timeout={database.lock_timeout_ms}"]
        local = store.local_path(partial)
        counter, pump = [0], None
        logger.info("pg_dump %s (snapshot %s) -> %s/%s", database.dbname, snapshot, store.describe(), dump_file)
        if local is not None:
            proc = _run([*argv, f"--file={local}"], database.tool_env(), stdout=subprocess.DEVNULL, stderr=stderr)
        else:
            proc = _run(argv, database.tool_env(), stdout=subprocess.PIPE, stderr=stderr)
            pump = threading.Thread(target=_pump, args=(proc.stdout, store.open_write(partial), counter), daemon=True)
            pump.start()
        try:
            # The manifest is read while pg_dump runs, in the snapshot pg_dump imported: same rows.
            version, fingerprint = _schema_version(conn), _schema_fingerprint(conn)
            tables = _manifest(conn)
            server = conn.execute("SELECT current_setting('server_version')").fetchone()[0]
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if pump:
                pump.join()
        if code != 0:
            stderr.seek(0)
            raise _failure("pg_dump", code, stderr.read().decode(errors="replace"))
    store.rename(partial, dump_file)
    result = BackupResult(
        name=name, dump_file=dump_file, manifest_file=manifest_file, storage=store.describe(), created_at=created,
        run_label=run_label, size_bytes=local.with_name(dump_file).stat().st_size if local else counter[0],
        duration_s=round(time.monotonic() - started, 3), schema_version=version, schema_fingerprint=fingerprint,
        server_version=server, tables=tables,
    )
    store.write_bytes(manifest_file, result.model_dump_json(indent=2).encode())
    result.pruned = prune_backups(database, keep={name})
    logger.info("backup %s: %.1f MiB in %.1fs, schema version %d, %d tables; pruned %s", name,
                result.size_bytes / 2**20, result.duration_s, version, len(tables), result.pruned or "nothing")
    rows = "\n".join(f"| `{t}` | {m.rows:,} | `{m.checksum}` |" for t, m in tables.items())
    create_markdown_artifact(key="database-backup", description=f"Backup {name}", markdown=(
        f"# Database backup `{name}`\n\n{run_label}\n\n| | |\n|---|---|\n| Database | `{database.dbname}` |\n"
        f"| Stored | {result.storage} `{dump_file}` + `{manifest_file}` |\n| Size | {result.size_bytes / 2**20:,.1f} MiB |\n"
        f"| Duration | {result.duration_s:.1f}s |\n| Schema version | {version} |\n| Server | PostgreSQL {server} |\n"
        f"| Pruned (older than {database.retention_hours:g} h) | {', '.join(result.pruned) or 'none'} |\n\n"
        f"## Tables (exact, in the dump's snapshot)\n\n| Table | Rows | Checksum |\n|---|---:|---|\n{rows}\n"))
    return result
