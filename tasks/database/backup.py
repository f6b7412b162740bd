"""The pre-deployment backup of the staging database: ``backup_database`` and ``BackupResult``.

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
from datetime import datetime

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from blocks.database import PostgresDatabase
from blocks.database.errors import pg_tool_error, postgres_errors
from tasks.core.artifacts import markdown_artifact
from tasks.core.errors import TemporaryError, retry_if_temporary
from tasks.core.models import utcnow
from tasks.database import tools as pg_tools
from tasks.database.manifest import (
    TableManifest,
    major_version,
    schema_fingerprint,
    schema_version,
    snapshot_connection,
    table_manifests,
)
from tasks.database.retention import backup_description
from tasks.database.storage import copy_stream, discard, free_name, human_size, prune_backups


class BackupResult(BaseModel):
    """A pre-deployment backup; also the manifest stored as ``<name>.manifest.json``."""

    name: str
    dump_file: str
    manifest_file: str
    storage: str
    # Its database's directory in the storage; "" for the flat layout of earlier releases.
    namespace: str = ""
    created_at: datetime
    run_label: str = ""
    size_bytes: int
    duration_s: float
    schema_version: int
    schema_fingerprint: str
    server_version: str
    tables: dict[str, TableManifest] = Field(default_factory=dict)
    pruned: list[str] = Field(default_factory=list)


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
    with (
        postgres_errors("taking the backup", database.identity()),
        snapshot_connection(database) as conn,
        tempfile.TemporaryFile() as stderr,
    ):
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        major = major_version(conn)
        argv = [
            database.pg_tool("pg_dump", major),
            "--format=custom",
            "--no-password",
            f"--snapshot={snapshot}",
            f"--lock-wait-timeout={database.lock_timeout_ms}",
        ]
        local = store.local_path(partial)
        counter, pump = [0, None], None
        logger.info("pg_dump %s (snapshot %s) -> %s/%s", database.dbname, snapshot, store.describe(), dump_file)
        if local is not None:
            proc = pg_tools.run(
                [*argv, f"--file={local}"], database.tool_env(), stdout=subprocess.DEVNULL, stderr=stderr
            )
        else:
            proc = pg_tools.run(argv, database.tool_env(), stdout=subprocess.PIPE, stderr=stderr)
            pump = threading.Thread(
                target=copy_stream, args=(proc.stdout, store.open_write(partial), counter), daemon=True
            )
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
            raise pg_tool_error("pg_dump", code, stderr.read().decode(errors="replace"))
    store.rename(partial, dump_file)
    result = BackupResult(
        name=name,
        dump_file=dump_file,
        manifest_file=manifest_file,
        storage=store.describe(),
        namespace=store.namespace,
        created_at=created,
        run_label=run_label,
        size_bytes=local.with_name(dump_file).stat().st_size if local else counter[0],
        duration_s=round(time.monotonic() - started, 3),
        schema_version=version,
        schema_fingerprint=fingerprint,
        server_version=server,
        tables=tables,
    )
    store.write_bytes(manifest_file, result.model_dump_json(indent=2).encode())
    result.pruned = prune_backups(database, keep={name})
    logger.info(
        "backup %s: %s in %.1fs, schema version %d, %d tables; pruned %s",
        name,
        human_size(result.size_bytes),
        result.duration_s,
        version,
        len(tables),
        result.pruned or "nothing",
    )
    rows = "\n".join(f"| `{t}` | {m.rows:,} | `{m.checksum}` |" for t, m in tables.items())
    markdown_artifact(
        key="database-backup",
        description=backup_description(name),  # read back by retention: a live run's backup is kept
        markdown=(
            f"# Database backup `{name}`\n\n{run_label}\n\n| | |\n|---|---|\n| Database | `{database.dbname}` |\n"
            f"| Stored | {result.storage} `{dump_file}` + `{manifest_file}` |\n| Size | {human_size(result.size_bytes)} |\n"  # noqa: E501
            f"| Duration | {result.duration_s:.1f}s |\n| Schema version | {version} |\n| Server | PostgreSQL {server} |\n"  # noqa: E501
            f"| Pruned (older than {database.retention_hours:g} h) | {', '.join(result.pruned) or 'none'} |\n\n"
            f"## Tables (exact, in the dump's snapshot)\n\n| Table | Rows | Checksum |\n|---|---:|---|\n{rows}\n"
        ),
    )
    return result
