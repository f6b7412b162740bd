"""The Docker target's revision history: a JSON file on the worker's disk.

A Docker engine keeps no rollout history of its own (Kubernetes keeps ReplicaSets), so each
rollout is recorded here as a numbered revision, and a rollback reads where to go back to.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tasks.core.errors import NoEarlierRevision
from tasks.core.models import Revision


class RevisionHistory:
    """The revisions rolled out, oldest first, in the file at ``path``."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    def revisions(self) -> list[Revision]:
        if not self.path.exists():
            return []
        return [Revision.model_validate(item) for item in json.loads(self.path.read_text())]

    def find(self, number: int) -> Revision | None:
        return next((r for r in self.revisions() if r.number == number), None)

    def record(self, image: str, version: str) -> Revision:
        """Add the next revision (numbered after the newest) and return it."""
        revisions = self.revisions()
        revision = Revision(number=(revisions[-1].number + 1) if revisions else 1, image=image, version=version)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([r.model_dump(mode="json") for r in [*revisions, revision]], indent=1))
        os.replace(tmp, self.path)  # atomic: a killed deploy never leaves half a history
        return revision

    def undo_target(self, to_revision: int | None) -> Revision:
        """The revision an undo goes back to: ``to_revision``, or the one before the newest."""
        if to_revision is None:
            revisions = self.revisions()
            if len(revisions) < 2:
                raise NoEarlierRevision("there is no earlier revision to roll back to")
            return revisions[-2]
        target = self.find(to_revision)
        if target is None:
            raise NoEarlierRevision(f"no revision {to_revision} to roll back to: it is not in the history")
        return target
