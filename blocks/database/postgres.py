"""The staging database block: connection settings, the connections and tool settings it hands out."""

from __future__ import annotations

import os
import re
from typing import Literal
from urllib.parse import quote

import psycopg
from prefect.blocks.core import Block
from prefect.filesystems import LocalFileSystem, RemoteFileSystem
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from blocks.database.backup_storage import BackupStorage
from blocks.database.pg_binaries import find_pg_tool
from blocks.validation import check_hostname, check_text, reject_unknown_fields
from tasks.core.identity import database_identity, identity_key
from tasks.core.net import is_loopback_host


class PostgresDatabase(Block):
    """A PostgreSQL primary with a read-only replica, and where its backups are kept."""

    _block_type_name = "Postgres Database"
    _block_type_slug = "architect-postgres-database"
    _description = (
        "Staging PostgreSQL primary and replica (password as a secret), timeouts, "
        "and the filesystem block that stores pre-deployment backups."
    )

    host: str = Field("127.0.0.1", description="Primary host")
    port: int = Field(5432, ge=1, le=65535, description="Primary port")
    replica_host: str | None = Field(None, description="Read-only replica host; empty when there is none")
    replica_port: int = Field(5432, ge=1, le=65535, description="Replica port")
    dbname: str = Field("architect_staging", description="Database name")
    user: str = Field("architect", description="Role that owns the app's schema")
    password: SecretStr = Field(description="Password of that role")
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = Field(
        None,
        description="libpq sslmode of every connection; empty: verify-full, or prefer when every host is "
        "loopback. Off loopback only verify-full, or verify-ca with sslmode_reason",
    )
    sslmode_reason: str | None = Field(
        None, description="Why verify-ca (no hostname check) is enough for this database; needed for verify-ca"
    )
    pool_max: int = Field(100, ge=1, le=10_000, description="The app's pool size (DATABASE_MAX_CONNS)")
    statement_timeout_ms: int = Field(
        30_000, ge=100, le=2_147_483_647, description="statement_timeout for the pipeline's queries"
    )
    lock_timeout_ms: int = Field(5_000, ge=100, le=2_147_483_647, description="lock_timeout for the pipeline's queries")
    max_replication_lag_s: float = Field(30.0, gt=0, le=86_400, description="Largest replica lag preflight accepts")
    # Concrete types, not the WritableFileSystem interface: the UI offers both and block
    # registration refuses interfaces.
    backup_storage: LocalFileSystem | RemoteFileSystem = Field(
        default_factory=lambda: LocalFileSystem(basepath="~/.architect-deploy/backups"),
        description="Filesystem block for backups (local directory by default; any fsspec remote works)",
    )
    retention_hours: float = Field(24.0, gt=0, le=24 * 366, description="Backups older than this are pruned")
    backup_size_ratio: float = Field(
        1.0, gt=0, le=100, description="Free space preflight wants for a backup, as a multiple of pg_database_size"
    )
    restore_maintenance_work_mem_mb: int = Field(
        256, ge=1, le=2_097_151, description="maintenance_work_mem of the restore session (its index builds)"
    )
    pg_bin_dir: str | None = Field(
        None, description="Directory of pg_dump/pg_restore/psql; empty: the one matching the server's major version"
    )

    _identity: tuple[tuple[str, int, str], str] | None = PrivateAttr(None)

    _validate_hosts = field_validator("host", "replica_host")(check_hostname)
    _validate_text = field_validator("user", "pg_bin_dir", "sslmode_reason")(check_text)
    _known_fields_only = model_validator(mode="before")(reject_unknown_fields)

    @model_validator(mode="after")
    def _tls_off_loopback(self) -> PostgresDatabase:
        # Off this machine the password and every row cross the network: the server's certificate
        # must be verified, with its name (verify-full) or, for a stated reason, without (verify-ca).
        remote = [h for h in (self.host, self.replica_host) if h and not is_loopback_host(h)]
        if self.sslmode is None:
            self.sslmode = "verify-full" if remote else "prefer"
        if remote and self.sslmode not in ("verify-full", "verify-ca"):
            raise ValueError(f"sslmode: {self.sslmode} is refused for {remote[0]} (off loopback): use verify-full")
        if self.sslmode == "verify-ca" and not (self.sslmode_reason or "").strip():
            raise ValueError("sslmode_reason: verify-ca skips the hostname check; write why it is enough")
        return self

    @field_validator("dbname")
    @classmethod
    def _dbname(cls, value: str) -> str:
        # It goes into DATABASE_URL's path unquoted.
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,63}", value):
            raise ValueError(f"{value!r} is not a database name (letters, digits, '_', '-', at most 63)")
        return value

    def connect(self, *, replica: bool = False, autocommit: bool = True) -> psycopg.Connection:
        """A new connection to the primary (or the replica) with the block's timeouts."""
        host, port = (self.replica_host, self.replica_port) if replica else (self.host, self.port)
        if host is None:
            raise ValueError("this database has no replica configured")
        return psycopg.connect(
            host=host,
            port=port,
            dbname=self.dbname,
            user=self.user,
            password=self.password.get_secret_value(),
            sslmode=self.sslmode,
            connect_timeout=5,
            autocommit=autocommit,
            options=f"-c statement_timeout={self.statement_timeout_ms} -c lock_timeout={self.lock_timeout_ms}",
        )

    def identity(self) -> str:
        """host:port/dbname with the host resolved (``loopback:55432/architect_staging``): the same
        for every spelling of one server, so two environments sharing this database share it."""
        # Resolved once per address (a block instance lives for one run): a DNS answer that
        # changed mid-run must not move the run's backups or journal to another namespace.
        address = (self.host, self.port, self.dbname)
        if self._identity is None or self._identity[0] != address:
            self._identity = (address, database_identity(*address))
        return self._identity[1]

    def backup_namespace(self) -> str:
        """Where this database's backups live inside ``backup_storage`` (one directory per database);
        equal to ``DeployIdentity.database_key``."""
        return identity_key(self.identity(), self.dbname)

    def libpq_env(self) -> dict[str, str]:
        """Environment for pg_dump/pg_restore: the password travels here, never on a command line."""
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGDATABASE": self.dbname,
            "PGUSER": self.user,
            "PGPASSWORD": self.password.get_secret_value(),
            "PGSSLMODE": self.sslmode,
        }

    def app_database_url(self) -> str:
        """The DATABASE_URL the app is given (a secret: it holds the password)."""
        password = quote(self.password.get_secret_value(), safe="")
        return (
            f"postgres://{quote(self.user, safe='')}:{password}@{self.host}:{self.port}/"
            f"{self.dbname}?sslmode={'disable' if self.sslmode in ('disable', 'prefer', 'allow') else self.sslmode}"
        )

    def pg_tool(self, name: str, server_major: int) -> str:
        """Path of pg_dump/pg_restore/psql able to talk to a server of ``server_major``
        (``pg_bin_dir`` first; see ``blocks.database.pg_binaries``)."""
        return find_pg_tool(name, server_major, self.pg_bin_dir)

    def tool_env(self) -> dict[str, str]:
        """The process environment for pg_dump/pg_restore/psql: ours plus libpq's settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(self.libpq_env())
        # A dump must not stall behind a long lock; a restore fails fast (and atomically) instead of hanging.
        env["PGOPTIONS"] = (
            f"-c lock_timeout={self.lock_timeout_ms} -c statement_timeout=0 -c client_min_messages=warning"
        )
        env["PGCONNECT_TIMEOUT"] = "10"
        return env

    def backups(self) -> BackupStorage:
        """This database's namespace of the backup storage, wrapped for streaming (see BackupStorage).
        Backups of the flat layout of earlier releases are still found there by name."""
        return BackupStorage(self.backup_storage, namespace=self.backup_namespace())
