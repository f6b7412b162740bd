"""Copies of the sandbox's blocks that a test may change without touching the originals."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager


def unsaved(block, **changes):
    """A copy of ``block`` with ``changes`` that is no saved block: saved inside its parent (or
    under a new name), never over the original."""
    copy = block.model_copy(update=changes)
    copy._block_document_id = None
    copy._block_document_name = None
    return copy


def delete_environment(name: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        doc = client.read_block_document_by_name(name, "architect-staging-environment")
        client.delete_block_document(doc.id)


@contextmanager
def saved_environment(base, prefix: str = "test", **changes) -> Iterator[str]:
    """``base`` with ``changes`` saved as an environment block of a fresh name; its name; deleted afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    unsaved(base, **changes).save(name, overwrite=True)
    try:
        yield name
    finally:
        delete_environment(name)
