"""The staging database: preflight checks, pre-deployment backup, schema verification, restore.

A backup is ``pg_dump -Fc`` taken in a snapshot this module exports and keeps open, so the
manifest it writes beside the dump (exact row counts and a checksum per table, the schema
version and a schema fingerprint) describes exactly the rows in the dump. A restore drops
what the restoring role owns and replays the dump in ONE transaction, then checks the
database against that manifest: either the database equals the backup, or nothing changed.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timedelta
from enum import StrEnum

import psycopg
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from psycopg import sql
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


_FINGERPRINT = f"""
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
    ) s(line)"""
# User tables holding rows (partitions, not their parents, so nothing is counted twice).
_TABLES = f"""
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND {_SYSTEM_SCHEMAS}
     AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')"""


def _schema_fingerprint(conn: psycopg.Connection) -> str:
    """md5 of the columns, indexes and constraints of every user table: catches unversioned changes too."""
    return conn.execute(_FINGERPRINT).fetchone()[0]


def _tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return conn.execute(f"SELECT n.nspname, c.relname {_TABLES} ORDER BY 1, 2").fetchall()


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    raise AssertionError("unreachable")


def _key(schema: str, name: str) -> str:
    return f"{schema}.{name}"


# "count" manifests hold exact row counts only (backup_database(checksums=False)): cheaper, weaker.
_HASH = {"record": "coalesce(sum(hash_record_extended(t.*, 0)), 0)",
         "text": "coalesce(sum(hashtextextended(t::text, 0)), 0)", "count": "0"}


def _checksum_table(conn: psycopg.Connection, schema: str, name: str, method: str | None = None) -> TableManifest:
    """Exact count and a checksum in one scan. Must run inside a transaction (savepoints)."""
    table = sql.Identifier(schema, name)
    # hash_record_extended skips the text output (2x faster) but needs a hash opclass for every
    # column type (point, json have none): those tables fall back to hashing the row's text.
    for candidate in [method] if method else ["record", "text"]:
        query = sql.SQL("SELECT count(*), ({})::text FROM {} t").format(sql.SQL(_HASH[candidate]), table)
        try:
            with conn.transaction():
                rows, total = conn.execute(query).fetchone()
            return TableManifest(rows=rows, checksum=f"{candidate}:{total}")
        except psycopg.errors.UndefinedFunction:
            if method:
                raise
    raise AssertionError("unreachable")


def _manifest(conn: psycopg.Connection, methods: dict[str, str] | None = None, default: str | None = None
              ) -> dict[str, TableManifest]:
    conn.execute(_PINNED)
    methods = methods or {}
    return {
        _key(s, n): _checksum_table(conn, s, n, (methods.get(_key(s, n)) or "").split(":")[0] or default)
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
    transient = re.search(r"lock timeout|could not connect|connection to server|timeout expired", stderr, re.IGNORECASE)
    return TemporaryError(message) if transient else PermanentError(message)


def _retry_temporary(task, task_run, state) -> bool:
    try:
        state.result()
    except TemporaryError:
        return True
    except Exception:  # noqa: BLE001 - any other failure is final
        return False
    return False


# --- preflight -------------------------------------------------------------------


@task
def check_database(database: PostgresDatabase) -> GateReport:
    """Preflight: primary and replica answer, schema version, pool use, replication lag, backup space."""
    logger = get_run_logger()
    report = GateReport(stage="preflight: database")
    add = lambda name, ok, detail: report.checks.append(
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
        add("backup space", free >= need, f"{_size(free)} free, a backup needs about {_size(need)} "
            f"(database {_size(size)} x {database.backup_size_ratio:g})")
    return report


# --- backup ----------------------------------------------------------------------


def _free_name(store: BackupStorage, now: datetime) -> str:
    taken = set(_storage_files(store))
    name, n = f"{PREFIX}{int(now.timestamp())}", 1
    while name in taken:  # two backups within one second
        n += 1
        name = f"{PREFIX}{int(now.timestamp())}-{n}"
    return name


def _discard(store: BackupStorage, name: str) -> None:
    try:
        store.delete(name)
    except (OSError, NotImplementedError):
        pass


def _pump(src, dst, counter: list) -> None:
    """Copy src to dst in chunks; counter[0] gets the bytes copied, counter[1] an error, if any."""
    try:
        with dst:
            while chunk := src.read(BackupStorage.CHUNK):
                dst.write(chunk)
                counter[0] += len(chunk)
    except Exception as exc:  # recorded for the caller's thread, then re-raised
        counter[1:] = [exc]
        raise


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10, retry_condition_fn=_retry_temporary)
def backup_database(database: PostgresDatabase, run_label: str = "", checksums: bool = True) -> BackupResult:
    """``pg_dump -Fc`` as ``pre-deployment-<unix time>`` plus a manifest taken in the dump's own snapshot.

    The manifest holds exact row counts and, unless ``checksums=False``, a content checksum per
    table (one more scan of every table, concurrent with pg_dump: see benchmarks/backup_restore.py).
    """
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
        counter, pump = [0, None], None
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
            tables = _manifest(conn, default=None if checksums else "count")
            server = conn.execute("SELECT current_setting('server_version')").fetchone()[0]
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            _discard(store, partial)
            raise
        finally:
            if pump:
                pump.join()
        if counter[1] is not None:
            _discard(store, partial)
            raise TemporaryError(f"writing {partial} to {store.describe()} failed: {counter[1]}")
        if code != 0:
            stderr.seek(0)
            _discard(store, partial)
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
    logger.info("backup %s: %s in %.1fs, schema version %d, %d tables; pruned %s", name,
                _size(result.size_bytes), result.duration_s, version, len(tables), result.pruned or "nothing")
    rows = "\n".join(f"| `{t}` | {m.rows:,} | `{m.checksum}` |" for t, m in tables.items())
    create_markdown_artifact(key="database-backup", description=f"Backup {name}", markdown=(
        f"# Database backup `{name}`\n\n{run_label}\n\n| | |\n|---|---|\n| Database | `{database.dbname}` |\n"
        f"| Stored | {result.storage} `{dump_file}` + `{manifest_file}` |\n| Size | {_size(result.size_bytes)} |\n"
        f"| Duration | {result.duration_s:.1f}s |\n| Schema version | {version} |\n| Server | PostgreSQL {server} |\n"
        f"| Pruned (older than {database.retention_hours:g} h) | {', '.join(result.pruned) or 'none'} |\n\n"
        f"## Tables (exact, in the dump's snapshot)\n\n| Table | Rows | Checksum |\n|---|---:|---|\n{rows}\n"))
    return result


# --- migrations --------------------------------------------------------------------


@task
def verify_schema(database: PostgresDatabase, expected_version: int) -> MigrationResult:
    """After ``migrate --direction up``: the schema version is the one the image expects, nothing missing."""
    logger = get_run_logger()
    logger.info("reading schema_migrations on %s:%s/%s", database.host, database.port, database.dbname)
    with database.connect() as conn:
        current = _schema_version(conn)
        applied = [] if current == 0 and conn.execute("SELECT to_regclass('schema_migrations') IS NULL").fetchone()[0] \
            else [AppliedMigration(version=v, name=n, applied_at=a) for v, n, a in conn.execute(
                "SELECT version, name, applied_at FROM schema_migrations ORDER BY version")]
    versions = {m.version for m in applied}
    missing = [v for v in range(1, expected_version + 1) if v not in versions]
    unknown = sorted(v for v in versions if v > expected_version)
    ok = current == expected_version and not missing
    detail = (f"schema at version {current} as expected" if ok else
              f"schema at version {current}, image expects {expected_version}"
              + (f"; missing {missing}" if missing else "") + (f"; unknown to the image {unknown}" if unknown else ""))
    result = MigrationResult(expected_version=expected_version, current_version=current, applied=applied,
                             missing=missing, unknown=unknown, verdict=Verdict.PASS if ok else Verdict.FAIL, detail=detail)
    logger.info("verify_schema: %s", detail)
    create_table_artifact(key="schema-migrations", description=f"{detail} ({database.dbname})", table=[
        {"version": m.version, "name": m.name, "applied_at": m.applied_at.isoformat() if m.applied_at else "",
         "status": "unknown to image" if m.version in unknown else "applied"} for m in applied
    ] + [{"version": v, "name": "", "applied_at": "", "status": "MISSING"} for v in missing])
    return result


# --- restore -----------------------------------------------------------------------

# Runs first inside the restore's transaction: drop what the restoring role owns in the app's
# schemas, including objects created after the backup, which `pg_restore --clean` would leave
# behind (and whose foreign keys would then block it). Schemas are recreated by the dump;
# `public` is kept because PostgreSQL 15 dumps do not create it.
_DROP_OWNED_OBJECTS = f"""DO $restore$
DECLARE r record;
BEGIN
  FOR r IN SELECT n.nspname FROM pg_namespace n WHERE n.nspowner = current_user::regrole
             AND n.nspname <> 'public' AND {_SYSTEM_SCHEMAS} LOOP
    EXECUTE format('DROP SCHEMA %I CASCADE', r.nspname);
  END LOOP;
  FOR r IN SELECT c.oid::regclass AS obj, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relowner = current_user::regrole AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {_SYSTEM_SCHEMAS}
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('e', 'a', 'i')) LOOP
    -- an earlier CASCADE may have dropped it already
    IF to_regclass(r.obj::text) IS NOT NULL THEN
      EXECUTE format('DROP %s IF EXISTS %s CASCADE', CASE r.relkind WHEN 'v' THEN 'VIEW'
        WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, r.obj);
    END IF;
  END LOOP;
  FOR r IN SELECT p.oid::regprocedure AS obj, p.prokind FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE p.proowner = current_user::regrole AND {_SYSTEM_SCHEMAS}
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e') LOOP
    EXECUTE format('DROP %s IF EXISTS %s CASCADE', CASE r.prokind WHEN 'p' THEN 'PROCEDURE'
      WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END, r.obj);
  END LOOP;
  FOR r IN SELECT t.oid::regtype AS obj FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
            WHERE t.typowner = current_user::regrole AND {_SYSTEM_SCHEMAS} AND t.typtype IN ('e', 'd', 'r', 'c')
              AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = t.oid AND d.deptype = 'e') LOOP
    EXECUTE format('DROP TYPE IF EXISTS %s CASCADE', r.obj);
  END LOOP;
END $restore$;"""


def _discards(conn: psycopg.Connection, backup: BackupResult) -> list[TableDiscard]:
    now = {}
    for schema, name in _tables(conn):
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))
        now[_key(schema, name)] = conn.execute(query).fetchone()[0]
    return [TableDiscard(table=t, rows_now=now.get(t), rows_in_backup=backup.tables[t].rows if t in backup.tables else None)
            for t in sorted(set(now) | set(backup.tables))]


def _verify_sql(backup: BackupResult) -> str:
    """Checks run at the end of the restore's transaction: any difference raises, and nothing is committed.

    This also stops a truncated pg_restore stream from ever being committed.
    """
    def check(label: str, got_query: str, want: str) -> str:
        return (f"SELECT pg_temp.restore_check({_lit(label)}, got, {_lit(want)}) FROM ({got_query}) g(got);")

    lines = [
        "RESET search_path;",  # the dump's script emptied it
        _PINNED + ";",
        ("CREATE FUNCTION pg_temp.restore_check(what text, got text, want text) RETURNS void"
         " LANGUAGE plpgsql PARALLEL RESTRICTED AS $f$ BEGIN IF got IS DISTINCT FROM want THEN"
         " RAISE EXCEPTION 'restore verification: % is %, the backup has %', what, got, want; END IF; END $f$;"),
        check("the schema version", "SELECT coalesce(max(version), 0)::text FROM schema_migrations", str(backup.schema_version))
        if backup.schema_version else check("schema_migrations", "SELECT to_regclass('schema_migrations')::text", None),
        check("the schema fingerprint", _FINGERPRINT, backup.schema_fingerprint),
        check("the number of tables", f"SELECT count(*)::text {_TABLES}", str(len(backup.tables))),
    ]
    for table, manifest in sorted(backup.tables.items()):
        schema, name = table.split(".", 1)
        ident = f"{_ident(schema)}.{_ident(name)}"
        method = manifest.checksum.split(":")[0]
        lines.append(check(table, f"SELECT count(*) || ':{method}:' || {_HASH[method]} FROM {ident} t",
                           f"{manifest.rows}:{manifest.checksum}"))
    return "\n".join(lines) + "\n"


def _lit(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_temporary)
def restore_database(database: PostgresDatabase, backup: BackupResult) -> RestoreResult:
    """Put the database back to ``backup``, atomically, and prove it: counts, checksums, schema.

    Restores into the same database (the role owns its objects; a fresh database plus rename
    would need CREATEDB and every app connection gone). Everything runs in one transaction:
    a failure leaves the database as it was. Raises PermanentError if verification fails.
    """
    logger = get_run_logger()
    store = database.backups()
    started = time.monotonic()
    with _snapshot_connection(database) as conn:
        before, discarded = _schema_version(conn), _discards(conn, backup)
        major = conn.info.server_version // 10000
    lost = sum(d.rows_discarded for d in discarded)
    logger.info("restore %s: schema %d -> %d, discarding %d rows written since the backup",
                backup.name, before, backup.schema_version, lost)
    local = store.local_path(backup.dump_file)
    env = database.tool_env()
    # Index builds after the data load are most of a restore's time; give them memory to sort in.
    env["PGOPTIONS"] += f" -c maintenance_work_mem={database.restore_maintenance_work_mem_mb}MB"
    restore_argv = [database.pg_tool("pg_restore", major), "--no-owner", "--exit-on-error", "--file=-"]
    psql_argv = [database.pg_tool("psql", major), "--no-psqlrc", "--quiet", "--no-password", "--single-transaction",
                 "--set=ON_ERROR_STOP=1", "--command", _DROP_OWNED_OBJECTS, "--file=-"]
    logger.info("pg_restore %s/%s | psql --single-transaction %s", store.describe(), backup.dump_file, database.dbname)
    failure = None
    with tempfile.TemporaryFile() as err1, tempfile.TemporaryFile() as err2, \
            tempfile.NamedTemporaryFile("w", prefix="restore-verify-", suffix=".sql") as verify:
        verify.write(_verify_sql(backup))
        verify.flush()
        source = None if local else store.open_read(backup.dump_file)
        dump = _run([*restore_argv, str(local)] if local else restore_argv, env,
                    stdin=subprocess.DEVNULL if local else subprocess.PIPE, stdout=subprocess.PIPE, stderr=err1)
        pump = None
        if source is not None:
            pump = threading.Thread(target=_pump_quietly, args=(source, dump.stdin), daemon=True)
            pump.start()
        apply = _run([*psql_argv, f"--file={verify.name}"], env, stdin=dump.stdout, stdout=subprocess.DEVNULL, stderr=err2)
        dump.stdout.close()  # psql owns the pipe now; pg_restore sees EPIPE if psql dies
        apply_code, dump_code = apply.wait(), dump.wait()
        if pump:
            pump.join()
        if apply_code != 0:
            # psql rolled back. A broken archive is the root cause when pg_restore failed too.
            tool, code, err = ("pg_restore", dump_code, err1) if dump_code != 0 else ("psql", apply_code, err2)
            err.seek(0)
            failure = _failure(tool, code, err.read().decode(errors="replace"))
        elif dump_code != 0:
            logger.warning("pg_restore exited %d, but the restored database matched the backup", dump_code)
    with database.connect() as conn:
        after = _schema_version(conn)
    result = RestoreResult(backup=backup.name, duration_s=round(time.monotonic() - started, 3),
                           schema_version_before=before, schema_version_after=after, discarded=discarded,
                           rows_discarded=lost if failure is None else 0, verified=failure is None,
                           mismatches=[str(failure)] if failure else [])
    logger.info("restore %s: %s in %.1fs", backup.name, "verified" if result.verified else "FAILED", result.duration_s)
    lines = "\n".join(
        f"| `{d.table}` | {'-' if d.rows_now is None else f'{d.rows_now:,}'} | "
        f"{'-' if d.rows_in_backup is None else f'{d.rows_in_backup:,}'} | {d.rows_discarded:,} |"
        + (" not in backup: dropped |" if d.rows_in_backup is None else " recreated |" if d.rows_now is None else " |")
        for d in discarded)
    headline = (
        f"**Restored and verified** (schema version {before} -> {after}, every table's rows and checksum equal the "
        f"backup's) in {result.duration_s:.1f}s.\n\n**{lost:,} rows written since the backup "
        f"({backup.created_at:%Y-%m-%d %H:%M:%S} UTC) were discarded**" if failure is None else
        f"**Restore FAILED; the transaction was rolled back and the database is unchanged** "
        f"(schema version {after}).\n\n```\n{failure}\n```\n\nThe restore would have discarded {lost:,} rows")
    create_markdown_artifact(key="database-restore", description=f"Restore of {backup.name}", markdown=(
        f"# Database restore from `{backup.name}`\n\n{headline} (net rows added per table; rows updated in place "
        f"are not counted).\n\n| Table | Rows before restore | Rows in backup | Discarded | |\n"
        f"|---|---:|---:|---:|---|\n{lines}\n"))
    if failure is not None:
        failure.stage, failure.result = "restore", result
        raise failure
    return result


def _pump_quietly(src, dst) -> None:
    try:
        _pump(src, dst, [0, None])
    except BrokenPipeError:
        pass  # pg_restore stopped reading (it failed); its exit code says why
    finally:
        src.close()


def schema_changed_since(database: PostgresDatabase, backup: BackupResult) -> bool:
    """Whether the schema differs from the backup's: another version, or other columns/indexes/constraints."""
    with database.connect() as conn:
        return _schema_version(conn) != backup.schema_version or _schema_fingerprint(conn) != backup.schema_fingerprint


def should_restore(policy: RestorePolicy | str, database: PostgresDatabase, backup: BackupResult | None) -> RestoreDecision:
    """The rollback's question: restore the pre-deployment backup, under ``policy``?"""
    policy = RestorePolicy(policy)
    if backup is None:
        return RestoreDecision(restore=False, reason="no pre-deployment backup was taken")
    if policy is RestorePolicy.NEVER:
        return RestoreDecision(restore=False, reason="policy: never restore")
    if policy is RestorePolicy.ALWAYS:
        return RestoreDecision(restore=True, reason="policy: always restore")
    changed = schema_changed_since(database, backup)
    return RestoreDecision(restore=changed, reason=f"schema {'changed' if changed else 'unchanged'} since {backup.name}")


# --- after a good deploy ----------------------------------------------------------------


def _archive_tables(database: PostgresDatabase, store: BackupStorage, dump_file: str, major: int) -> set[str]:
    """`pg_restore --list` of a stored dump: the tables whose data it holds (raises if it cannot parse)."""
    local = store.local_path(dump_file)
    argv = [database.pg_tool("pg_restore", major), "--list"]
    if local is not None:
        out = subprocess.run([*argv, str(local)], capture_output=True, text=True, timeout=300, check=False)
    else:
        # The table of contents is at the start of a custom-format archive: stream until pg_restore has it.
        with tempfile.TemporaryFile() as err:
            proc = _run(argv, database.tool_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
            pump = threading.Thread(target=_pump_quietly, args=(store.open_read(dump_file), proc.stdin), daemon=True)
            pump.start()
            stdout = proc.stdout.read()
            proc.stdout.close()
            code = proc.wait(timeout=300)
            pump.join()
            err.seek(0)
            out = subprocess.CompletedProcess(argv, code, stdout.decode(), err.read().decode(errors="replace"))
    if out.returncode != 0:
        raise _failure("pg_restore --list", out.returncode, out.stderr)
    # TOC lines look like: "3345; 0 16390 TABLE DATA public events architect"
    return {_key(m.group(1), m.group(2)) for m in re.finditer(r"^\d+; \d+ \d+ TABLE DATA (\S+) (\S+) ", out.stdout, re.MULTILINE)}


@task
def check_data_integrity(database: PostgresDatabase, backup: BackupResult | None = None,
                         expected_version: int | None = None) -> GateReport:
    """The guide's Data Integrity list: migrations complete, replication lag, backups succeeding, replica consistent."""
    logger = get_run_logger()
    report = GateReport(stage="data integrity")
    add = lambda name, verdict, detail: report.checks.append(CheckResult(name=name, verdict=verdict, detail=detail))
    verdict = lambda ok: Verdict.PASS if ok else Verdict.FAIL
    try:
        logger.info("schema_migrations on primary %s:%s/%s", database.host, database.port, database.dbname)
        with database.connect() as conn:
            current = _schema_version(conn)
            applied = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")} if current else set()
            major = conn.info.server_version // 10000
        gaps = sorted(set(range(1, current + 1)) - applied)
        want = expected_version if expected_version is not None else current
        add("migrations complete", verdict(current == want and not gaps),
            f"version {current}" + (f", expected {want}" if current != want else "") + (f", gaps {gaps}" if gaps else ""))
    except psycopg.Error as exc:
        add("migrations complete", Verdict.FAIL, f"{type(exc).__name__}: {str(exc).strip()}")
        return report
    if database.replica_host:
        try:
            logger.info("replication lag and schema on replica %s:%s", database.replica_host, database.replica_port)
            lag, detail = _replication_lag(database)
            add("replication lag", verdict(lag is not None and lag <= database.max_replication_lag_s),
                detail if lag is None else f"{lag:.1f}s (max {database.max_replication_lag_s:g}s): {detail}")
            with database.connect(replica=True) as replica:
                seen = _schema_version(replica)
            add("replica consistent", verdict(seen == current), f"replica at schema version {seen}, primary {current}")
        except psycopg.Error as exc:
            add("replication lag", Verdict.FAIL, f"{type(exc).__name__}: {str(exc).strip()}")
    store = database.backups()
    try:
        found = _storage_files(store)
        complete = sorted((n for n, e in found.items() if e["complete"]), key=lambda n: found[n]["ts"])
        if backup is not None:
            add("pre-deployment backup kept", verdict(backup.name in complete), f"{backup.name} in {store.describe()}")
        if not complete:
            add("backups succeeding", Verdict.FAIL, f"no complete backup in {store.describe()}")
        else:
            newest = complete[-1]
            manifest = BackupResult.model_validate_json(store.read_bytes(f"{newest}.manifest.json"))
            size = {f.name: f.size for f in store.list()}.get(manifest.dump_file)
            logger.info("pg_restore --list %s", manifest.dump_file)
            listed = _archive_tables(database, store, manifest.dump_file, major)
            problems = ([f"size {size} != manifest {manifest.size_bytes}"] if size != manifest.size_bytes else []) + (
                [f"tables missing from archive: {sorted(set(manifest.tables) - listed)}"]
                if set(manifest.tables) - listed else [])
            age_h = (utcnow() - manifest.created_at).total_seconds() / 3600
            add("backups succeeding", verdict(not problems), "; ".join(problems) or (
                f"newest {newest}: {_size(manifest.size_bytes)}, {age_h:.1f} h old, "
                f"{len(listed)} tables listed by pg_restore"))
    except (OSError, ValueError, NotImplementedError, PermanentError, TemporaryError) as exc:
        add("backups succeeding", Verdict.FAIL, f"{type(exc).__name__}: {exc}")
    create_table_artifact(key="data-integrity", description=report.summary(),
                          table=[c.model_dump(include={"name", "verdict", "detail"}) for c in report.checks])
    return report
