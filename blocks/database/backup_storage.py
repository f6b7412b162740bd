"""Where pre-deployment backups are kept: a Prefect filesystem block, used for streaming.

``BackupStorage`` adapts the ``backup_storage`` block of ``PostgresDatabase`` (a local directory
or any fsspec remote) to what backups and restores need: files written and read as streams,
renamed, listed, deleted, and the free space where they go.

Each database has its own namespace (a directory named ``PostgresDatabase.backup_namespace()``),
so one database's retention never sees another's backups. Earlier releases kept every backup
flat at the storage's root; a name that is not in the namespace is still read from there.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from prefect.filesystems import LocalFileSystem, WritableFileSystem


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

    def __init__(self, block: WritableFileSystem, namespace: str = ""):
        self.block = block
        self.namespace = namespace.strip("/")

    def root(self) -> BackupStorage:
        """The storage's root: the flat layout where earlier releases kept every database's backups."""
        return BackupStorage(self.block)

    def _rel(self, name: str) -> str:
        return f"{self.namespace}/{name}" if self.namespace else name

    @property
    def local_dir(self) -> Path | None:
        if isinstance(self.block, LocalFileSystem):
            base = Path(self.block.basepath or ".").expanduser().resolve()
            return base / self.namespace if self.namespace else base
        return None

    @property
    def fs(self):
        return getattr(self.block, "filesystem", None) if not isinstance(self.block, LocalFileSystem) else None

    def describe(self) -> str:
        where = str(getattr(self.block, "basepath", "") or "")
        if self.namespace:
            where = f"{where.rstrip('/')}/{self.namespace}"
        return f"{type(self.block).__name__}({where})"

    def _here(self, name: str) -> bool:
        """Whether ``name`` is in this namespace (or, without one, at the root)."""
        if self.local_dir is not None:
            return (self.local_dir / name).exists()
        if self.fs is not None:
            return bool(self.fs.exists(self._remote(name)))
        try:
            self.block.read_path(self._rel(name))
        except (FileNotFoundError, ValueError, OSError):
            return False
        return True

    def _for_reading(self, name: str) -> BackupStorage:
        """Where ``name`` is read from: this namespace, or the flat layout if only that has it."""
        if self.namespace and not self._here(name) and self.root()._here(name):
            return self.root()
        return self

    def exists(self, name: str) -> bool:
        """Whether ``name`` can be read (from the namespace, or the flat layout of earlier releases)."""
        return self._for_reading(name)._here(name)

    def local_path(self, name: str) -> Path | None:
        """The file's path when storage is a local directory: in the namespace (created if needed),
        or in the flat layout when only that holds ``name``."""
        source = self._for_reading(name)
        if source is not self:
            return source.local_path(name)
        if self.local_dir is None:
            return None
        self.local_dir.mkdir(parents=True, exist_ok=True)
        return self.local_dir / name

    def _remote(self, name: str) -> str:
        return self.block._resolve_path(self._rel(name))

    def open_write(self, name: str):
        """A binary file object writing ``name`` (remote or fallback storage only)."""
        if self.fs is not None:
            return self.fs.open(self._remote(name), "wb", block_size=8 * self.CHUNK)
        return _BufferedWrite(self.block, self._rel(name))

    def open_read(self, name: str):
        source = self._for_reading(name)
        if source is not self:
            return source.open_read(name)
        if self.local_dir is not None:
            return open(self.local_dir / name, "rb")
        if self.fs is not None:
            return self.fs.open(self._remote(name), "rb", block_size=8 * self.CHUNK)
        return io.BytesIO(self.block.read_path(self._rel(name)))

    def write_bytes(self, name: str, data: bytes) -> None:
        if self.local_dir is not None:
            path = self.local_path(name)
            assert path is not None
            tmp = path.with_name(path.name + ".partial")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        else:
            self.block.write_path(self._rel(name), data)

    def read_bytes(self, name: str) -> bytes:
        with self.open_read(name) as fh:
            return fh.read()

    def rename(self, src: str, dst: str) -> None:
        if self.local_dir is not None:
            os.replace(self.local_dir / src, self.local_dir / dst)
        elif self.fs is not None:
            self.fs.mv(self._remote(src), self._remote(dst))
        else:
            self.block.write_path(self._rel(dst), self.block.read_path(self._rel(src)))

    def delete(self, name: str) -> None:
        """Delete ``name`` in this namespace only (the flat layout's files through ``root()``)."""
        if self.local_dir is not None:
            (self.local_dir / name).unlink(missing_ok=True)
        elif self.fs is not None:
            self.fs.rm(self._remote(name))
        else:
            raise NotImplementedError(f"{type(self.block).__name__} cannot delete files")

    def remove_if_empty(self) -> None:
        """Remove the namespace's directory if nothing is in it (a failed first backup leaves none behind)."""
        if self.namespace and self.local_dir is not None:
            with contextlib.suppress(OSError):  # not empty, or already gone
                self.local_dir.rmdir()

    def list(self) -> list[StoredFile]:
        """The files of this namespace (without one: of the root; directories, namespaces included, are left out)."""
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
