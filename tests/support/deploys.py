"""Deploys of the reference app to the sandbox, and the known states a sandbox test starts from.

``ensure_good_release`` and ``ensure_database_at_schema_2`` set the state up whatever the tests
before left behind, and check that it holds afterwards; tests/conftest.py wraps them in the
``deployed_good_release`` and ``database_at_schema_2`` fixtures.
"""

from __future__ import annotations

from sandbox import config
from tests.support.app_state import good_release_problems, schema_version
from tests.support.release_patches import RELEASES, added_files

GOOD = ("v3.1.0", "3.1.0")
GOOD_WITH_MIGRATION = ("v3.2.0", "3.2.0")
MIGRATIONS_DIR = config.REPO_ROOT / "sandbox" / "architect-api" / "migrations"


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


def down_migrations() -> dict[tuple[int, str], str]:
    """``(version, name) -> down SQL`` of every migration the suite's releases can apply: the app's
    own and each release patch's (two releases may each have their own 004)."""
    files = {f"migrations/{f.name}": f.read_text() for f in MIGRATIONS_DIR.glob("*.down.sql")}
    for patch in sorted(RELEASES.glob("*.patch")):
        files.update({path: sql for path, sql in added_files(patch.name).items() if path.endswith(".down.sql")})
    downs = {}
    for path, sql in files.items():
        stem = path.removeprefix("migrations/").removesuffix(".down.sql")
        version, _, name = stem.partition("_")
        downs[(int(version), name)] = sql
    return downs


def ensure_database_at_schema_2(database) -> None:
    """The staging database as v3.1.0 left it: schema 2, every later migration reverted.

    The good release runs on schema 2 and on the later schemas the suite leaves (each added
    column is defaulted, each added table unused by it), so this is safe while it serves. Each
    applied migration above 2 is reverted, newest first, with its own down file, found by its
    version and name in schema_migrations; one the suite does not know fails, naming it.
    """
    with database.connect() as conn:
        applied = (
            conn.execute(
                "SELECT version, name FROM schema_migrations WHERE version > 2 ORDER BY version DESC"
            ).fetchall()
            if schema_version(database) > 2
            else []
        )
    downs = down_migrations() if applied else {}
    unknown = [f"{v:03d}_{n}" for v, n in applied if (v, n) not in downs]
    assert not unknown, f"the sandbox database has migrations this suite cannot revert: {unknown}"
    for version, name in applied:
        with database.connect(autocommit=False) as conn:
            conn.execute(downs[(version, name)])
            conn.execute("DELETE FROM schema_migrations WHERE version = %s", (version,))
            conn.commit()
    with database.connect() as conn:
        severity = conn.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' "
            "AND table_name = 'events' AND column_name = 'severity'"
        ).fetchone()[0]
    assert schema_version(database) == 2 and severity == 0, "the database is not at schema 2"
