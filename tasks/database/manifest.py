"""What a backup's manifest says about a database, and the SQL that checks a database against one.

A manifest holds the schema version, a schema fingerprint, and per user table an exact row count
and a content checksum. Read inside a backup's exported snapshot it describes exactly the rows in
the dump; replayed as ``verify_sql`` at the end of a restore it proves the restore exact. The
replica's lag and the server's major version are here too: the other things the database
steps read from the server itself.
"""

from __future__ import annotations

import time

import psycopg
from psycopg import sql
from pydantic import BaseModel, Field

from blocks.database import PostgresDatabase

SYSTEM_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp)'"
# Row output depends on these settings; pin them so a checksum means the same in every session.
PINNED = (
    "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres';"
    " SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'"
)


class TableManifest(BaseModel):
    rows: int
    checksum: str = Field(description="'<method>:<sum of 64-bit row hashes>'; order-independent, no 1 GB limit")


def major_version(conn: psycopg.Connection) -> int:
    """The server's PostgreSQL major version (15 for 15.4): which pg_dump, pg_restore and psql to run."""
    return conn.info.server_version // 10000


def schema_version(conn: psycopg.Connection) -> int:
    """The highest applied migration; 0 when there is no schema_migrations table."""
    if conn.execute("SELECT to_regclass('schema_migrations') IS NULL").fetchone()[0]:
        return 0
    return conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]


_FINGERPRINT = f"""
    SELECT md5(coalesce(string_agg(line, E'\\n' ORDER BY line), '')) FROM (
      SELECT format('col %s.%s.%s %s %s %s', n.nspname, c.relname, a.attname,
                    format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid))
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
       WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped AND {SYSTEM_SCHEMAS}
      UNION ALL
      SELECT format('idx %s', pg_get_indexdef(i.indexrelid)) FROM pg_index i
        JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {SYSTEM_SCHEMAS}
      UNION ALL
      SELECT format('con %s.%s %s', c.relname, k.conname, pg_get_constraintdef(k.oid)) FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {SYSTEM_SCHEMAS}
    ) s(line)"""
# User tables holding rows (partitions, not their parents, so nothing is counted twice).
_TABLES = f"""
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND {SYSTEM_SCHEMAS}
     AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')"""


def schema_fingerprint(conn: psycopg.Connection) -> str:
    """md5 of the columns, indexes and constraints of every user table: catches unversioned changes too."""
    return conn.execute(_FINGERPRINT).fetchone()[0]


def _tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return conn.execute(f"SELECT n.nspname, c.relname {_TABLES} ORDER BY 1, 2").fetchall()


def table_key(schema: str, name: str) -> str:
    return f"{schema}.{name}"


# "count" manifests hold exact row counts only (backup_database(checksums=False)): cheaper, weaker.
_HASH = {
    "record": "coalesce(sum(hash_record_extended(t.*, 0)), 0)",
    "text": "coalesce(sum(hashtextextended(t::text, 0)), 0)",
    "count": "0",
}


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


def table_manifests(
    conn: psycopg.Connection, methods: dict[str, str] | None = None, default: str | None = None
) -> dict[str, TableManifest]:
    """Every user table's exact row count and checksum; ``default`` "count" skips the checksums."""
    conn.execute(PINNED)
    methods = methods or {}
    return {
        table_key(s, n): _checksum_table(conn, s, n, (methods.get(table_key(s, n)) or "").split(":")[0] or default)
        for s, n in _tables(conn)
    }


def snapshot_connection(database: PostgresDatabase) -> psycopg.Connection:
    """A read-only REPEATABLE READ connection: everything read through it is one snapshot."""
    conn = database.connect(autocommit=False)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    return conn


def table_checksums(database: PostgresDatabase) -> dict[str, str]:
    """``schema.table -> '<rows>:<checksum>'`` for every user table, in one consistent snapshot."""
    with snapshot_connection(database) as conn:
        return {k: f"{m.rows}:{m.checksum}" for k, m in table_manifests(conn).items()}


def row_counts(conn: psycopg.Connection) -> dict[str, int]:
    """``schema.table -> exact row count`` for every user table."""
    counts = {}
    for schema, name in _tables(conn):
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))
        counts[table_key(schema, name)] = conn.execute(query).fetchone()[0]
    return counts


def replication_lag(database: PostgresDatabase, poll_s: float = 0.2) -> tuple[float | None, str]:
    """Seconds the replica takes to replay what the primary has written now (0: it already has).

    Measured, not estimated: "now() - last replayed transaction" reads as minutes of lag on a
    primary that was idle and has just written again. Waits at most ``max_replication_lag_s``
    plus a second, so a lag beyond the limit still shows as beyond it.
    """
    with database.connect() as primary:
        primary_lsn = primary.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    started = time.monotonic()
    with database.connect(replica=True) as replica:
        while True:
            in_recovery, caught_up = replica.execute(
                "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn() >= %s::pg_lsn", (primary_lsn,)
            ).fetchone()
            waited = time.monotonic() - started
            if not in_recovery:
                return None, "the replica is not in recovery: it is not replicating"
            if caught_up:
                detail = f"replayed up to the primary's {primary_lsn}"
                return (0.0, detail) if waited < poll_s else (waited, f"{detail} after {waited:.1f}s")
            if waited > database.max_replication_lag_s + 1:
                return waited, f"still short of the primary's {primary_lsn} after {waited:.1f}s"
            time.sleep(poll_s)


def verify_sql(version: int, fingerprint: str, tables: dict[str, TableManifest]) -> str:
    """Checks run at the end of the restore's transaction: any difference raises, and nothing is committed.

    This also stops a truncated pg_restore stream from ever being committed.
    """

    def check(label: str, got_query: str, want: str) -> str:
        return f"SELECT pg_temp.restore_check({_lit(label)}, got, {_lit(want)}) FROM ({got_query}) g(got);"

    lines = [
        "RESET search_path;",  # the dump's script emptied it
        PINNED + ";",
        (
            "CREATE FUNCTION pg_temp.restore_check(what text, got text, want text) RETURNS void"
            " LANGUAGE plpgsql PARALLEL RESTRICTED AS $f$ BEGIN IF got IS DISTINCT FROM want THEN"
            " RAISE EXCEPTION 'restore verification: % is %, the backup has %', what, got, want; END IF; END $f$;"
        ),
        check("the schema version", "SELECT coalesce(max(version), 0)::text FROM schema_migrations", str(version))
        if version
        else check("schema_migrations", "SELECT to_regclass('schema_migrations')::text", None),
        check("the schema fingerprint", _FINGERPRINT, fingerprint),
        check("the number of tables", f"SELECT count(*)::text {_TABLES}", str(len(tables))),
    ]
    for table, manifest in sorted(tables.items()):
        schema, name = table.split(".", 1)
        ident = f"{_ident(schema)}.{_ident(name)}"
        method = manifest.checksum.split(":")[0]
        lines.append(
            check(
                table,
                f"SELECT count(*) || ':{method}:' || {_HASH[method]} FROM {ident} t",
                f"{manifest.rows}:{manifest.checksum}",
            )
        )
    return "\n".join(lines) + "\n"


def _lit(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
