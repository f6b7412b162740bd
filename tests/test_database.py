"""Backup, schema verification and restore against the sandbox's real PostgreSQL primary and replica.

Every test works in its own scratch database (``architect_test_<hex>``, owned by architect,
created and dropped by the superuser over the unix socket), so architect_staging is never
touched. The schema is the reference app's own migrations.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from prefect import flow
from prefect.filesystems import LocalFileSystem, RemoteFileSystem
from psycopg import sql

from blocks.database import PostgresDatabase
from sandbox import config
from tasks.core.errors import PermanentError
from tasks.core.models import Verdict
from tasks.database import backup as db
from tasks.database import integrity, migrations, restore
from tasks.database import manifest as pg_manifest
from tasks.database import preflight as db_preflight
from tasks.database import storage as backup_storage
from tasks.database import tools as pg_tools

pytestmark = pytest.mark.sandbox

MIGRATIONS = config.REPO_ROOT / "sandbox" / "architect-api" / "migrations"


def superuser() -> psycopg.Connection:
    return psycopg.connect(config.pg_superuser_conninfo(), autocommit=True, connect_timeout=5)


@pytest.fixture
def scratch_db():
    name = f"architect_test_{uuid.uuid4().hex[:10]}"
    with superuser() as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(config.PG_USER))
        )
    wait_until_replica_has(name)
    yield name
    with superuser() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def wait_until_replica_has(dbname: str, timeout_s: float = 15) -> None:
    """The streaming replica replays CREATE DATABASE a moment later; tests that read it wait."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(config.pg_superuser_conninfo(port=config.PG_REPLICA_PORT), autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
                return
            time.sleep(0.1)
    raise AssertionError(f"the replica did not replay CREATE DATABASE {dbname} within {timeout_s} s")


def make_database(dbname: str, storage, **fields) -> PostgresDatabase:
    return PostgresDatabase(
        host=config.HOST,
        port=config.PG_PRIMARY_PORT,
        replica_host=config.HOST,
        replica_port=config.PG_REPLICA_PORT,
        dbname=dbname,
        user=config.PG_USER,
        password=config.load_secrets()["architect_db_password"],
        sslmode="disable",
        backup_storage=storage,
        **fields,
    )


@pytest.fixture
def database(scratch_db, tmp_path) -> PostgresDatabase:
    return make_database(scratch_db, LocalFileSystem(basepath=str(tmp_path / "backups")))


@pytest.fixture
def password() -> str:
    return config.load_secrets()["architect_db_password"]


def migrate(database: PostgresDatabase, *versions: int) -> None:
    """Apply the app's own up-migrations (and their schema_migrations rows), as its migrate does."""
    with database.connect() as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        for version in versions:
            path = next(MIGRATIONS.glob(f"{version:03d}_*.up.sql"))
            with conn.transaction():
                conn.execute(path.read_text())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (version, path.name.split("_", 1)[1].removesuffix(".up.sql")),
                )


def seed(database: PostgresDatabase, n: int = 500) -> None:
    with database.connect() as conn:
        conn.execute(
            "INSERT INTO users (username, password_hash) SELECT 'user' || g, md5(g::text) FROM generate_series(1, 20) g"
        )
        conn.execute(
            "INSERT INTO sessions (token_hash, user_id, expires_at) SELECT md5('s' || g), 1 + g % 20,"
            " now() + interval '1 day' FROM generate_series(1, 30) g"
        )
        conn.execute(
            "INSERT INTO events (type, source, payload) SELECT 'type' || g %% 7, 'seed',"
            " jsonb_build_object('n', g, 'tags', jsonb_build_array('a', g %% 3), 'ratio', g / 7.0)"
            " FROM generate_series(1, %s) g",
            (n,),
        )
        conn.execute(
            "INSERT INTO errors (kind, message, resolved) SELECT 'E' || g % 5, 'boom ' || g, g % 2 = 0"
            " FROM generate_series(1, 50) g"
        )
        conn.execute(
            "INSERT INTO notifications (user_id, title) SELECT 1 + g % 20, 'hello ' || g FROM generate_series(1, 40) g"
        )


def in_flow(fn):
    """Run ``fn`` inside a flow on the sandbox's Prefect server; returns (result, flow run id)."""

    @flow(name="test-database", persist_result=False)
    def run_it():
        from prefect.runtime import flow_run

        return fn(), flow_run.id

    return run_it()


def artifacts_text(flow_run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return "\n".join(f"{a.key} {a.description} {a.data}" for a in found)


class Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def watched(monkeypatch):
    """Every log line (root and prefect loggers) and every child's argv and /proc cmdline."""
    recorder, seen = Recorder(), []
    for name in ("", "prefect"):
        logging.getLogger(name).addHandler(recorder)
    real_run = pg_tools.run

    def run(argv, env, **kwargs):
        proc = real_run(argv, env, **kwargs)
        cmdline = b""
        for _ in range(200):  # until the child has exec'd pg_dump/pg_restore/psql
            try:
                cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            except OSError:
                break
            if Path(argv[0]).name.encode() in cmdline.split(b"\0")[0]:
                break
            time.sleep(0.005)
        seen.append((list(argv), cmdline.decode(errors="replace")))
        return proc

    monkeypatch.setattr(pg_tools, "run", run)
    yield recorder.lines, seen
    for name in ("", "prefect"):
        logging.getLogger(name).removeHandler(recorder)


def mutate(database: PostgresDatabase) -> None:
    """What a deploy does after the backup: new rows, edits, deletes, a migration and a new table."""
    migrate(database, 3)
    with database.connect() as conn:
        conn.execute(
            "INSERT INTO events (type, source, severity) SELECT 'late', 'after-backup', 'warning'"
            " FROM generate_series(1, 25)"
        )
        conn.execute("UPDATE errors SET resolved = true, resolved_at = now() WHERE id <= 10")
        conn.execute("DELETE FROM notifications WHERE id <= 5")
        conn.execute("CREATE TABLE audit (id serial PRIMARY KEY, event_id bigint REFERENCES events(id), note text)")
        conn.execute("INSERT INTO audit (event_id, note) SELECT id, 'x' FROM events LIMIT 7")


def test_backup_mutate_restore_is_exact_and_keeps_the_password_secret(database, password, watched):
    migrate(database, 1, 2)
    seed(database)
    before = pg_manifest.table_checksums(database)
    assert before["public.events"].startswith("500:")

    backup, run_id = in_flow(lambda: db.backup_database(database, run_label="test"))
    assert backup.schema_version == 2 and backup.tables["public.events"].rows == 500
    assert {f"{k}": f"{m.rows}:{m.checksum}" for k, m in backup.tables.items()} == before
    dump = Path(database.backup_storage.basepath) / database.backup_namespace() / backup.dump_file
    assert dump.stat().st_size == backup.size_bytes > 0
    assert (dump.parent / backup.manifest_file).exists() and not list(dump.parent.glob("*.partial"))

    mutate(database)
    assert pg_manifest.table_checksums(database) != before
    assert restore.schema_changed_since(database, backup)
    assert restore.should_restore("if-schema-changed", database, backup).restore
    assert not restore.should_restore("never", database, backup)

    restored, restore_run = in_flow(lambda: restore.restore_database(database, backup))
    assert restored.verified and restored.mismatches == []
    assert restored.schema_version_before == 3 and restored.schema_version_after == 2
    assert pg_manifest.table_checksums(database) == before
    assert not restore.schema_changed_since(database, backup)
    with database.connect() as conn:
        assert conn.execute("SELECT to_regclass('audit'), to_regclass('events_severity_check')").fetchone() == (
            None,
            None,
        )
        columns = {r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = 'events'::regclass")}
        assert "severity" not in columns
        # sequences come back too: the next event gets the id after the backup's last one
        assert conn.execute("INSERT INTO events (type, source) VALUES ('n', 't') RETURNING id").fetchone()[0] == 501

    discarded = {d.table: d for d in restored.discarded}
    assert (discarded["public.events"].rows_now, discarded["public.events"].rows_in_backup) == (525, 500)
    assert discarded["public.events"].rows_discarded == 25
    assert (discarded["public.audit"].rows_now, discarded["public.audit"].rows_in_backup) == (7, None)
    assert discarded["public.notifications"].rows_discarded == 0 and discarded["public.notifications"].rows_now == 35
    assert restored.rows_discarded == 25 + 7 + 1  # events, audit, schema_migrations row 3

    text = artifacts_text(run_id) + artifacts_text(restore_run)
    assert "pre-deployment-" in text and "33 rows written since the backup" in text.replace(",", "")
    lines, children = watched
    assert any("pg_dump" in line for line in lines) and any("restore" in line for line in lines)
    assert {Path(argv[0]).name for argv, _ in children} == {"pg_dump", "pg_restore", "psql"}
    for argv, cmdline in children:
        assert password not in " ".join(argv) and password not in cmdline
        assert Path(argv[0]).name in cmdline  # really read the child's own command line
    assert not [line for line in lines if password in line]
    assert password not in text


def test_restore_of_a_two_table_backup_is_exact(database):
    with database.connect() as conn:
        conn.execute("CREATE TABLE a (id int PRIMARY KEY, v text, at timestamptz DEFAULT now(), p point)")
        conn.execute("CREATE TABLE b (id bigserial PRIMARY KEY, a_id int REFERENCES a(id), amount numeric(12, 3))")
        conn.execute(
            "INSERT INTO a SELECT g, repeat('v', g % 50), now() - g * interval '1 min', point(g, -g)"
            " FROM generate_series(1, 300) g"
        )
        conn.execute("INSERT INTO b (a_id, amount) SELECT 1 + g % 300, g / 3.0 FROM generate_series(1, 1000) g")
    before = pg_manifest.table_checksums(database)
    assert before["public.a"].split(":")[1] == "text"  # point has no hash opclass: the text fallback ran
    backup, _ = in_flow(lambda: db.backup_database(database))
    assert set(backup.tables) == {"public.a", "public.b"} and backup.schema_version == 0
    with database.connect() as conn:
        conn.execute("UPDATE a SET v = 'changed' WHERE id = 1")  # same count, other content
        conn.execute("CREATE TABLE c (id int PRIMARY KEY, b_id bigint REFERENCES b(id))")
        conn.execute("INSERT INTO c VALUES (1, 1)")
    assert pg_manifest.table_checksums(database)["public.a"] != before["public.a"]
    restored, _ = in_flow(lambda: restore.restore_database(database, backup))
    assert restored.verified and pg_manifest.table_checksums(database) == before


def test_a_restore_that_fails_changes_nothing(database):
    migrate(database, 1, 2)
    seed(database, 50)
    backup, _ = in_flow(lambda: db.backup_database(database))
    mutate(database)
    changed = pg_manifest.table_checksums(database)
    database.backups().local_path(backup.dump_file).write_bytes(b"PGDMP not really a dump")
    with pytest.raises(PermanentError):
        in_flow(lambda: restore.restore_database(database, backup))
    assert pg_manifest.table_checksums(database) == changed


def _fake_backup(directory: Path, ts: int, complete: bool = True) -> None:
    (directory / f"pre-deployment-{ts}.dump").write_bytes(b"old")
    if complete:
        (directory / f"pre-deployment-{ts}.manifest.json").write_text("{}")


def test_pruning_removes_old_backups_but_keeps_the_newest_and_this_one(database):
    """Backups of the flat layout of earlier releases are pruned by the rules of a namespace:
    older than the retention, except the newest complete one; this run's is in its database's
    namespace (more retention cases: tests/test_backup_retention.py)."""
    directory = Path(database.backup_storage.basepath)
    directory.mkdir(parents=True)
    now = int(time.time())
    for hours in (72, 30, 25):
        _fake_backup(directory, now - hours * 3600)
    _fake_backup(directory, now - 50 * 3600, complete=False)
    _fake_backup(directory, now - 2 * 3600)  # younger than the retention
    (directory / "notes.txt").write_text("not ours")
    backup, _ = in_flow(lambda: db.backup_database(database))
    assert sorted(backup.pruned) == sorted(f"pre-deployment-{now - h * 3600}" for h in (72, 50, 30, 25))
    left = sorted(p.name for p in directory.iterdir() if p.is_file())
    assert left == sorted(
        ["notes.txt", f"pre-deployment-{now - 7200}.dump", f"pre-deployment-{now - 7200}.manifest.json"]
    )
    namespace = directory / database.backup_namespace()
    assert sorted(p.name for p in namespace.iterdir()) == sorted([backup.dump_file, backup.manifest_file])
    # When every backup is past the retention, the newest one (of the namespace, and of the flat layout) still stays.
    database.retention_hours = 1
    _fake_backup(namespace, now - 3 * 3600)
    assert backup_storage.prune_backups(database, keep=set()) == [f"pre-deployment-{now - 3 * 3600}"]
    assert backup_storage.prune_backups(database) == [] and (namespace / backup.dump_file).exists()
    assert (directory / f"pre-deployment-{now - 7200}.dump").exists()


def test_check_database_passes_on_the_healthy_sandbox(database):
    migrate(database, 1, 2)
    report, _ = in_flow(lambda: db_preflight.check_database(database))
    checks = {c.name: c for c in report.checks}
    assert report.verdict == Verdict.PASS, report.summary()
    assert set(checks) == {
        "database primary",
        "schema version",
        "database connections",
        "backup tools",
        "database replica",
        "replication lag",
        "backup space",
    }
    assert checks["schema version"].detail == "version 2"
    lag = float(checks["replication lag"].detail.split("s ")[0])
    assert 0 <= lag <= database.max_replication_lag_s


def test_check_database_fails_sensibly_when_space_or_pool_cannot_suffice(database):
    database.backup_size_ratio = 1e9
    database.pool_max = 1  # our own connection alone is over 80% of it
    report, _ = in_flow(lambda: db_preflight.check_database(database))
    failed = {c.name: c.detail for c in report.failures}
    assert set(failed) == {"backup space", "database connections"}
    assert " free, a backup needs about " in failed["backup space"] and "x 1e+09" in failed["backup space"]


def test_check_database_reports_an_unreachable_replica(database):
    database.replica_port = 1
    report, _ = in_flow(lambda: db_preflight.check_database(database))
    assert [c.name for c in report.failures] == ["database replica"]


def test_verify_schema_and_data_integrity(database):
    migrate(database, 1, 2)
    ok, _ = in_flow(lambda: migrations.verify_schema(database, 2))
    assert ok.verdict == Verdict.PASS and [m.version for m in ok.applied] == [1, 2]
    behind, _ = in_flow(lambda: migrations.verify_schema(database, 3))
    assert behind.verdict == Verdict.FAIL and behind.missing == [3] and behind.current_version == 2
    ahead, _ = in_flow(lambda: migrations.verify_schema(database, 1))  # an older release after a newer one
    assert ahead.verdict == Verdict.PASS and ahead.unknown == [2] and "ahead of the image" in ahead.detail

    no_backup, _ = in_flow(lambda: integrity.check_data_integrity(database, expected_version=2))
    assert [c.name for c in no_backup.failures] == ["backups succeeding"]
    backup, _ = in_flow(lambda: db.backup_database(database))
    report, run_id = in_flow(lambda: integrity.check_data_integrity(database, backup, expected_version=2))
    assert report.verdict == Verdict.PASS, report.summary()
    assert "data-integrity" in artifacts_text(run_id)
    pending, _ = in_flow(lambda: integrity.check_data_integrity(database, backup, expected_version=3))
    assert [c.name for c in pending.failures] == ["migrations complete"]
    database.backups().local_path(backup.dump_file).write_bytes(b"garbage")
    broken, _ = in_flow(lambda: integrity.check_data_integrity(database, backup, expected_version=2))
    assert [c.name for c in broken.failures] == ["backups succeeding"]


def test_remote_storage_streams_through_fsspec(scratch_db, password, watched):
    database = make_database(scratch_db, RemoteFileSystem(basepath=f"memory://backups-{uuid.uuid4().hex[:8]}"))
    migrate(database, 1, 2)
    seed(database, 200)
    before = pg_manifest.table_checksums(database)
    backup, _ = in_flow(lambda: db.backup_database(database))
    fs = database.backup_storage.filesystem
    assert fs.size(database.backups()._remote(backup.dump_file)) == backup.size_bytes
    report, _ = in_flow(lambda: integrity.check_data_integrity(database, backup, expected_version=2))
    assert report.verdict == Verdict.PASS, report.summary()
    mutate(database)
    restored, _ = in_flow(lambda: restore.restore_database(database, backup))
    assert restored.verified and pg_manifest.table_checksums(database) == before
    # pg_dump wrote to its stdout (streamed to fsspec), pg_restore read its stdin
    dumps = [argv for argv, _ in watched[1] if Path(argv[0]).name in ("pg_dump", "pg_restore")]
    assert dumps and all(not arg.startswith(("--file=/", "/")) for argv in dumps for arg in argv[1:])


def test_counts_only_backup_restores_and_verifies_counts(database):
    migrate(database, 1, 2)
    seed(database, 100)
    before = pg_manifest.table_checksums(database)
    backup, _ = in_flow(lambda: db.backup_database(database, checksums=False))
    assert {m.checksum for m in backup.tables.values()} == {"count:0"}
    assert {t: m.rows for t, m in backup.tables.items()} == {t: int(v.split(":")[0]) for t, v in before.items()}
    mutate(database)
    restored, _ = in_flow(lambda: restore.restore_database(database, backup))
    assert restored.verified and pg_manifest.table_checksums(database) == before
