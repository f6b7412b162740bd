"""Running pg_dump, pg_restore and psql: argument lists, exit codes as errors, the restore's preamble.

Arguments are lists, never a shell; the password travels in the environment (``PGPASSWORD``
from ``PostgresDatabase.tool_env``), never on a command line. Whether a tool's failure is
temporary or permanent is decided by ``blocks.database.errors.pg_tool_error``.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

from blocks.database import BackupStorage, PostgresDatabase
from blocks.database.errors import PSQL_CONNECTION_LOST, pg_tool_error, pg_tool_message
from tasks.core.errors import DeployError
from tasks.core.redaction import redact
from tasks.database.manifest import SYSTEM_SCHEMAS, table_key
from tasks.database.storage import copy_stream_quietly


def run(argv: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    # Argument lists only; the password travels in env (PGPASSWORD), never in argv.
    return subprocess.Popen(argv, env=env, **kwargs)


@dataclass(frozen=True)
class ToolExit:
    """A pg tool that exited non-zero: which one, its exit status, and what it wrote to stderr."""

    tool: str
    exit_code: int
    stderr: str  # redacted as it is made: stderr can quote a connection string

    def __post_init__(self) -> None:
        object.__setattr__(self, "stderr", redact(self.stderr))

    def __str__(self) -> str:
        return pg_tool_message(self.tool, self.exit_code, self.stderr)

    def error(self, *, stage: Any = None, result: Any = None) -> DeployError:
        return pg_tool_error(self.tool, self.exit_code, self.stderr, stage=stage, result=result)


def archive_tables(database: PostgresDatabase, store: BackupStorage, dump_file: str, major: int) -> set[str]:
    """`pg_restore --list` of a stored dump: the tables whose data it holds (raises if it cannot parse)."""
    local = store.local_path(dump_file)
    argv = [database.pg_tool("pg_restore", major), "--list"]
    if local is not None:
        out = subprocess.run([*argv, str(local)], capture_output=True, text=True, timeout=300, check=False)
    else:
        # The table of contents is at the start of a custom-format archive: stream until pg_restore has it.
        with tempfile.TemporaryFile() as err:
            proc = run(argv, database.tool_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
            pump = threading.Thread(
                target=copy_stream_quietly, args=(store.open_read(dump_file), proc.stdin), daemon=True
            )
            pump.start()
            stdout = proc.stdout.read()
            proc.stdout.close()
            code = proc.wait(timeout=300)
            pump.join()
            err.seek(0)
            out = subprocess.CompletedProcess(argv, code, stdout.decode(), err.read().decode(errors="replace"))
    if out.returncode != 0:
        raise pg_tool_error("pg_restore --list", out.returncode, redact(out.stderr))
    # TOC lines look like: "3345; 0 16390 TABLE DATA public events architect"
    return {
        table_key(m.group(1), m.group(2))
        for m in re.finditer(r"^\d+; \d+ \d+ TABLE DATA (\S+) (\S+) ", out.stdout, re.MULTILINE)
    }


# Runs first inside the restore's transaction: drop what the restoring role owns in the app's
# schemas, including objects created after the backup, which `pg_restore --clean` would leave
# behind (and whose foreign keys would then block it). Schemas are recreated by the dump;
# `public` is kept because PostgreSQL 15 dumps do not create it.
DROP_OWNED_OBJECTS = f"""DO $restore$
DECLARE r record;
BEGIN
  FOR r IN SELECT n.nspname FROM pg_namespace n WHERE n.nspowner = current_user::regrole
             AND n.nspname <> 'public' AND {SYSTEM_SCHEMAS} LOOP
    EXECUTE format('DROP SCHEMA %I CASCADE', r.nspname);
  END LOOP;
  FOR r IN SELECT c.oid::regclass AS obj, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relowner = current_user::regrole AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {SYSTEM_SCHEMAS}
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('e', 'a', 'i')) LOOP
    -- an earlier CASCADE may have dropped it already
    IF to_regclass(r.obj::text) IS NOT NULL THEN
      EXECUTE format('DROP %s IF EXISTS %s CASCADE', CASE r.relkind WHEN 'v' THEN 'VIEW'
        WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, r.obj);
    END IF;
  END LOOP;
  FOR r IN SELECT p.oid::regprocedure AS obj, p.prokind FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE p.proowner = current_user::regrole AND {SYSTEM_SCHEMAS}
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e') LOOP
    EXECUTE format('DROP %s IF EXISTS %s CASCADE', CASE r.prokind WHEN 'p' THEN 'PROCEDURE'
      WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END, r.obj);
  END LOOP;
  FOR r IN SELECT t.oid::regtype AS obj FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
            WHERE t.typowner = current_user::regrole AND {SYSTEM_SCHEMAS} AND t.typtype IN ('e', 'd', 'r', 'c')
              AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = t.oid AND d.deptype = 'e') LOOP
    EXECUTE format('DROP TYPE IF EXISTS %s CASCADE', r.obj);
  END LOOP;
END $restore$;"""


def restore_in_one_transaction(
    database: PostgresDatabase, store: BackupStorage, dump_file: str, major: int, verify_script: str, logger
) -> ToolExit | None:
    """``pg_restore <dump> | psql --single-transaction``: drop what the role owns, load, run ``verify_script``.

    Returns the tool that failed (psql rolled back: the database is unchanged), or None (committed).
    """
    local = store.local_path(dump_file)
    env = database.tool_env()
    # Index builds after the data load are most of a restore's time; give them memory to sort in.
    env["PGOPTIONS"] += f" -c maintenance_work_mem={database.restore_maintenance_work_mem_mb}MB"
    restore_argv = [database.pg_tool("pg_restore", major), "--no-owner", "--exit-on-error", "--file=-"]
    psql_argv = [
        database.pg_tool("psql", major),
        "--no-psqlrc",
        "--quiet",
        "--no-password",
        "--single-transaction",
        "--set=ON_ERROR_STOP=1",
        "--set=VERBOSITY=verbose",
        "--command",
        DROP_OWNED_OBJECTS,
        "--file=-",
    ]
    with (
        tempfile.TemporaryFile() as err1,
        tempfile.TemporaryFile() as err2,
        tempfile.NamedTemporaryFile("w", prefix="restore-verify-", suffix=".sql") as verify,
    ):
        verify.write(verify_script)
        verify.flush()
        source = None if local else store.open_read(dump_file)
        dump = run(
            [*restore_argv, str(local)] if local else restore_argv,
            env,
            stdin=subprocess.DEVNULL if local else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err1,
        )
        pump = None
        if source is not None:
            pump = threading.Thread(target=copy_stream_quietly, args=(source, dump.stdin), daemon=True)
            pump.start()
        apply = run(
            [*psql_argv, f"--file={verify.name}"], env, stdin=dump.stdout, stdout=subprocess.DEVNULL, stderr=err2
        )
        dump.stdout.close()  # psql owns the pipe now; pg_restore sees EPIPE if psql dies
        apply_code, dump_code = apply.wait(), dump.wait()
        if pump:
            pump.join()
        if apply_code != 0:
            # psql rolled back. A broken archive is the root cause when pg_restore failed too, unless
            # psql lost its connection: then pg_restore only saw the pipe close.
            archive_broken = dump_code != 0 and apply_code != PSQL_CONNECTION_LOST
            tool, code, err = ("pg_restore", dump_code, err1) if archive_broken else ("psql", apply_code, err2)
            err.seek(0)
            return ToolExit(tool, code, err.read().decode(errors="replace"))
        if dump_code != 0:
            logger.warning("pg_restore exited %d, but the restored database matched the backup", dump_code)
    return None
