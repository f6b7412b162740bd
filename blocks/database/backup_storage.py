"""Where pre-deployment backups are kept: a Prefect filesystem block, used for streaming.

``BackupStorage`` adapts the ``backup_storage`` block of ``PostgresDatabase`` (a local directory
or any fsspec remote) to what backups and restores need: files written and read as streams,
renamed, listed, deleted, and the free space where they go.
"""

from __future__ import annotations

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
