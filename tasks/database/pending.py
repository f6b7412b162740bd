"""The dry run's pending migrations, without running the new image.

The build's migration review (``tasks.database.migration_lint.review_migrations``) already read
the release's migration files from its source checkout (the tree the image's embedded migrations
are built from) and the database's applied version over the pipeline's own read-only connection.
The dry run lists those: running the new, unreviewed image's ``migrate status`` would hand it the
database password.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.core.artifacts import in_task_run, table_artifact
from tasks.core.migration_review import MigrationReview


def pending_rows(review: MigrationReview | None) -> list[dict[str, Any]]:
    """One row per migration newer than the database's version, as ``migrate status --json`` lists them."""
    if review is None:
        return []
    return [{"version": m.version, "name": m.name, "classification": m.classification.value} for m in review.pending]


@task(cache_policy=NO_CACHE)
def list_pending_migrations_read_only(review: MigrationReview | None) -> list[dict[str, Any]]:
    """The migrations a deploy would apply (a table artifact); nothing is run, nothing is changed."""
    pending = pending_rows(review)
    if in_task_run():
        current = f" (database at schema {review.current_version})" if review is not None else ""
        table_artifact(
            key="dry-run-migrations",
            table=pending or [{"version": "", "name": "(none pending)", "classification": ""}],
            description=f"Migrations a deploy would apply{current}; read from the release's source, nothing was run",
        )
    return pending
