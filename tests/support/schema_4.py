"""Putting the sandbox database back to schema 3 after a release that migrated it to 4.

The suite's known states are schema 2 and 3 (tests/support/deploys.py). A test that deploys a
release with a migration 004 (v3.2.1-purge, v3.3.0) reverts it with the release's own down file
and its schema_migrations row, so every test after it starts from a state the suite knows.
"""

from __future__ import annotations

from tests.support.app_state import schema_version
from tests.support.release_patches import added_files


def back_to_schema_3(database, patch: str) -> None:
    """Revert the 004 of ``patch`` if it was applied; the data it deleted is not brought back."""
    if schema_version(database) < 4:
        return
    [down] = [
        sql
        for path, sql in added_files(patch).items()
        if path.startswith("migrations/004_") and path.endswith(".down.sql")
    ]
    with database.connect(autocommit=False) as conn:
        conn.execute(down)
        conn.execute("DELETE FROM schema_migrations WHERE version = 4")
        conn.commit()
    assert schema_version(database) == 3, "the database is not back at schema 3"
