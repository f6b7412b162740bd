"""The guide's Data Integrity checks after a good deploy: ``check_data_integrity``.

Migrations complete without gaps, the replica caught up and at the primary's schema, and the
backups succeeding: the pre-deployment one kept, the newest one complete and readable by
``pg_restore --list``.
"""

from __future__ import annotations

import psycopg
from prefect import get_run_logger, task

from blocks.database import PostgresDatabase
from tasks.core.artifacts import table_artifact
from tasks.core.errors import PermanentError, TemporaryError, one_line
from tasks.core.models import CheckResult, GateReport, Verdict, utcnow
from tasks.core.stages import Stage
from tasks.database import tools as pg_tools
from tasks.database.backup import BackupResult
from tasks.database.manifest import major_version, replication_lag, schema_version
from tasks.database.storage import human_size, storage_files


@task
def check_data_integrity(
    database: PostgresDatabase, backup: BackupResult | None = None, expected_version: int | None = None
) -> GateReport:
    """The guide's Data Integrity list: migrations complete, replication lag, backups succeeding, replica consistent."""
    logger = get_run_logger()
    report = GateReport(stage=Stage.METRICS)

    def add(name: str, verdict: Verdict, detail: str) -> None:
        report.checks.append(CheckResult(name=name, verdict=verdict, detail=detail))

    def verdict(ok: bool) -> Verdict:
        return Verdict.PASS if ok else Verdict.FAIL

    try:
        logger.info("schema_migrations on primary %s:%s/%s", database.host, database.port, database.dbname)
        with database.connect() as conn:
            current = schema_version(conn)
            applied = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")} if current else set()
            major = major_version(conn)
        gaps = sorted(set(range(1, current + 1)) - applied)
        want = expected_version if expected_version is not None else current
        # At or ahead of what the release expects (see verify_schema), with no gaps.
        add(
            "migrations complete",
            verdict(current >= want and not gaps),
            f"version {current}"
            + (f", expected {want}" if current != want else "")
            + (f", gaps {gaps}" if gaps else ""),
        )
    except psycopg.Error as exc:
        add("migrations complete", Verdict.FAIL, f"{type(exc).__name__}: {one_line(exc)}")
        return report
    if database.replica_host:
        try:
            logger.info("replication lag and schema on replica %s:%s", database.replica_host, database.replica_port)
            lag, detail = replication_lag(database)
            add(
                "replication lag",
                verdict(lag is not None and lag <= database.max_replication_lag_s),
                detail if lag is None else f"{lag:.1f}s (max {database.max_replication_lag_s:g}s): {detail}",
            )
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
                if set(manifest.tables) - listed
                else []
            )
            age_h = (utcnow() - manifest.created_at).total_seconds() / 3600
            add(
                "backups succeeding",
                verdict(not problems),
                "; ".join(problems)
                or (
                    f"newest {newest}: {human_size(manifest.size_bytes)}, {age_h:.1f} h old, "
                    f"{len(listed)} tables listed by pg_restore"
                ),
            )
    except (OSError, ValueError, NotImplementedError, PermanentError, TemporaryError) as exc:
        add("backups succeeding", Verdict.FAIL, f"{type(exc).__name__}: {exc}")
    table_artifact(
        key="data-integrity",
        description=report.summary(),
        table=[c.model_dump(include={"name", "verdict", "detail"}) for c in report.checks],
    )
    return report
