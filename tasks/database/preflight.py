"""The database's preflight check: what must hold before a deploy touches the staging database.

Primary and replica answer, the schema version, connection-pool use, replication lag, the
backup tools for the server's version, and space for the pre-deployment backup. Changes nothing.
"""

from __future__ import annotations

import psycopg
from prefect import get_run_logger, task

from blocks.database import PostgresDatabase
from tasks.core.errors import one_line
from tasks.core.models import CheckResult, GateReport, Verdict
from tasks.core.stages import Stage
from tasks.database.manifest import major_version, replication_lag, schema_version
from tasks.database.storage import human_size


@task
def check_database(database: PostgresDatabase) -> GateReport:
    """Preflight: primary and replica answer, schema version, pool use, replication lag, backup space."""
    logger = get_run_logger()
    report = GateReport(stage=Stage.PREFLIGHT)

    def add(name: str, ok: bool, detail: str) -> None:
        report.checks.append(CheckResult(name=name, verdict=Verdict.PASS if ok else Verdict.FAIL, detail=detail))

    try:
        with database.connect() as conn:
            logger.info("SELECT 1 on primary %s:%s/%s", database.host, database.port, database.dbname)
            conn.execute("SELECT 1")
            recovery, size, server = conn.execute(
                "SELECT pg_is_in_recovery(), pg_database_size(current_database()), current_setting('server_version')"
            ).fetchone()
            add(
                "database primary",
                not recovery,
                f"PostgreSQL {server}" + (", but read-only (in recovery)" if recovery else ""),
            )
            add("schema version", True, f"version {schema_version(conn)}")
            in_use = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            ).fetchone()[0]
            limit = 0.8 * database.pool_max
            add(
                "database connections",
                in_use < limit,
                f"{in_use} in use, pool {database.pool_max} (must be < {limit:g})",
            )
            major = major_version(conn)
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
                add(
                    "replication lag",
                    lag <= database.max_replication_lag_s,
                    f"{lag:.1f}s (max {database.max_replication_lag_s:g}s): {detail}",
                )
        except psycopg.Error as exc:
            add("database replica", False, f"{type(exc).__name__}: {one_line(exc)}")
    free = database.backups().free_bytes()
    need = int(size * database.backup_size_ratio)
    if free is None:
        report.checks.append(
            CheckResult(
                name="backup space",
                verdict=Verdict.INCONCLUSIVE,
                detail=f"{database.backups().describe()} cannot report free space",
            )
        )
    else:
        add(
            "backup space",
            free >= need,
            f"{human_size(free)} free, a backup needs about {human_size(need)} "
            f"(database {human_size(size)} x {database.backup_size_ratio:g})",
        )
    return report
