"""Making Prefect artifacts: only inside a task run, and never with a secret in them.

Gates are also called bare (``task.fn(...)`` in tests and benchmarks); an artifact made there
would belong to no run, so the gate only returns its report.

``markdown_artifact`` and ``table_artifact`` are the one way text reaches an artifact: every
string in it passes the run's redactor first (a replica's log line, a tool's stderr, a response
body can quote a secret), whoever made the text.
"""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import TaskRunContext

from tasks.core.redaction import redact, redact_data


def in_task_run() -> bool:
    """True inside a Prefect task run, where an artifact has a run to belong to."""
    return TaskRunContext.get() is not None


def markdown_artifact(markdown: str, *, key: str | None = None, description: str | None = None) -> UUID:
    """A markdown artifact of the current run, secrets masked."""
    made = create_markdown_artifact(
        markdown=redact(markdown), key=key, description=redact(description) if description is not None else None
    )
    return cast(UUID, made)  # called from sync code, it returns the id (not a coroutine)


def table_artifact(table: Any, *, key: str | None = None, description: str | None = None) -> UUID:
    """A table artifact (rows as dicts or lists) of the current run, every string cell masked."""
    made = create_table_artifact(
        table=cast(Any, redact_data(table)),
        key=key,
        description=redact(description) if description is not None else None,
    )
    return cast(UUID, made)  # called from sync code, it returns the id (not a coroutine)
