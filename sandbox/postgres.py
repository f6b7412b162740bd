"""PostgreSQL 15: a primary on :55432 and a streaming hot-standby replica on :55433 for the
app, and on :55434 the Prefect server's own database (a separate server, as in a real staging
setup: the fault tests stop the app's primary, which must not take the orchestrator down).

PostgreSQL refuses to run as root, so every server-side command runs as the
`postgres` OS user through `runuser -u postgres --`, and $STATE/pg is owned by it.
The postmaster writes its own PID file (postmaster.pid in the data directory);
that is the PID file we stop by, through `pg_ctl stop -m fast` (a SIGTERM "smart"
shutdown would wait for the app's connection pools to close by themselves).
"""

from __future__ import annotations

import pwd
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from . import config, procs, templates
from .procs import SandboxError


@dataclass(frozen=True)
class Instance:
    name: str
    data: Path
    port: int

    @property
    def log(self) -> Path:
        return config.PG_DIR / f"{self.name}.log"


PRIMARY = Instance("postgres-primary", config.PG_PRIMARY_DATA, config.PG_PRIMARY_PORT)
REPLICA = Instance("postgres-replica", config.PG_REPLICA_DATA, config.PG_REPLICA_PORT)
PREFECT = Instance("postgres-prefect", config.PG_PREFECT_DATA, config.PG_PREFECT_PORT)


def _as_postgres(*argv: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv]


def _pg(tool: str) -> str:
    return str(config.PG_BIN / tool)


def _chown_postgres(path: Path) -> None:
    entry = pwd.getpwnam("postgres")
    shutil.chown(path, entry.pw_uid, entry.pw_gid)


def _prepare_dirs() -> None:
    for directory in (config.PG_DIR, config.PG_SOCKET_DIR):
        directory.mkdir(parents=True, exist_ok=True)
        _chown_postgres(directory)
        directory.chmod(0o755)
    # The postgres user must be able to reach $STATE/pg; a state dir under /root
    # (mode 0700) would fail much later with a confusing initdb error.
    probe = procs.run(_as_postgres("test", "-w", str(config.PG_SOCKET_DIR)), check=False)
    if probe.returncode != 0:
        raise SandboxError(
            f"the postgres OS user cannot write {config.PG_SOCKET_DIR}; "
            "put SANDBOX_STATE on a path every user can traverse"
        )


def _write_conf(inst: Instance) -> bool:
    """Render sandbox.conf, pg_hba.conf and pg_ident.conf into the data dir."""
    changed = False
    files = {"postgresql.sandbox.conf": "sandbox.conf", "pg_hba.conf": "pg_hba.conf", "pg_ident.conf": "pg_ident.conf"}
    values = {"PORT": inst.port, "SOCKET_DIR": config.PG_SOCKET_DIR}
    for template, target in files.items():
        dest = inst.data / target
        changed |= templates.render(config.CONF_DIR / template, dest, values, mode=0o600)
        _chown_postgres(dest)
    return changed


def _initdb(inst: Instance) -> None:
    if inst.data.exists():
        shutil.rmtree(inst.data)
    procs.run(
        _as_postgres(
            _pg("initdb"),
            "-D",
            str(inst.data),
            "-U",
            "postgres",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )
    )
    with open(inst.data / "postgresql.conf", "a") as fh:
        fh.write(
            "\n# sandbox settings (rendered from sandbox/conf/postgresql.sandbox.conf)\ninclude = 'sandbox.conf'\n"
        )


def postmaster_pid(inst: Instance) -> int | None:
    pid = procs.read_pid(inst.data / "postmaster.pid")
    if pid is not None and procs.pid_alive(pid, "postgres"):
        return pid
    return None


def _pg_ctl(inst: Instance, *args: str, check: bool = True):
    return procs.run(_as_postgres(_pg("pg_ctl"), "-D", str(inst.data), *args), check=check, timeout=90)


def _start_or_reload(inst: Instance, conf_changed: bool) -> None:
    if postmaster_pid(inst) is not None:
        if conf_changed:
            _pg_ctl(inst, "reload")
        return
    procs.ensure_ports_free(inst.name, [inst.port])
    try:
        _pg_ctl(inst, "-l", str(inst.log), "-w", "-t", "60", "start")
    except SandboxError as exc:
        tail = "\n".join(inst.log.read_text(errors="replace").splitlines()[-15:]) if inst.log.exists() else ""
        raise SandboxError(f"{inst.name} did not start: {exc}\n{tail}") from None


def _superuser(port: int, dbname: str = "postgres") -> psycopg.Connection:
    return psycopg.connect(config.pg_superuser_conninfo(port, dbname), autocommit=True, connect_timeout=5)


def _architect_login_ok(password: str, port: int = config.PG_PRIMARY_PORT) -> bool:
    try:
        with psycopg.connect(config.pg_conninfo(port, password), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _bootstrap_primary(password: str) -> None:
    """Role architect, database architect_staging owned by it, the replica's slot."""
    with _superuser(PRIMARY.port) as conn:
        role_exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (config.PG_USER,)).fetchone()
        if not role_exists:
            # DDL cannot take bind parameters; the password is quoted client-side.
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(config.PG_USER), sql.Literal(password)
                )
            )
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (config.PG_DATABASE,)).fetchone():
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(config.PG_DATABASE), sql.Identifier(config.PG_USER)
                )
            )
        if role_exists and not _architect_login_ok(password):
            # secrets.json is the source of truth (e.g. it was regenerated).
            conn.execute(
                sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(config.PG_USER), sql.Literal(password))
            )
        if not conn.execute(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (config.PG_REPLICATION_SLOT,)
        ).fetchone():
            conn.execute("SELECT pg_create_physical_replication_slot(%s)", (config.PG_REPLICATION_SLOT,))


def _basebackup_replica() -> None:
    if REPLICA.data.exists():
        shutil.rmtree(REPLICA.data)
    conninfo = f"host={config.PG_SOCKET_DIR} port={PRIMARY.port} user=postgres"
    try:
        # -R writes standby.signal plus primary_conninfo/primary_slot_name.
        procs.run(
            _as_postgres(
                _pg("pg_basebackup"),
                "-D",
                str(REPLICA.data),
                "-d",
                conninfo,
                "-R",
                "-X",
                "stream",
                "-S",
                config.PG_REPLICATION_SLOT,
                "--checkpoint=fast",
            ),
            timeout=300,
        )
    except SandboxError:
        shutil.rmtree(REPLICA.data, ignore_errors=True)
        raise


def _start(inst: Instance, actions: list[str]) -> None:
    was_running = postmaster_pid(inst) is not None
    _start_or_reload(inst, _write_conf(inst))
    if not was_running:
        actions.append(f"{inst.name}: started")


def _initdb_if_new(inst: Instance, actions: list[str]) -> bool:
    if (inst.data / "PG_VERSION").exists():
        return False
    _initdb(inst)
    actions.append(f"{inst.name}: initdb")
    return True


def ensure_up(password: str) -> list[str]:
    """Bring primary and replica up (idempotent). Returns human-readable actions taken."""
    actions: list[str] = []
    _prepare_dirs()
    fresh_primary = _initdb_if_new(PRIMARY, actions)
    _start(PRIMARY, actions)
    _bootstrap_primary(password)

    if fresh_primary and REPLICA.data.exists():
        # A replica of an older cluster can never stream from a new primary.
        stop(REPLICA)
        shutil.rmtree(REPLICA.data)
    if not (REPLICA.data / "PG_VERSION").exists():
        _basebackup_replica()
        actions.append("postgres-replica: pg_basebackup")
    _start(REPLICA, actions)
    if not procs.wait_for(lambda: check_replica()[0], timeout=30):
        raise SandboxError(f"postgres-replica is not streaming: {check_replica()[1]}")
    return actions


def ensure_prefect_database() -> str:
    """The Prefect server's database server, role and database (idempotent)."""
    _prepare_dirs()
    actions: list[str] = []
    _initdb_if_new(PREFECT, actions)
    _start(PREFECT, actions)
    name = config.PREFECT_DATABASE
    with _superuser(PREFECT.port) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(name)))
    with _superuser(PREFECT.port, name) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")  # Prefect's migrations need it
    return ", ".join(a.removeprefix(f"{PREFECT.name}: ") for a in actions) or "healthy, left running"


def stop(inst: Instance) -> bool:
    pid = postmaster_pid(inst)
    if pid is None:
        return False
    # Fast shutdown: roll back open transactions, disconnect clients, checkpoint.
    _pg_ctl(inst, "stop", "-m", "fast", "-w", "-t", "30", check=False)
    if procs.pid_alive(pid, "postgres"):
        # Immediate shutdown (SIGQUIT), then SIGKILL after a grace period.
        procs.terminate(pid, "postgres", grace=10, sig=signal.SIGQUIT)
    return True


# --- health checks (real queries) ---------------------------------------------
def check_primary() -> tuple[bool, str]:
    try:
        with psycopg.connect(config.pg_conninfo(PRIMARY.port), connect_timeout=3) as conn:
            in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    except (psycopg.Error, OSError, KeyError) as exc:
        return False, f"query as {config.PG_USER} failed: {str(exc).strip()[:120]}"
    if in_recovery:
        return False, "primary is in recovery"
    return True, f"SELECT as {config.PG_USER} ok, read-write"


def check_prefect() -> tuple[bool, str]:
    try:
        with psycopg.connect(config.prefect_conninfo(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except (psycopg.Error, OSError) as exc:
        return False, f"query as {config.PREFECT_DATABASE} failed: {str(exc).strip()[:120]}"
    return True, f"SELECT as {config.PREFECT_DATABASE} ok"


def check_replica() -> tuple[bool, str]:
    try:
        with psycopg.connect(config.pg_conninfo(REPLICA.port), connect_timeout=3) as conn:
            in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        with _superuser(REPLICA.port) as conn:
            row = conn.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()
    except (psycopg.Error, OSError, KeyError) as exc:
        return False, f"query failed: {str(exc).strip()[:120]}"
    if not in_recovery:
        return False, "not in recovery (promoted?)"
    status = row[0] if row else "no wal receiver"
    return status == "streaming", f"hot standby, wal receiver {status}"
