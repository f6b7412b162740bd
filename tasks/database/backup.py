"""The staging database: preflight checks, pre-deployment backup, schema verification, integrity.

A backup is ``pg_dump -Fc`` taken in a snapshot this module exports and keeps open, so the
manifest it writes beside the dump (exact row counts and a checksum per table, the schema
version and a schema fingerprint) describes exactly the rows in the dump, and a restore
(tasks/database/restore.py) can prove itself against it.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import psycopg
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from blocks.database import PostgresDatabase
from tasks.database import tools as pg_tools
from tasks.database.storage import copy_stream, discard, free_name, human_size, prune_backups, storage_files
from tasks.core.errors import PermanentError, TemporaryError, one_line, retry_if_temporary
from tasks.core.models import CheckResult, GateReport, Verdict, utcnow
from tasks.database.manifest import (TableManifest, replication_lag, schema_fingerprint, schema_version,
                               snapshot_connection, table_manifests)


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
            add("schema version", True, f"version {schema_version(conn)}")
            in_use = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()").fetchone()[0]
            limit = 0.8 * database.pool_max
            add("database connections", in_use < limit, f"{in_use} in use, pool {database.pool_max} (must be < {limit:g})")
            major = conn.info.server_version // 10000
    except psycopg.Error as exc:
        add("database primary", False, f"{type(exc).__name__}: {one_line(exc)}")
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
            lag, detail = replication_lag(database)
            add("database replica", lag is not None, detail if lag is None else "hot standby answers")
            if lag is not None:
                add("replication lag", lag <= database.max_replication_lag_s,
                    f"{lag:.1f}s (max {database.max_replication_lag_s:g}s): {detail}")
        except psycopg.Error as exc:
            add("database replica", False, f"{type(exc).__name__}: {one_line(exc)}")
    free = database.backups().free_bytes()
    need = int(size * database.backup_size_ratio)
    if free is None:
        report.checks.append(CheckResult(name="backup space", verdict=Verdict.INCONCLUSIVE,
                                         detail=f"{database.backups().describe()} cannot report free space"))
    else:
        add("backup space", free >= need, f"{human_size(free)} free, a backup needs about {human_size(need)} "
            f"(database {human_size(size)} x {database.backup_size_ratio:g})")
    return report


# --- backup ----------------------------------------------------------------------


@contextmanager
def _unreachable_is_temporary(database: PostgresDatabase, doing: str) -> Iterator[None]:
    try:
        yield
    except psycopg.OperationalError as exc:  # connection refused or lost: the server may come back
        raise TemporaryError(f"database {database.host}:{database.port} unreachable while {doing}: "
                             f"{one_line(exc)}") from exc


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10, retry_condition_fn=retry_if_temporary)
def backup_database(database: PostgresDatabase, run_label: str = "", checksums: bool = True) -> BackupResult:
    """``pg_dump -Fc`` as ``pre-deployment-<unix time>`` plus a manifest taken in the dump's own snapshot.

    The manifest holds exact row counts and, unless ``checksums=False``, a content checksum per
    table (one more scan of every table, concurrent with pg_dump: see benchmarks/backup_restore.py).
    """
    logger = get_run_logger()
    store = database.backups()
    created = utcnow()
    started = time.monotonic()
    name = free_name(store, created)
    dump_file, manifest_file = f"{name}.dump", f"{name}.manifest.json"
    partial = dump_file + ".partial"
    with _unreachable_is_temporary(database, "taking the backup"), snapshot_connection(database) as conn, \
            tempfile.TemporaryFile() as stderr:
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        major = conn.info.server_version // 10000
        argv = [database.pg_tool("pg_dump", major), "--format=custom", "--no-password",
                f"--snapshot={snapshot}", f"--lock-wait-timeout={database.lock_timeout_ms}"]
        local = store.local_path(partial)
        counter, pump = [0, None], None
        logger.info("pg_dump %s (snapshot %s) -> %s/%s", database.dbname, snapshot, store.describe(), dump_file)
        if local is not None:
            proc = pg_tools.run([*argv, f"--file={local}"], database.tool_env(),
                                stdout=subprocess.DEVNULL, stderr=stderr)
        else:
            proc = pg_tools.run(argv, database.tool_env(), stdout=subprocess.PIPE, stderr=stderr)
            pump = threading.Thread(target=copy_stream, args=(proc.stdout, store.open_write(partial), counter),
                                    daemon=True)
            pump.start()
        try:
            # The manifest is read while pg_dump runs, in the snapshot pg_dump imported: same rows.
            version, fingerprint = schema_version(conn), schema_fingerprint(conn)
            tables = table_manifests(conn, default=None if checksums else "count")
            server = conn.execute("SELECT current_setting('server_version')").fetchone()[0]
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            discard(store, partial)
            raise
        finally:
            if pump:
                pump.join()
        if counter[1] is not None:
            discard(store, partial)
            raise TemporaryError(f"writing {partial} to {store.describe()} failed: {counter[1]}")
        if code != 0:
            stderr.seek(0)
            discard(store, partial)
            raise pg_tools.failure("pg_dump", code, stderr.read().decode(errors="replace"))
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
                human_size(result.size_bytes), result.duration_s, version, len(tables), result.pruned or "nothing")
    rows = "\n".join(f"| `{t}` | {m.rows:,} | `{m.checksum}` |" for t, m in tables.items())
    create_markdown_artifact(key="database-backup", description=f"Backup {name}", markdown=(
        f"# Database backup `{name}`\n\n{run_label}\n\n| | |\n|---|---|\n| Database | `{database.dbname}` |\n"
        f"| Stored | {result.storage} `{dump_file}` + `{manifest_file}` |\n| Size | {human_size(result.size_bytes)} |\n"
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
        current = schema_version(conn)
        applied = [] if current == 0 and conn.execute("SELECT to_regclass('schema_migrations') IS NULL").fetchone()[0] \
            else [AppliedMigration(version=v, name=n, applied_at=a) for v, n, a in conn.execute(
                "SELECT version, name, applied_at FROM schema_migrations ORDER BY version")]
    versions = {m.version for m in applied}
    missing = [v for v in range(1, expected_version + 1) if v not in versions]
    unknown = sorted(v for v in versions if v > expected_version)
    # A database ahead of the image (an older release redeployed after a newer one migrated)
    # passes: migrations are forward-only and additive, so every one the image knows is there.
    ok = not missing and current >= expected_version
    if ok and unknown:
        detail = (f"schema at version {current}, ahead of the image's {expected_version}: "
                  f"{unknown} applied by a newer release; all of the image's migrations are there")
    elif ok:
        detail = f"schema at version {current} as expected"
    else:
        detail = (f"schema at version {current}, image expects {expected_version}"
                  + (f"; missing {missing}" if missing else "") + (f"; unknown to the image {unknown}" if unknown else ""))
    result = MigrationResult(expected_version=expected_version, current_version=current, applied=applied,
                             missing=missing, unknown=unknown, verdict=Verdict.PASS if ok else Verdict.FAIL, detail=detail)
    logger.info("verify_schema: %s", detail)
    create_table_artifact(key="schema-migrations", description=f"{detail} ({database.dbname})", table=[
        {"version": m.version, "name": m.name, "applied_at": m.applied_at.isoformat() if m.applied_at else "",
         "status": "unknown to image" if m.version in unknown else "applied"} for m in applied
    ] + [{"version": v, "name": "", "applied_at": "", "status": "MISSING"} for v in missing])
    return result


# --- after a good deploy ----------------------------------------------------------------


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
            current = schema_version(conn)
            applied = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")} if current else set()
            major = conn.info.server_version // 10000
        gaps = sorted(set(range(1, current + 1)) - applied)
        want = expected_version if expected_version is not None else current
        # At or ahead of what the release expects (see verify_schema), with no gaps.
        add("migrations complete", verdict(current >= want and not gaps),
            f"version {current}" + (f", expected {want}" if current != want else "") + (f", gaps {gaps}" if gaps else ""))
    except psycopg.Error as exc:
        add("migrations complete", Verdict.FAIL, f"{type(exc).__name__}: {one_line(exc)}")
        return report
    if database.replica_host:
        try:
            logger.info("replication lag and schema on replica %s:%s", database.replica_host, database.replica_port)
            lag, detail = replication_lag(database)
            add("replication lag", verdict(lag is not None and lag <= database.max_replication_lag_s),
                detail if lag is None else f"{lag:.1f}s (max {database.max_replication_lag_s:g}s): {detail}")
            with database.connect(replica=True) as replica:
                seen = schema_version(replica)
            add("replica consistent", verdict(seen == current), f"replica at schema version {seen}, primary {current}")
        except psycopg.Error as exc:
            add("replication lag", Verdict.FAIL, f"{type(exc).__name__}: {one_line(exc)}")
    store = database.backups()
    try:
        found = storage_files(store)
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
            listed = pg_tools.archive_tables(database, store, manifest.dump_file, major)
            problems = ([f"size {size} != manifest {manifest.size_bytes}"] if size != manifest.size_bytes else []) + (
                [f"tables missing from archive: {sorted(set(manifest.tables) - listed)}"]
                if set(manifest.tables) - listed else [])
            age_h = (utcnow() - manifest.created_at).total_seconds() / 3600
            add("backups succeeding", verdict(not problems), "; ".join(problems) or (
                f"newest {newest}: {human_size(manifest.size_bytes)}, {age_h:.1f} h old, "
                f"{len(listed)} tables listed by pg_restore"))
    except (OSError, ValueError, NotImplementedError, PermanentError, TemporaryError) as exc:
        add("backups succeeding", Verdict.FAIL, f"{type(exc).__name__}: {exc}")
    create_table_artifact(key="data-integrity", description=report.summary(),
                          table=[c.model_dump(include={"name", "verdict", "detail"}) for c in report.checks])
    return report
