"""Deploys of the reference app to the sandbox, and the known states a sandbox test starts from.

``ensure_good_release`` and ``ensure_database_at_schema_2`` set the state up whatever the tests
before left behind, and check that it holds afterwards; tests/conftest.py wraps them in the
``deployed_good_release`` and ``database_at_schema_2`` fixtures.
"""

from __future__ import annotations

from sandbox import config
from tests.support.app_state import good_release_problems, schema_version

GOOD = ("v3.1.0", "3.1.0")
GOOD_WITH_MIGRATION = ("v3.2.0", "3.2.0")
MIGRATION_003_DOWN = config.REPO_ROOT / "sandbox" / "architect-api" / "migrations" / "003_event_severity.down.sql"


def deploy(git_ref: str, version: str | None, environment: str = "sandbox", **parameters):
    """Run the staging-deploy flow in this process; returns its final State."""
    from flows.staging_deploy import staging_deploy

    parameters.setdefault("load_duration_s", 4.0)  # short profiles: the tests are about outcomes
    # One profile: 500 req/s (medium) on a busy 2-core machine is sometimes "generator saturated",
    # which fails the run for a reason the test is not about. The load gate's own tests cover it.
    parameters.setdefault("load_profiles", ["light"])
    parameters.setdefault("skip_signoff", True)  # the sign-off tests resume the pause themselves
    return staging_deploy(git_ref=git_ref, version=version, environment=environment, return_state=True, **parameters)


def ensure_good_release(sandbox_env) -> str:
    """The good release v3.1.0, and nothing else, serving healthy; deployed unless that already holds."""
    good = GOOD[1]
    if problems := good_release_problems(sandbox_env, good):
        state = deploy(*GOOD)
        assert state.is_completed(), f"deploying the good release ({'; '.join(problems)}) failed: {state.message}"
        left = good_release_problems(sandbox_env, good)
        assert not left, f"the good release was deployed but does not serve alone: {'; '.join(left)}"
    return good


def ensure_database_at_schema_2(database) -> None:
    """The staging database as v3.1.0 left it: schema 2, migration 003 reverted if it was applied.

    The good release runs on schema 2 and 3 alike (003 only adds a defaulted column), so this is
    safe while it serves. A schema above 3 is a migration this suite cannot undo: fail, naming it.
    """
    current = schema_version(database)
    assert 2 <= current <= 3, f"the sandbox database is at schema {current}; only 2 and 3 can be set back to 2 here"
    if current == 3:
        with database.connect(autocommit=False) as conn:
            conn.execute(MIGRATION_003_DOWN.read_text())
            conn.execute("DELETE FROM schema_migrations WHERE version > 2")
            conn.commit()
    with database.connect() as conn:
        severity = conn.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' "
            "AND table_name = 'events' AND column_name = 'severity'"
        ).fetchone()[0]
    assert schema_version(database) == 2 and severity == 0, "the database is not at schema 2"
