"""Which pg_dump, pg_restore and psql can talk to a given PostgreSQL server.

pg_dump refuses servers newer than itself, so Debian's versioned directory for the server's
major version is preferred over whatever is first on PATH. Each binary's version is asked once
per process (``--version``) and remembered: binaries do not change under a running worker.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

VERSION_OUTPUT = re.compile(r"\) (\d+)")  # "pg_dump (PostgreSQL) 15.18 (Debian ...)"


@functools.cache
def tool_major(path: str) -> int:
    """The major version ``path --version`` reports; 0 when it reports none."""
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    match = VERSION_OUTPUT.search(out)
    return int(match.group(1)) if match else 0


def find_pg_tool(name: str, server_major: int, bin_dir: str | None = None) -> str:
    """Path of ``name`` (pg_dump, pg_restore, psql) of at least ``server_major``: from ``bin_dir``
    if given, else Debian's directory for that major version, else PATH."""
    candidates = [Path(bin_dir) / name] if bin_dir else []
    candidates.append(Path(f"/usr/lib/postgresql/{server_major}/bin") / name)
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK) and tool_major(str(path)) >= server_major:
            return str(path)
    raise FileNotFoundError(f"no {name} for PostgreSQL {server_major} (tried {', '.join(map(str, candidates))})")
