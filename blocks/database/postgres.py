"""The staging database: connection settings, client factory, backup storage."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Literal
from pathlib import Path
from urllib.parse import quote

import psycopg
from prefect.blocks.core import Block
from prefect.filesystems import LocalFileSystem, RemoteFileSystem, WritableFileSystem
from pydantic import Field, SecretStr, field_validator, model_validator

from blocks.validation import check_hostname, check_text, reject_unknown_fields


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
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = Field("prefer", description="libpq sslmode for the pipeline's own connections")
    pool_max: int = Field(100, ge=1, le=10_000, description="The app's pool size (DATABASE_MAX_CONNS)")
    statement_timeout_ms: int = Field(30_000, ge=100, le=2_147_483_647, description="statement_timeout for the pipeline's queries")
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

    _validate_hosts = field_validator("host", "replica_host")(check_hostname)
    _validate_text = field_validator("user", "pg_bin_dir")(check_text)
    _known_fields_only = model_validator(mode="before")(reject_unknown_fields)

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
        """host:port/dbname: what two environments sharing this database have in common."""
        return f"{self.host}:{self.port}/{self.dbname}"

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
        """Path of pg_dump/pg_restore/psql able to talk to a server of ``server_major``.

        pg_dump refuses servers newer than itself, so Debian's versioned directory for
        the server's major version is preferred over whatever is first on PATH.
        """
        candidates = [Path(self.pg_bin_dir) / name] if self.pg_bin_dir else []
        candidates.append(Path(f"/usr/lib/postgresql/{server_major}/bin") / name)
        on_path = shutil.which(name)
        if on_path:
            candidates.append(Path(on_path))
        for path in candidates:
            if path.is_file() and os.access(path, os.X_OK) and _tool_major(str(path)) >= server_major:
                return str(path)
        raise FileNotFoundError(f"no {name} for PostgreSQL {server_major} (tried {', '.join(map(str, candidates))})")

    def tool_env(self) -> dict[str, str]:
        """The process environment for pg_dump/pg_restore/psql: ours plus libpq's settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(self.libpq_env())
        # A dump must not stall behind a long lock; a restore fails fast (and atomically) instead of hanging.
        env["PGOPTIONS"] = f"-c lock_timeout={self.lock_timeout_ms} -c statement_timeout=0 -c client_min_messages=warning"
        env["PGCONNECT_TIMEOUT"] = "10"
        return env

    def backups(self) -> BackupStorage:
        """The backup storage, wrapped for streaming (see BackupStorage)."""
        return BackupStorage(self.backup_storage)


_TOOL_VERSION = re.compile(r"\) (\d+)")
_tool_majors: dict[str, int] = {}


def _tool_major(path: str) -> int:
    if path not in _tool_majors:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
        match = _TOOL_VERSION.search(out)
        _tool_majors[path] = int(match.group(1)) if match else 0
    return _tool_majors[path]


@dataclass
class StoredFile:
    name: str
    size: int


class BackupStorage:
    """Streams dumps into and out of the backup filesystem block without holding them in memory.

    A LocalFileSystem is used as a plain directory (pg_dump and pg_restore read and write the
    file themselves, no copy through Python); a RemoteFileSystem through its fsspec filesystem
    in chunks. Any other WritableFileSystem falls back to write_path/read_path, which hold the
    whole dump in memory: fine for small databases only.
    """

    CHUNK = 1 << 20

    def __init__(self, block: WritableFileSystem):
        self.block = block

    @property
    def local_dir(self) -> Path | None:
        if isinstance(self.block, LocalFileSystem):
            return Path(self.block.basepath or ".").expanduser().resolve()
        return None

    @property
    def fs(self):
        return getattr(self.block, "filesystem", None) if not isinstance(self.block, LocalFileSystem) else None

    def describe(self) -> str:
        return f"{type(self.block).__name__}({getattr(self.block, 'basepath', '')})"

    def local_path(self, name: str) -> Path | None:
        """The file's path when storage is a local directory (created if needed)."""
        if self.local_dir is None:
            return None
        self.local_dir.mkdir(parents=True, exist_ok=True)
        return self.local_dir / name

    def _remote(self, name: str) -> str:
        return self.block._resolve_path(name)

    def open_write(self, name: str):
        """A binary file object writing ``name`` (remote or fallback storage only)."""
        if self.fs is not None:
            return self.fs.open(self._remote(name), "wb", block_size=8 * self.CHUNK)
        return _BufferedWrite(self.block, name)

    def open_read(self, name: str):
        if self.local_dir is not None:
            return open(self.local_dir / name, "rb")
        if self.fs is not None:
            return self.fs.open(self._remote(name), "rb", block_size=8 * self.CHUNK)
        import io

        return io.BytesIO(self.block.read_path(name))

    def write_bytes(self, name: str, data: bytes) -> None:
        if self.local_dir is not None:
            path = self.local_path(name)
            tmp = path.with_name(path.name + ".partial")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        else:
            self.block.write_path(name, data)

    def read_bytes(self, name: str) -> bytes:
        with self.open_read(name) as fh:
            return fh.read()

    def rename(self, src: str, dst: str) -> None:
        if self.local_dir is not None:
            os.replace(self.local_dir / src, self.local_dir / dst)
        elif self.fs is not None:
            self.fs.mv(self._remote(src), self._remote(dst))
        else:
            self.block.write_path(dst, self.block.read_path(src))

    def delete(self, name: str) -> None:
        if self.local_dir is not None:
            (self.local_dir / name).unlink(missing_ok=True)
        elif self.fs is not None:
            self.fs.rm(self._remote(name))
        else:
            raise NotImplementedError(f"{type(self.block).__name__} cannot delete files")

    def list(self) -> list[StoredFile]:
        if self.local_dir is not None:
            if not self.local_dir.is_dir():
                return []
            return [StoredFile(e.name, e.stat().st_size) for e in os.scandir(self.local_dir) if e.is_file()]
        if self.fs is not None:
            base = self._remote("")
            if not self.fs.exists(base):
                return []
            return [
                StoredFile(info["name"].rstrip("/").rsplit("/", 1)[-1], int(info.get("size") or 0))
                for info in self.fs.ls(base, detail=True)
                if info.get("type") != "directory"
            ]
        raise NotImplementedError(f"{type(self.block).__name__} cannot list files")

    def free_bytes(self) -> int | None:
        """Free space where backups are written; None when the storage cannot say (remote)."""
        if self.local_dir is None:
            return None
        probe = self.local_dir
        while not probe.exists():
            probe = probe.parent
        return shutil.disk_usage(probe).free


class _BufferedWrite:
    """Collects a dump for a filesystem block that only offers write_path(bytes)."""

    def __init__(self, block: WritableFileSystem, name: str):
        self.block, self.name, self.parts = block, name, []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def close(self) -> None:
        self.block.write_path(self.name, b"".join(self.parts))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
