"""The dry run lists pending migrations from the build's review: the new image is never run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tasks.core.migration_review import MigrationClass, MigrationReview, ReviewedMigration
from tasks.database.pending import list_pending_migrations_read_only, pending_rows

pytestmark = pytest.mark.unit


def test_pending_rows_are_the_reviewed_migrations_newer_than_the_database():
    review = MigrationReview(
        current_version=2,
        target_version=4,
        pending=[
            ReviewedMigration(version=3, name="event_severity", classification=MigrationClass.EXPAND),
            ReviewedMigration(version=4, name="rename_error_stack", classification=MigrationClass.CONTRACT),
        ],
    )
    assert pending_rows(review) == [
        {"version": 3, "name": "event_severity", "classification": "expand"},
        {"version": 4, "name": "rename_error_stack", "classification": "contract"},
    ]
    assert pending_rows(None) == []
    assert list_pending_migrations_read_only.fn(review) == pending_rows(review)  # no run: no artifact, same rows


def test_the_dry_runs_listing_takes_no_image_no_target_and_no_environment():
    """Nothing it is given could start a container or carry the app's secrets."""
    tree = ast.parse((Path(__file__).parents[1] / "tasks" / "database" / "pending.py").read_text())
    (task,) = [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "list_pending_migrations_read_only"]
    assert [a.arg for a in task.args.args] == ["review"]
