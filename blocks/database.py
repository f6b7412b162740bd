"""The staging database: connection settings, client factory, backup storage."""

from __future__ import annotations

from urllib.parse import quote

import psycopg
from pydantic import Field, SecretStr
from prefect.blocks.core import Block
from prefect.filesystems import LocalFileSystem, RemoteFileSystem


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
    sslmode: str = Field("prefer", description="libpq sslmode for the pipeline's own connections")
    pool_max: int = Field(100, ge=1, le=10_000, description="The app's pool size (DATABASE_MAX_CONNS)")
    statement_timeout_ms: int = Field(30_000, ge=100, description="statement_timeout for the pipeline's queries")
    lock_timeout_ms: int = Field(5_000, ge=100, description="lock_timeout for the pipeline's queries")
    max_replication_lag_s: float = Field(30.0, gt=0, description="Largest replica lag preflight accepts")
    # Concrete types, not the WritableFileSystem interface: the UI offers both and block
    # registration refuses interfaces.
    backup_storage: LocalFileSystem | RemoteFileSystem = Field(
        default_factory=lambda: LocalFileSystem(basepath="~/.architect-deploy/backups"),
        description="Filesystem block for backups (local directory by default; any fsspec remote works)",
    )
    retention_hours: float = Field(24.0, gt=0, description="Backups older than this are pruned")

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
