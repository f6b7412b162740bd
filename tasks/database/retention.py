"""Which backups some run may still restore, read from the Prefect API before anything is pruned.

A backup is still needed while its run can roll back to it: a run that is running, paused for
sign-off or being cancelled, or a run that died with its journal open (the next run restores it).
Both are found on the server:

- the latest entry of every deploy journal (``deploy-journal-*``): an open one names its backup;
- every journal entry and backup report (``database-backup``) of the runs still going, which
  covers a run between its backup and its first journal entry.

The journal's artifact format is tasks/release/journal.py's; it is read here (not imported from
there) because tasks/release sits above tasks/database.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactCollectionFilter,
    ArtifactCollectionFilterKey,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType

JOURNAL_KEY_PREFIX = "deploy-journal-"
BACKUP_ARTIFACT_KEY = "database-backup"
_BACKUP_DESCRIPTION = "Backup "
# A run in any of these may still restore its backup (CANCELLING: its rollback is running).
LIVE_STATES = [StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING]
_PAGE = 200


def backup_description(name: str) -> str:
    """The description of a backup's report artifact; ``backup_named_by`` reads the name back."""
    return f"{_BACKUP_DESCRIPTION}{name}"


def journal_body(markdown: Any) -> str | None:
    """The JSON of a journal entry's artifact, or None for a closed journal."""
    body = str(markdown).split("```json\n", 1)[-1].rsplit("\n```", 1)[0]
    return None if body.strip() == "null" else body


def _journal_backup(markdown: Any) -> str | None:
    if (body := journal_body(markdown)) is None:
        return None
    try:
        name = json.loads(body).get("backup")
    except (ValueError, AttributeError):
        return None  # not a journal entry this release can read: it names nothing we know
    return name if isinstance(name, str) else None


def backup_named_by(key: str | None, description: str | None, data: Any) -> str | None:
    """The backup an artifact names: a journal entry's ``backup`` or a backup report's name."""
    if key and key.startswith(JOURNAL_KEY_PREFIX):
        return _journal_backup(data)
    if key == BACKUP_ARTIFACT_KEY and description and description.startswith(_BACKUP_DESCRIPTION):
        return description.removeprefix(_BACKUP_DESCRIPTION).split()[0]
    return None


def _pages(read: Callable[[int], list[Any]]) -> Iterable[Any]:
    offset = 0
    while page := read(offset):
        yield from page
        if len(page) < _PAGE:
            return
        offset += len(page)


def referenced_backups() -> set[str]:
    """Names of every backup an open journal or a live run refers to (raises if the API fails)."""
    names: set[str] = set()
    with get_client(sync_client=True) as client:
        journals = ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(like_=JOURNAL_KEY_PREFIX))
        for latest in _pages(
            lambda offset: client.read_latest_artifacts(artifact_filter=journals, limit=_PAGE, offset=offset)
        ):
            if name := backup_named_by(latest.key, latest.description, latest.data):
                names.add(name)
        live = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=LIVE_STATES)))
        for artifact in _pages(lambda offset: client.read_artifacts(flow_run_filter=live, limit=_PAGE, offset=offset)):
            if name := backup_named_by(artifact.key, artifact.description, artifact.data):
                names.add(name)
    return names
