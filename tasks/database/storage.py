"""Backups in their storage block: naming, listing, pruning, and streaming dumps to and from it.

A backup is ``pre-deployment-<unix time>[-n].dump`` plus ``<name>.manifest.json``; a dump being
written is ``.partial`` until it is complete. Files with other names are never touched. Storage
that is not a local directory is streamed through in ``BackupStorage.CHUNK`` pieces.

Each database's backups are in its own namespace of the storage (``PostgresDatabase.backups()``);
those of the flat layout of earlier releases stay where they are, found by name and pruned by the
same rules. Retention (``prune_backups``) never deletes the newest complete backup of a namespace
(nor of the flat layout), nor any backup that an open journal or a live run still refers to.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Set
from datetime import datetime, timedelta

from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from blocks.database import BackupStorage, PostgresDatabase
from tasks.core.errors import one_line
from tasks.core.models import utcnow
from tasks.database import retention


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger (the warning shows in the run), or this module's outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


PREFIX = "pre-deployment-"
_NAME = re.compile(rf"^({PREFIX}(\d+)(?:-\d+)?)\.(dump|manifest\.json)(\.partial)?$")


def storage_files(store: BackupStorage) -> dict[str, dict]:
    """Backups in storage by name: {'ts': unix time, 'files': [...], 'complete': dump+manifest}."""
    found: dict[str, dict] = {}
    for f in store.list():
        match = _NAME.match(f.name)
        if not match:
            continue  # never touch files this module did not write
        entry = found.setdefault(match.group(1), {"ts": int(match.group(2)), "files": [], "parts": set()})
        entry["files"].append(f.name)
        if not match.group(4):
            entry["parts"].add(match.group(3))
    for entry in found.values():
        entry["complete"] = entry.pop("parts") == {"dump", "manifest.json"}
    return found


def prune_backups(
    database: PostgresDatabase, keep: Set[str] = frozenset(), referenced: Set[str] | None = None
) -> list[str]:
    """Delete this database's backups older than the retention, judged by the unix time in their name.

    Never the ones in ``keep``, never the newest complete backup of the database (whatever its
    age), never one that an open journal or a live run refers to (``referenced``, read from the
    Prefect API when not given). When the API cannot say, nothing is pruned: a backup some paused
    run will need outweighs the disk it holds. Backups of the flat layout of earlier releases
    (whose database is not recorded) are pruned by the same rules, keeping their newest.
    """
    if referenced is None:
        try:
            referenced = retention.referenced_backups()
        except Exception as exc:  # any failure to read the server: keep everything
            _logger().warning("not pruning backups: cannot read which ones runs refer to (%s)", one_line(exc))
            return []
    cutoff = (utcnow() - timedelta(hours=database.retention_hours)).timestamp()
    spared = set(keep) | set(referenced)
    store = database.backups()
    pruned = _prune(store, spared, cutoff)
    if store.namespace:
        pruned += _prune(store.root(), spared, cutoff)
    return pruned


def _prune(store: BackupStorage, spared: set[str], cutoff: float) -> list[str]:
    found = storage_files(store)
    complete = [n for n, e in found.items() if e["complete"]]
    newest = max(complete, key=lambda n: (found[n]["ts"], n), default=None)
    pruned = []
    for name, entry in sorted(found.items()):
        if name in spared or name == newest or entry["ts"] >= cutoff:
            continue
        for file in entry["files"]:
            store.delete(file)
        pruned.append(name)
    return pruned


def free_name(store: BackupStorage, now: datetime) -> str:
    """``pre-deployment-<unix time>``, with ``-<n>`` when that name is taken."""
    # Taken in the flat layout too: a name must find one backup, wherever it is read from.
    taken = set(storage_files(store)) | (set(storage_files(store.root())) if store.namespace else set())
    name, n = f"{PREFIX}{int(now.timestamp())}", 1
    while name in taken:  # two backups within one second
        n += 1
        name = f"{PREFIX}{int(now.timestamp())}-{n}"
    return name


def discard(store: BackupStorage, name: str) -> None:
    """Delete a file if it can be deleted: cleanup after a failure must not hide that failure."""
    with contextlib.suppress(OSError, NotImplementedError):
        store.delete(name)
    store.remove_if_empty()


def copy_stream(src, dst, counter: list) -> None:
    """Copy src to dst in chunks; counter[0] gets the bytes copied, counter[1] an error, if any."""
    try:
        with dst:
            while chunk := src.read(BackupStorage.CHUNK):
                dst.write(chunk)
                counter[0] += len(chunk)
    except Exception as exc:  # recorded for the caller's thread, then re-raised
        counter[1:] = [exc]
        raise


def copy_stream_quietly(src, dst) -> None:
    """Copy a stored dump into a pg_restore's stdin; a reader that stops early is not an error here."""
    try:
        copy_stream(src, dst, [0, None])
    except BrokenPipeError:
        pass  # pg_restore stopped reading (it failed); its exit code says why
    finally:
        src.close()


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    raise AssertionError("unreachable")
